"""bench/user_store.py: the portal's user search over a node's real SQLite file with 10,000+ users.

    .venv/bin/python bench/user_store.py [--users 10000] [--queries 300]

Fills a fresh node.db (the node's own schema and SqliteUserStore) with N users with realistic names,
display names and NHS-style email addresses, then times `search_users` (what the users page's type-ahead
and `meshnode users search` call) for prefixes of user names, display names and email addresses, and for
substrings in the middle of them (the trigram index), and for text that matches nothing. Text of one or two
characters matches prefixes only (indexes), so no search scans the table. Prints p50/p95/max per kind and the ratio of p95 to the 50 ms target (below 1: within it).
Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import print_table  # noqa: E402
from meshnode.storage.sqlite_users import SqliteUserStore  # noqa: E402
from meshnode.storage.users import User  # noqa: E402

TARGET_MS = 50.0
FIRST = ("alice", "bob", "carol", "david", "emma", "fatima", "george", "hannah", "imran", "jane", "kwame", "lucy",
         "mohammed", "nina", "oliver", "priya", "rhys", "sara", "tomasz", "uma", "victor", "wei", "yusuf", "zara")
LAST = ("smith", "jones", "patel", "khan", "williams", "brown", "taylor", "davies", "evans", "wilson", "thomas",
        "roberts", "johnson", "lewis", "walker", "robinson", "wood", "thompson", "white", "watson", "okafor",
        "nowak", "chen", "murphy", "o'brien", "hughes", "edwards", "green", "hall", "wright")
TRUSTS = ("rgt", "rj1", "raj", "rxh", "rtd", "r0a", "rrk", "rw3", "ryj", "rm1")


def fill(store: SqliteUserStore, n: int, rng: random.Random) -> None:
    roles = (("clinician",), ("pacs",), ("admin",), ("auditor",), ("clinician", "auditor"))
    with store._tx() as db:  # one transaction: filling is not what is measured
        for i in range(n):
            first, last = rng.choice(FIRST), rng.choice(LAST)
            name = f"{first[0]}{last.replace(chr(39), '')}{i}"
            user = User(name, rng.choice(roles), 1_767_225_600_000 + i, rng.random() < 0.02,
                        f"{first.title()} {last.title()}", f"{first}.{last.replace(chr(39), '')}{i}@{rng.choice(TRUSTS)}.nhs.uk")
            db.execute("INSERT INTO users (name, roles, created_ms, disabled, display_name, email, source) "
                       "VALUES (?,?,?,?,?,?,?)", (user.name, ",".join(user.roles), user.created_ms,
                                                  int(user.disabled), user.display_name, user.email, user.source))


def timed(store: SqliteUserStore, texts: list[str]) -> tuple[list[float], int]:
    times, hits = [], 0
    for text in texts:
        start = time.perf_counter()
        hits += len(store.search_users(text))
        times.append((time.perf_counter() - start) * 1000)
    return times, hits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=300)
    args = parser.parse_args()
    rng = random.Random(13)
    with tempfile.TemporaryDirectory(prefix="bench-users-") as tmp:
        store = SqliteUserStore(Path(tmp) / "node.db")
        try:
            start = time.perf_counter()
            fill(store, args.users, rng)
            print(f"filled {args.users} users in {time.perf_counter() - start:.1f} s ({Path(tmp, 'node.db')})")
            users = store.users()
            pick = [rng.choice(users) for _ in range(args.queries)]
            kinds = {
                "name prefix (3 chars)": [u.name[:3] for u in pick],
                "display name prefix": [u.display_name[:4].lower() for u in pick],
                "email prefix": [u.email[:5] for u in pick],
                "substring (surname)": [u.display_name.split()[-1][1:5].lower() for u in pick],
                "substring (email domain)": [u.email.split("@")[1][:6] for u in pick],
                "no match, 3+ chars (index)": [f"zz{i}qq" for i in range(args.queries)],
                "no match, 2 chars (prefix only)": ["qz"] * args.queries,
            }
            timed(store, ["warm"] * 20)
            rows = []
            for kind, texts in kinds.items():
                times, hits = timed(store, texts)
                times.sort()
                p50, p95 = statistics.median(times), times[int(len(times) * 0.95) - 1]
                rows.append((kind, len(texts), f"{hits / len(texts):.1f}", f"{p50:.2f}", f"{p95:.2f}",
                             f"{times[-1]:.2f}", f"{p95 / TARGET_MS:.3f}"))
            print_table(f"search_users over {args.users} users (SQLite, ms; target {TARGET_MS:.0f} ms)",
                        ("query", "n", "hits/query", "p50", "p95", "max", "p95/target"), rows)
        finally:
            store.close()


if __name__ == "__main__":
    main()
