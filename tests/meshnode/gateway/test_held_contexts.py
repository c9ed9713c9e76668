"""contexts.prefer_held_syntaxes: which transfer syntax the node accepts in a C-GET's storage context."""

from __future__ import annotations

from pydicom.uid import UID
from pynetdicom import build_context
from pynetdicom.presentation import negotiate_as_acceptor

from meshnode.gateway.dimse.contexts import (
    STORAGE_TRANSFER_SYNTAXES,
    prefer_held_syntaxes,
)

US = "1.2.840.10008.5.1.4.1.1.3.1"
EXPLICIT, IMPLICIT, JPEG, J2K = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.4.50", \
    "1.2.840.10008.1.2.4.91"


def _accepted(proposed: list[list[str]], held: dict[str, set[str]]) -> list[str]:
    requested = []
    for i, syntaxes in enumerate(proposed):
        cx = build_context(US, syntaxes)
        cx.context_id = 2 * i + 1
        requested.append(cx)
    supported = [build_context(US, list(STORAGE_TRANSFER_SYNTAXES))]
    supported[0].scu_role, supported[0].scp_role = True, True
    prefer_held_syntaxes(requested, supported, {US}, held)
    result, _ = negotiate_as_acceptor(requested, supported, {UID(US): (False, True)})
    return [str(cx.transfer_syntax[0]) for cx in result if cx.result == 0]


def test_the_one_syntax_a_class_is_held_in_is_accepted_when_proposed() -> None:
    assert _accepted([[JPEG, EXPLICIT, IMPLICIT]], {US: {JPEG}}) == [JPEG]
    assert _accepted([[EXPLICIT, IMPLICIT]], {US: {IMPLICIT}}) == [IMPLICIT]
    # not proposed: the node's order, uncompressed first (the instance is then decompressed)
    assert _accepted([[JPEG, EXPLICIT, IMPLICIT]], {US: {J2K}}) == [EXPLICIT]
    assert _accepted([[JPEG, EXPLICIT]], {}) == [EXPLICIT]


def test_a_class_held_in_several_syntaxes_gets_a_context_every_instance_can_use() -> None:
    # accepting JPEG would fail the J2K and the explicit ones: an uncompressed syntax is taken instead
    assert _accepted([[JPEG, J2K, EXPLICIT, IMPLICIT]], {US: {JPEG, J2K}}) == [EXPLICIT]
    assert _accepted([[JPEG, IMPLICIT, EXPLICIT]], {US: {JPEG, IMPLICIT}}) == [IMPLICIT]


def test_a_context_per_syntax_gets_each_accepted_as_proposed() -> None:
    assert _accepted([[JPEG], [J2K], [EXPLICIT]], {US: {JPEG, J2K}}) == [JPEG, J2K, EXPLICIT]


def test_one_context_per_class_takes_the_syntax_no_instance_fails_in() -> None:
    """dcmtk getscu +xy (one context: JPEG, explicit, implicit) while the node holds US in JPEG and explicit
    VR: explicit (the JPEG ones decompressed), not JPEG (the explicit ones would fail: the node never
    compresses)."""
    assert _accepted([[JPEG, EXPLICIT, IMPLICIT]], {US: {JPEG, EXPLICIT}}) == [EXPLICIT]
    # compressed syntaxes only proposed: no conversion possible, the first held one in the requester's order
    assert _accepted([[J2K, JPEG]], {US: {JPEG, J2K}}) == [J2K]


def test_several_contexts_of_one_class_each_take_a_held_syntax() -> None:
    """An SCU proposing a context per syntax it can take, or several multi-syntax contexts (pynetdicom): each
    held syntax is accepted in a context of its own, so every instance goes back as stored. Before the
    review fix the node narrowed every context of a class held in two syntaxes to uncompressed."""
    assert _accepted([[JPEG, EXPLICIT], [EXPLICIT]], {US: {JPEG, EXPLICIT}}) == [JPEG, EXPLICIT]
    assert _accepted([[EXPLICIT, JPEG], [JPEG, EXPLICIT]], {US: {JPEG, EXPLICIT}}) == [EXPLICIT, JPEG]
    assert _accepted([[JPEG, EXPLICIT, IMPLICIT], [J2K, EXPLICIT, IMPLICIT]], {US: {JPEG, J2K, EXPLICIT}}) \
        == [JPEG, EXPLICIT]  # J2K converted: the second context is the fallback the J2K ones need
    assert _accepted([[JPEG, EXPLICIT], [J2K, EXPLICIT]], {US: {JPEG, J2K}}) == [JPEG, J2K]
