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
    for change in (lambda: store.set_profile("bob", "", ""), lambda: store.set_disabled("bob", True),
                   lambda: store.set_credentials("bob", "", "", 1)):
        with pytest.raises(NotFoundError):
            change()
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
    assert store.search_users("%") == [u for u in store.search_users("100%")]
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
