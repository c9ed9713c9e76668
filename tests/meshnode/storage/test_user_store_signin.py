"""The user store's sign-in fields (both implementations): profile, credentials, the TOTP step memory, search."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshnode.storage.sqlite_users import SqliteUserStore
from meshnode.storage.users import Credentials, MemoryUserStore, User, UserStore, check_display_name, check_email
from protocol.errors import LocalProtocolError, NotFoundError


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> UserStore:
    return MemoryUserStore() if request.param == "memory" else SqliteUserStore(tmp_path / "node.db")


def test_profile_credentials_and_totp_steps(store: UserStore) -> None:
    store.add_user(User("alice", ("clinician",), 1, display_name="Alice Smith", email="alice@example.nhs.uk"))
    user = store.user("alice")
    assert user is not None and (user.display_name, user.email, user.source) == ("Alice Smith",
                                                                                   "alice@example.nhs.uk", "local")
    assert store.credentials("alice") == Credentials()
    assert store.credentials("nobody") is None
    store.set_credentials("alice", "$argon2id$x", "SECRET", 5)
    assert store.credentials("alice") == Credentials("$argon2id$x", "SECRET", 0, 5)
    assert store.use_totp_step("alice", 100)
    assert not store.use_totp_step("alice", 100)  # the same step again
    assert not store.use_totp_step("alice", 99)  # an older one
    assert store.use_totp_step("alice", 101)
    store.set_credentials("alice", "$argon2id$y", "OTHER", 6)  # a reset forgets the steps
    assert store.use_totp_step("alice", 50)
    store.set_profile("alice", "Dr Alice Smith", "")
    store.set_disabled("alice", True)
    user = store.user("alice")
    assert user is not None and user.display_name == "Dr Alice Smith" and user.email == "" and user.disabled
    with pytest.raises(NotFoundError):
        store.set_profile("bob", "", "")
    with pytest.raises(NotFoundError):
        store.set_disabled("bob", True)
    with pytest.raises(NotFoundError):
        store.set_credentials("bob", "", "", 1)
    assert not store.use_totp_step("bob", 1)


def test_search_by_prefix_and_substring_prefix_first(store: UserStore) -> None:
    for name, display, email in (("asmith", "Alice Smith", "a.smith@rgt.nhs.uk"), ("bjones", "Bob Jones", "bob@x.uk"),
                                 ("smithy", "Sam Smithson", "sam@x.uk"), ("cdoe", "Carol Doe", "carol@smith.org"),
                                 ("d_100%", "Percent", "p@x.uk")):
        store.add_user(User(name, ("clinician",), 1, display_name=display, email=email))
    names = [u.name for u in store.search_users("smith")]
    assert names[0] == "smithy" and set(names) == {"asmith", "smithy", "cdoe"}
    assert [u.name for u in store.search_users("SMITHSON")] == ["smithy"]
    assert [u.name for u in store.search_users("bob")] == ["bjones"]
    assert [u.name for u in store.search_users("100%")] == ["d_100%"]  # no LIKE wildcards
    assert store.search_users("%") == []  # one character: prefixes only, and no wildcard
    assert store.search_users("nobody-like-this") == []
    assert len(store.search_users("", limit=2)) == 2


def test_profile_checks() -> None:
    assert check_display_name("  Dr   Alice  Smith ") == "Dr Alice Smith"
    assert check_email("") == ""
    for bad in ("a@b", "two@x.uk, three@y.uk", "<a@x.uk>", "a b@x.uk", "x" * 300 + "@x.uk", "a@x.uk\r\nBcc: e@v.uk", "a@x.uk\n"):
        with pytest.raises(LocalProtocolError):
            check_email(bad)
    with pytest.raises(LocalProtocolError):
        check_display_name("Alice\x1b[31m")
    with pytest.raises(LocalProtocolError):
        check_display_name("x" * 101)


def test_a_user_name_with_a_trailing_newline_is_refused() -> None:
    from meshnode.storage.users import check_user_name
    with pytest.raises(LocalProtocolError):
        check_user_name("alice\n")


def test_search_follows_profile_changes_and_short_text(store: UserStore) -> None:
    store.add_user(User("u1", ("clinician",), 1, display_name="Priya Okafor", email="p.okafor@rj1.nhs.uk"))
    store.add_user(User("u2", ("clinician",), 1, display_name="Tomasz Nowak", email="t.nowak@rgt.nhs.uk"))
    assert [u.name for u in store.search_users("kafo")] == ["u1"]  # inside a word (the trigram index)
    assert [u.name for u in store.search_users("rj1.nhs")] == ["u1"]
    store.set_profile("u1", "Priya Mensah", "p.mensah@rj1.nhs.uk")
    assert store.search_users("kafo") == []  # the index follows the change
    assert [u.name for u in store.search_users("ensa")] == ["u1"]
    assert store.search_users("wa") == []  # two characters: prefixes only
    assert [u.name for u in store.search_users("to")] == ["u2"]
    assert [u.name for u in store.search_users("t.")] == ["u2"]
    assert store.search_users('"ow') == []  # a quote is text, not FTS syntax
    store.add_user(User("u3", ("clinician",), 1, display_name='Quote "owl" Test'))
    assert [u.name for u in store.search_users('"ow')] == ["u3"]
    assert [u.name for u in store.search_users("NOWAK")] == ["u2"]


def test_user_by_email(store: UserStore) -> None:
    store.add_user(User("u1", ("clinician",), 1, email="Priya.Okafor@rj1.nhs.uk"))
    store.add_user(User("u2", ("clinician",), 1))
    found = store.user_by_email("priya.okafor@RJ1.nhs.uk")
    assert found is not None and found.name == "u1"
    assert store.user_by_email("") is None and store.user_by_email("nobody@rj1.nhs.uk") is None
