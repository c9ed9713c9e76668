"""`make demo`: the identity plane end to end, with real processes on 127.0.0.1.

An authority, a directory and two organisations' nodes: issue, register,
resolve, revoke, publish the roster, watch the revoked node being refused,
stop the directory and keep resolving from the verified cache.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from protocol.errors import MeshError
from meshnode.demo.identity import IdentityDemo
from meshnode.demo.workspace import Result, Workspace


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def peers_of(result: Result) -> list[str]:
    peers = result.json_dict()["peers"]
    return [str(p["peer_id"]) for p in peers] if isinstance(peers, list) else []


def check(ok: bool, what: str) -> None:
    if not ok:
        raise SystemExit(f"demo FAILED: {what}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m meshnode.demo --identity")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder for inspection")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="dicom-mesh-demo-"))
    ws = Workspace(root)
    demo = IdentityDemo(ws)
    started = time.monotonic()
    try:
        say("dicom-mesh identity plane demo (scratch folder: %s)" % root)
        key = demo.create_authority()
        say(f"1. authority key created (encrypted, 0600): {key}")
        addr = demo.start_directory()
        say(f"2. directory running at {addr}")
        roster = demo.publish_roster()
        say(f"3. roster v{roster['version']} published to the directory")
        a = demo.add_node("node-a", "RGT", "Cambridge University Hospitals NHS FT")
        b = demo.add_node("node-b", "RJ1", "Guy's and St Thomas' NHS FT")
        say(f"4. certificates issued: RGT node {a.peer_id}, RJ1 node {b.peer_id}")
        demo.register(a)
        demo.register(b)
        say("5. both nodes registered their signed address records")
        own = demo.resolve(a, "RGT")
        found = demo.resolve(a, "RJ1")
        check(found.code == 0 and peers_of(found) == [b.peer_id], f"RGT could not resolve RJ1: {found.stderr}")
        check(own.code == 0 and peers_of(own) == [a.peer_id], "RGT could not resolve itself")
        say(f"6. RGT resolved RJ1 -> {b.peer_id} at {b.addr} (certificate and record verified)")
        demo.revoke(b)
        roster = demo.publish_roster()
        say(f"7. RJ1's certificate {b.serial} revoked; roster v{roster['version']} published")
        refused = demo.resolve(a, "RJ1")
        check(refused.code != 0 and "revoked" in refused.stderr, "the revoked node was not refused")
        say(f"8. RGT now refuses RJ1's node: {refused.stderr.strip().splitlines()[-1]}")
        code = demo.stop_directory()
        say(f"9. directory stopped (exit {code})")
        cached = demo.resolve(a, "RGT")
        check(cached.code == 0 and cached.json_dict()["from_cache"] is True, "no resolution from cache")
        say(f"10. directory down: RGT still resolves {peers_of(cached)[0]} from its verified cache")
        still = demo.resolve(a, "RJ1")
        check(still.code != 0 and "revoked" in still.stderr, "the cache forgot the revocation")
        say("11. ...and the cached roster still refuses the revoked RJ1 node")
        say(f"demo OK in {time.monotonic() - started:.1f} s: 1 authority, 1 directory, 2 organisations, "
            "2 rosters, 1 revocation, cache fallback verified")
        return 0
    except MeshError as exc:
        sys.stderr.write(f"demo FAILED: {exc}\n")
        return 1
    finally:
        ws.close()
        if args.keep:
            say(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
