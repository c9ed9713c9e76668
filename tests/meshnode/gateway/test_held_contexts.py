"""contexts.prefer_held_syntaxes: which transfer syntax the node accepts in a C-GET's storage context."""

from __future__ import annotations

from pydicom.uid import UID
from pynetdicom import build_context
from pynetdicom.presentation import negotiate_as_acceptor

from meshnode.gateway.dimse.contexts import STORAGE_TRANSFER_SYNTAXES, prefer_held_syntaxes

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
