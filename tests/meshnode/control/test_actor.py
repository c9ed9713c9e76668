"""The identity a control-API decision is recorded under: one strict rule (meshnode.control.actor)."""

from __future__ import annotations

import pytest

from meshnode.control.actor import control_actor


@pytest.mark.parametrize("actor", ["alice", "j.smith", "svc_pacs-1", "a" * 32])
def test_a_plain_account_name_is_recorded(actor: str) -> None:
    assert control_actor({"actor": actor}) == f"control:{actor}"


@pytest.mark.parametrize("actor", [None, "", "user:alice", "control:bob", "alice@host", "a" * 33, "-rf", ".x",
                                   "al ice", "alice\n", "ałice", 7, ["alice"], {"a": 1}])
def test_anything_else_is_the_admin(actor: object) -> None:
    assert control_actor({"actor": actor}) == "control:admin"
    assert control_actor({}) == "control:admin"
