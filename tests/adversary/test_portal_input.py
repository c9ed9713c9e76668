"""Request input that str.isdigit() or SQLite's full-text search took badly: digits int() refuses ('²',
Arabic-Indic digits), numbers too long for int(), a NUL or other control character in the users search.
Each gets a clear 400 (or is ignored where a default applies), never a 500 or 503."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from starlette.requests import Request

from meshnode.storage.sqlite_users import SqliteUserStore
from meshnode.storage.users import MemoryUserStore, User, UserStore
from meshnode.web import qido, ui
from meshnode.web.http import HttpError, content_length, is_number
from tests.meshnode.web.portal_app import cheap_hashing, make_portal

__all__ = ["cheap_hashing"]
ODD = ["²", "١٢", "1²", "٣", "9" * 5000, "", "-1", "1.0", " 1"]


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> UserStore:
    return MemoryUserStore() if request.param == "memory" else SqliteUserStore(tmp_path / "node.db")


def _request(query: bytes = b"", headers: list[tuple[bytes, bytes]] | None = None) -> Request:
    scope: dict[str, Any] = {"type": "http", "method": "GET", "path": "/", "query_string": query,
                             "headers": headers or []}
    return Request(scope)


@pytest.mark.parametrize("text", ODD)
def test_only_ascii_digits_are_numbers(text: str) -> None:
    assert not is_number(text)
    with pytest.raises(HttpError) as err:
        qido._int({"limit": [text]}, "limit", 10, 100)
    assert err.value.status == 400


@pytest.mark.parametrize("raw", [b"%C2%B2", b"-%C2%B2", b"%D9%A1", b"1" * 30])
def test_the_pages_integers(raw: bytes) -> None:
    with pytest.raises(HttpError) as err:
        ui._int(_request(b"limit=" + raw), "limit")
    assert err.value.status == 400
    assert ui._int(_request(b"limit=-5"), "limit") == -5


def test_a_content_length_in_other_digits_is_refused() -> None:
    with pytest.raises(HttpError) as err:
        content_length(_request(headers=[(b"content-length", "²".encode("latin-1"))]))
    assert err.value.status == 400


@pytest.mark.usefixtures("cheap_hashing")
async def test_the_users_search_refuses_control_characters_and_odd_limits(store: UserStore) -> None:
    portal = make_portal(store)
    portal.user("root", "admin")
    portal.user("alice", "clinician")
    session, _ = await portal.signed_in("root")
    for q in ("ali%00ce", "lic%00", "%01", "al%0Ai"):
        reply = await portal.call("GET", "/ui/api/users", session=session, query=f"q={q}")
        assert reply.status == 400, (q, reply.body)
    for limit in ("%C2%B2", "%D9%A1", "9" * 5000):
        reply = await portal.call("GET", "/ui/api/users", session=session, query=f"q=ali&limit={limit}")
        assert reply.status == 200 and [u["name"] for u in reply.json()["users"]] == ["alice"]


def test_the_stores_search_ignores_control_characters(store: UserStore) -> None:
    store.add_user(User("alice", ("clinician",), 0, display_name="Alice Smith"))
    for text in ("ali\x00ce", "lic\x00", "\x00ali", "smi\x1bth", "alice\x7f"):
        assert [u.name for u in store.search_users(text)] == ["alice"], text
