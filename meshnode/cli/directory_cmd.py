"""meshnode directory register|resolve|roster: this node's view of the directory."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

import trio

from common.cli.output import EXIT_OK, emit
from common.describe import iso
from meshnode.home import NodeHome, resolve_home
from protocol.address_record import check_multiaddr_text

if TYPE_CHECKING:
    from contextlib import AbstractAsyncContextManager

    from meshnode.directory.client import DirectoryClient, Resolution


def _session(home: NodeHome) -> AbstractAsyncContextManager[DirectoryClient]:
    from meshnode.directory.session import directory_session  # libp2p: imported only when used

    return directory_session(home)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser("directory", help="register with and query the directory")
    actions = parser.add_subparsers(dest="action", required=True)
    reg = actions.add_parser("register", parents=[common], help="publish this node's signed address record")
    reg.add_argument("--addr", action="append", metavar="MULTIADDR",
                     help="address to advertise (default: the configured listen addresses)")
    reg.add_argument("--json", action="store_true")
    reg.set_defaults(func=run_register)
    res = actions.add_parser("resolve", parents=[common], help="verified nodes of an organisation")
    res.add_argument("org")
    res.add_argument("--json", action="store_true")
    res.set_defaults(func=run_resolve)
    ros = actions.add_parser("roster", parents=[common], help="refresh and show the current roster")
    ros.add_argument("--json", action="store_true")
    ros.set_defaults(func=run_roster)


def run_register(args: argparse.Namespace) -> int:
    home = NodeHome(resolve_home(args.home))
    config = home.config()
    addrs = tuple(args.addr or config.listen)
    for addr in addrs:
        check_multiaddr_text(addr, "--addr")
    certificate = home.certificate().encode()
    key = home.signing_key()

    async def go() -> int:
        async with _session(home) as client:
            await client.refresh_roster()
            record = await client.register(certificate, key, addrs, config.address_record_ttl)
            return record.document.seq

    seq = trio.run(go)
    emit({"peer_id": key.peer_id, "addrs": list(addrs), "seq": seq}, args.json,
         f"registered {key.peer_id} ({config.org}) at {', '.join(addrs)}")
    return EXIT_OK


def _resolution_view(res: Resolution) -> dict[str, object]:
    return {
        "query": res.query,
        "from_cache": res.from_cache,
        "roster_version": res.roster_version,
        "peers": [
            {"peer_id": p.peer_id, "org": p.org_code, "serial": p.certificate.document.serial,
             "not_after": iso(p.certificate.document.not_after), "addrs": list(p.addrs)}
            for p in res.peers
        ],
        "rejected": [{"peer_id": r.peer_id, "reason": r.reason, "error": r.error.name} for r in res.rejected],
    }


def run_resolve(args: argparse.Namespace) -> int:
    home = NodeHome(resolve_home(args.home))

    async def go() -> Resolution:
        async with _session(home) as client:
            return await client.resolve_org(args.org)

    res = trio.run(go)
    source = "cache (directory unreachable)" if res.from_cache else "directory"
    lines = [f"{args.org}: {len(res.peers)} verified node(s) from {source}, roster v{res.roster_version}"]
    lines += [f"  {p.peer_id}  {' '.join(p.addrs) or '(no address record)'}" for p in res.peers]
    lines += [f"  refused {r.reason}" for r in res.rejected]
    emit(_resolution_view(res), args.json, "\n".join(lines))
    res.require()
    return EXIT_OK


def run_roster(args: argparse.Namespace) -> int:
    home = NodeHome(resolve_home(args.home))

    async def go() -> tuple[int, int, int, bool]:
        async with _session(home) as client:
            roster = await client.refresh_roster()
            return roster.version, roster.expires_at, len(roster.revoked), client.last_roster_from_cache

    version, expires, revoked, cached = trio.run(go)
    emit({"version": version, "expires_at": iso(expires), "revoked": revoked, "from_cache": cached}, args.json,
         f"roster v{version}, {revoked} revoked, expires {iso(expires)}" + (" (cached)" if cached else ""))
    return EXIT_OK
