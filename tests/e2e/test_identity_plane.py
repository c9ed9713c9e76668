"""The README demo scenario with real processes on 127.0.0.1, asserted step by step."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshnode.demo.identity import IdentityDemo
from meshnode.demo.workspace import Result, Workspace

pytestmark = pytest.mark.e2e


def peer_ids(result: Result) -> list[str]:
    assert result.code == 0, result.stderr
    return [p["peer_id"] for p in result.json_dict()["peers"]]  # type: ignore[union-attr]


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[IdentityDemo]:
    ws = Workspace(tmp_path)
    try:
        yield IdentityDemo(ws)
    finally:
        ws.close()


def test_identity_plane_end_to_end(demo: IdentityDemo, tmp_path: Path) -> None:
    authority_key = demo.create_authority()
    assert authority_key.startswith("12D3KooW")
    addr = demo.start_directory()
    assert addr.startswith("/ip4/127.0.0.1/tcp/") and addr.endswith("/p2p/" + demo.directory_peer)

    assert demo.publish_roster()["version"] == 1
    a = demo.add_node("node-a", "RGT", "Cambridge University Hospitals NHS FT")
    b = demo.add_node("node-b", "RJ1", "Guy's and St Thomas' NHS FT")
    assert demo.register(a)["peer_id"] == a.peer_id
    assert demo.register(b)["peer_id"] == b.peer_id

    # resolve one from the other, with the address record the node signed
    found = demo.resolve(a, "RJ1")
    assert peer_ids(found) == [b.peer_id]
    view = found.json_dict()
    assert view["from_cache"] is False and view["roster_version"] == 1
    assert view["peers"][0]["addrs"] == [b.addr]  # type: ignore[index]
    assert peer_ids(demo.resolve(a, "RGT")) == [a.peer_id]

    # revoke B, publish roster v2: the lookup refuses B and says why
    assert demo.revoke(b)["newly_revoked"] is True
    roster = demo.publish_roster()
    assert roster["version"] == 2 and roster["revoked"] == [b.serial]
    refused = demo.resolve(a, "RJ1")
    assert refused.code == 1
    assert "certificate-revoked" in refused.stderr and b.serial in refused.stderr
    assert refused.json_dict()["rejected"][0]["peer_id"] == b.peer_id  # type: ignore[index]

    # a revoked node cannot (re-)register
    again = demo.ws.run("meshnode", "directory", "register", "--home", str(b.home), check=False)
    assert again.code == 1 and "revoked" in again.stderr

    # directory down: the other node still resolves from the verified cache
    assert demo.stop_directory() == 0
    cached = demo.resolve(a, "RGT")
    assert peer_ids(cached) == [a.peer_id] and cached.json_dict()["from_cache"] is True
    still = demo.resolve(a, "RJ1")
    assert still.code == 1 and "certificate-revoked" in still.stderr
    offline_roster = demo.ws.run("meshnode", "directory", "roster", "--home", str(a.home), "--json").json_dict()
    assert offline_roster == {**offline_roster, "version": 2, "from_cache": True}


def test_directory_restart_keeps_roster_and_refuses_rollback(demo: IdentityDemo, tmp_path: Path) -> None:
    demo.create_authority()
    demo.start_directory()
    v1 = tmp_path / "roster-v1.cbor"
    demo.ws.run("meshadmin", "roster", "publish", "--dir", demo.auth_dir, "--directory", demo.directory_addr,
                "--out", str(v1))
    demo.publish_roster()  # v2
    assert demo.stop_directory() == 0
    proc, addrs = demo.ws.start_directory(demo.directory_home)
    demo.directory_proc, demo.directory_addr = proc, addrs[0]
    replay = demo.ws.run("meshadmin", "roster", "push", str(v1), "--directory", demo.directory_addr, check=False)
    assert replay.code == 1 and "roster-rollback" in replay.stderr
    node = demo.add_node("node-a", "RGT", "Cambridge University Hospitals NHS FT")
    assert demo.ws.run("meshnode", "directory", "roster", "--home", str(node.home), "--json").json_dict()[
        "version"] == 2
    inspected = json.loads(demo.ws.run("meshadmin", "inspect", str(v1), "--json",
                                       "--authority-key", demo.authority_key).stdout)
    assert inspected["version"] == 1 and inspected["trusted"].startswith("signed by a trusted authority")
