"""Every CLI failure is one line on stderr and a non-zero exit, never a traceback, and changes nothing."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from meshnode.cli.main import main as meshnode_main
from protocol.keys import SigningKey
from tests.protocol.factories import sign_certificate
from tools.authority.home import AuthorityHome
from tools.cli.main import main as meshadmin_main

PASS = "correct horse battery staple"
Main = Callable[[Sequence[str]], int]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Callable[..., tuple[int, str, str]]:
    monkeypatch.setenv("MESHADMIN_PASSPHRASE", PASS)
    monkeypatch.delenv("MESHNODE_HOME", raising=False)
    monkeypatch.delenv("MESHADMIN_AUTHORITY", raising=False)

    def run(main: Main, *args: str) -> tuple[int, str, str]:
        code = main(list(args))
        out, err = capsys.readouterr()
        return code, out, err

    return run


def one_line_error(code: int, err: str, expect: str) -> None:
    assert code != 0
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert expect in lines[0], lines[0]


@pytest.fixture
def authority(tmp_path: Path, cli: Callable[..., tuple[int, str, str]]) -> Path:
    d = tmp_path / "auth"
    code, out, _ = cli(meshadmin_main, "authority", "init", "--dir", str(d), "--json")
    assert code == 0 and json.loads(out)["authority_key"].startswith("12D3KooW")
    return d


def test_authority_key_file_is_private_and_encrypted(authority: Path) -> None:
    key_file = authority / "authority.key"
    assert os.stat(key_file).st_mode & 0o777 == 0o600
    seed = AuthorityHome(authority).signing_key(PASS).seed
    assert seed not in key_file.read_bytes() and seed.hex().encode() not in key_file.read_bytes()


def test_authority_init_refuses_to_overwrite(authority: Path, cli: Callable[..., tuple[int, str, str]]) -> None:
    before = (authority / "authority.key").read_bytes()
    code, _, err = cli(meshadmin_main, "authority", "init", "--dir", str(authority))
    one_line_error(code, err, "refusing to overwrite")
    assert (authority / "authority.key").read_bytes() == before


def test_short_passphrase_refused(tmp_path: Path, cli: Callable[..., tuple[int, str, str]],
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHADMIN_PASSPHRASE", "short")
    code, _, err = cli(meshadmin_main, "authority", "init", "--dir", str(tmp_path / "a"))
    one_line_error(code, err, "at least 8 characters")
    assert not (tmp_path / "a" / "authority.key").exists()


def test_wrong_passphrase(authority: Path, tmp_path: Path, cli: Callable[..., tuple[int, str, str]],
                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHADMIN_PASSPHRASE", "not the passphrase")
    node = SigningKey(bytes(range(32))).peer_id
    out = tmp_path / "cert.cbor"
    code, _, err = cli(meshadmin_main, "issue", "--dir", str(authority), "--node", node, "--org", "RGT",
                       "--org-name", "X", "--role", "acute-trust", "--out", str(out))
    one_line_error(code, err, "wrong-passphrase")
    assert not out.exists()


def test_passphrase_file(authority: Path, tmp_path: Path, cli: Callable[..., tuple[int, str, str]],
                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MESHADMIN_PASSPHRASE")
    pf = tmp_path / "pass"
    pf.write_text(PASS + "\n")
    node = SigningKey(bytes(range(32))).peer_id
    code, out, err = cli(meshadmin_main, "issue", "--dir", str(authority), "--passphrase-file", str(pf), "--node",
                         node, "--org", "RGT", "--org-name", "X", "--role", "acute-trust", "--out",
                         str(tmp_path / "c.cbor"), "--json")
    assert code == 0, err
    code, _, err = cli(meshadmin_main, "roster", "publish", "--dir", str(authority), "--out", str(tmp_path / "r"))
    one_line_error(code, err, "no passphrase")


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (["--node", "not-a-peer-id"], "invalid base58"),
        (["--node", "12D3KooWFZPi87BwG5jF2UTwT4LNYMpPKRynGdTNYhPdP6YXViU5x"], "peer ID"),
        (["--org", "lower case"], "organisation code"),
        (["--days", "0"], "--days"),
    ],
)
def test_issue_bad_arguments(authority: Path, tmp_path: Path, cli: Callable[..., tuple[int, str, str]],
                             args: list[str], expect: str) -> None:
    base = {"--node": SigningKey(bytes(range(32))).peer_id, "--org": "RGT", "--days": "30"}
    for i in range(0, len(args), 2):
        base[args[i]] = args[i + 1]
    flat = [x for kv in base.items() for x in kv]
    out = tmp_path / "cert.cbor"
    code, _, err = cli(meshadmin_main, "issue", "--dir", str(authority), *flat, "--org-name", "X",
                       "--role", "acute-trust", "--out", str(out))
    one_line_error(code, err, expect)
    assert not out.exists()
    code, listing, _ = cli(meshadmin_main, "list", "--dir", str(authority), "--json")
    assert code == 0 and json.loads(listing) == []


def test_revoke_unknown_and_malformed_serial(authority: Path, cli: Callable[..., tuple[int, str, str]]) -> None:
    code, _, err = cli(meshadmin_main, "revoke", "0" * 32, "--dir", str(authority))
    one_line_error(code, err, "not-found")
    code, _, err = cli(meshadmin_main, "revoke", "xyz", "--dir", str(authority))
    one_line_error(code, err, "32 lower-case hex")


def test_missing_authority_folder(tmp_path: Path, cli: Callable[..., tuple[int, str, str]]) -> None:
    code, _, err = cli(meshadmin_main, "list")
    one_line_error(code, err, "MESHADMIN_AUTHORITY")
    code, _, err = cli(meshadmin_main, "authority", "show", "--dir", str(tmp_path / "none"))
    one_line_error(code, err, "not found")


def test_corrupt_authority_key(authority: Path, cli: Callable[..., tuple[int, str, str]]) -> None:
    (authority / "authority.key").write_bytes(b"\xa1\x61x\x01")
    code, _, err = cli(meshadmin_main, "authority", "show", "--dir", str(authority))
    one_line_error(code, err, "malformed")


def test_inspect_missing_garbage_and_valid(tmp_path: Path, cli: Callable[..., tuple[int, str, str]]) -> None:
    code, _, err = cli(meshadmin_main, "inspect", str(tmp_path / "missing"))
    one_line_error(code, err, "not found")
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"\x9f\x01\x02\xff")
    code, _, err = cli(meshadmin_main, "inspect", str(garbage))
    one_line_error(code, err, "indefinite-length")
    good = tmp_path / "cert.cbor"
    good.write_bytes(sign_certificate().encode())
    code, out, err = cli(meshadmin_main, "inspect", str(good), "--json")
    assert code == 0 and json.loads(out)["org"] == "RGT" and json.loads(out)["signature"] == "valid"
    tampered = tmp_path / "tampered.cbor"
    raw = bytearray(sign_certificate().encode())
    raw[raw.index(b"RGT")] = ord("X")
    tampered.write_bytes(bytes(raw))
    code, _, err = cli(meshadmin_main, "inspect", str(tampered))
    one_line_error(code, err, "bad-signature")


def test_inspect_expired_certificate_against_roster(authority: Path, tmp_path: Path,
                                                   cli: Callable[..., tuple[int, str, str]]) -> None:
    home = AuthorityHome(authority)
    key = home.signing_key(PASS)
    registry = home.registry()
    expired = registry.issue(key, node_key=SigningKey(bytes(32)).public_key, org_code="RGT", org_name="X",
                             roles=("acute-trust",), not_before=1_000_000, not_after=2_000_000)
    registry.close()
    cert = tmp_path / "old.cbor"
    cert.write_bytes(expired.encode())
    roster = tmp_path / "roster.cbor"
    code, _, err = cli(meshadmin_main, "roster", "publish", "--dir", str(authority), "--out", str(roster))
    assert code == 0, err
    code, _, err = cli(meshadmin_main, "inspect", str(cert), "--roster", str(roster))
    one_line_error(code, err, "certificate-expired")
    code, _, err = cli(meshadmin_main, "inspect", str(roster), "--authority-key",
                       SigningKey(bytes(32)).peer_id)
    one_line_error(code, err, "unknown-issuer")


def test_meshnode_init_and_certificate_errors(tmp_path: Path, cli: Callable[..., tuple[int, str, str]],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    code, _, err = cli(meshnode_main, "init", "--org", "RGT")
    one_line_error(code, err, "MESHNODE_HOME")
    home = tmp_path / "node"
    monkeypatch.setenv("MESHNODE_HOME", str(home))
    code, out, err = cli(meshnode_main, "init", "--org", "RGT", "--json")
    assert code == 0, err
    peer_id = json.loads(out)["peer_id"]
    assert os.stat(home / "node.key").st_mode & 0o777 == 0o600
    key_before = (home / "node.key").read_bytes()
    code, _, err = cli(meshnode_main, "init", "--org", "RGT")
    one_line_error(code, err, "refusing to overwrite")
    assert (home / "node.key").read_bytes() == key_before
    # a certificate for some other node is refused and not installed
    other = tmp_path / "other.cbor"
    other.write_bytes(sign_certificate().encode())
    code, _, err = cli(meshnode_main, "certificate", "install", str(other))
    one_line_error(code, err, "not this node")
    assert not (home / "certificate.cbor").exists()
    code, _, err = cli(meshnode_main, "certificate", "show")
    one_line_error(code, err, "not found")
    code, _, err = cli(meshnode_main, "directory", "resolve", "RXX")
    one_line_error(code, err, "[directory] address is not set")
    os.chmod(home / "node.key", 0o644)
    code, _, err = cli(meshnode_main, "certificate", "install", str(other))
    one_line_error(code, err, "readable by others")
    assert peer_id.startswith("12D3KooW")


def test_meshnode_bad_config(tmp_path: Path, cli: Callable[..., tuple[int, str, str]]) -> None:
    home = tmp_path / "node"
    code, _, err = cli(meshnode_main, "init", "--home", str(home), "--org", "RGT")
    assert code == 0, err
    (home / "node.toml").write_text("[node]\norg = 'RGT'\nsurprise = 1\n")
    code, _, err = cli(meshnode_main, "directory", "roster", "--home", str(home))
    one_line_error(code, err, "node.toml: node.surprise: unknown key (known: auto_fetch, listen, org)")
    (home / "node.toml").write_text("[node\n")
    code, _, err = cli(meshnode_main, "directory", "roster", "--home", str(home))
    one_line_error(code, err, "config-error")
    (home / "node.toml").write_text("[node]\norg = 'RGT'\nlisten = " + "[" * 50_000 + "]" * 50_000 + "\n")
    code, _, err = cli(meshnode_main, "config", "check", "--home", str(home))
    one_line_error(code, err, "node.toml: not valid TOML: values nested too deeply")  # was a RecursionError
    code, _, err = cli(meshnode_main, "init", "--home", str(tmp_path / "n2"), "--org", "bad org")
    one_line_error(code, err, "organisation code")
