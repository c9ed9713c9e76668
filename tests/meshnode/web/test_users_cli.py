"""`meshnode users` parity with the users page: add with a profile, password + TOTP enrolment (printed once),
search, profile, disable, enable; a password then signs in through the portal's own verification."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyotp
import pytest

from meshnode.cli.main import main as meshnode_main
from meshnode.storage.sqlite_users import SqliteUserStore
from meshnode.web import signin


def run(capsys: pytest.CaptureFixture[str], *args: str) -> object:
    capsys.readouterr()
    assert meshnode_main([*args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_users_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    home = str(tmp_path / "node")
    assert meshnode_main(["init", "--home", home, "--org", "RGT"]) == 0
    h = ["--home", home]
    run(capsys, "users", "add", "asmith", "--role", "clinician", "--display-name", "Alice Smith",
        "--email", "alice@example.nhs.uk", *h)
    run(capsys, "users", "add", "root", "--role", "admin", *h)
    monkeypatch.setattr("sys.stdin", io.StringIO("a long enough password\n"))
    enrolled = run(capsys, "users", "password", "asmith", "--password-stdin", *h)
    assert isinstance(enrolled, dict) and enrolled["password"] is None
    assert enrolled["totp_uri"].startswith("otpauth://totp/") and "RGT" in enrolled["totp_uri"]
    generated = run(capsys, "users", "password", "root", "--generate", *h)
    assert isinstance(generated, dict) and len(generated["password"]) >= signin.MIN_PASSWORD
    found = run(capsys, "users", "search", "smith", *h)
    assert isinstance(found, list) and [u["name"] for u in found] == ["asmith"]
    assert found[0]["email"] == "alice@example.nhs.uk"
    run(capsys, "users", "profile", "asmith", "--display-name", "Dr Alice Smith", *h)
    run(capsys, "users", "disable", "asmith", *h)
    run(capsys, "users", "enable", "asmith", *h)
    store = SqliteUserStore(Path(home) / "node.db")
    try:
        now = 1_767_225_600.0
        code = pyotp.TOTP(enrolled["totp_secret"]).at(now)
        user = signin.verify(store, "asmith", "a long enough password", code, now)
        assert user.display_name == "Dr Alice Smith" and user.email == "" and not user.disabled
        stored = store.credentials("asmith")
        assert stored is not None and stored.password_hash.startswith("$argon2id$")  # only the hash is kept
        assert "a long enough password" not in (Path(home) / "node.db").read_bytes().decode("latin-1")
    finally:
        store.close()
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert meshnode_main(["users", "password", "asmith", "--password-stdin", *h]) != 0
    assert meshnode_main(["users", "add", "x", "--email", "not an address", *h]) != 0
