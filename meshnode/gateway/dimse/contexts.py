"""Presentation contexts the gateway accepts: every storage SOP class, the common transfer syntaxes,
Query/Retrieve (Patient Root and Study Root: FIND, GET, MOVE) and Verification."""

from __future__ import annotations

from typing import Any

from pydicom.uid import (
    HEVCM10P51,
    HEVCMP51,
    HTJ2K,
    JPEG2000,
    MPEG2MPHL,
    MPEG2MPML,
    MPEG4HP41,
    MPEG4HP41BD,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian)
#: what a C-STORE may use: stored as received, never transcoded
STORAGE_TRANSFER_SYNTAXES = (
    *UNCOMPRESSED,
    JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLossless, JPEGLosslessSV1, JPEGLSLossless, JPEGLSNearLossless,
    JPEG2000Lossless, JPEG2000, HTJ2KLossless, HTJ2KLosslessRPCL, HTJ2K, RLELossless,
    MPEG2MPML, MPEG2MPHL, MPEG4HP41, MPEG4HP41BD, HEVCMP51, HEVCM10P51,
)
STORAGE_SOP_CLASSES: tuple[str, ...] = tuple(str(cx.abstract_syntax) for cx in AllStoragePresentationContexts)
FIND_MODELS = {
    str(PatientRootQueryRetrieveInformationModelFind): "PATIENT",
    str(StudyRootQueryRetrieveInformationModelFind): "STUDY",
}
GET_MODELS = {
    str(PatientRootQueryRetrieveInformationModelGet): "PATIENT",
    str(StudyRootQueryRetrieveInformationModelGet): "STUDY",
}
MOVE_MODELS = {
    str(PatientRootQueryRetrieveInformationModelMove): "PATIENT",
    str(StudyRootQueryRetrieveInformationModelMove): "STUDY",
}


def add_acceptor_contexts(ae: AE) -> None:
    """Everything the gateway's SCP accepts. Storage contexts also take the SCU role, for C-GET."""
    for uid in STORAGE_SOP_CLASSES:
        ae.add_supported_context(uid, list(STORAGE_TRANSFER_SYNTAXES), scu_role=True, scp_role=True)
    for uid in (*FIND_MODELS, *GET_MODELS, *MOVE_MODELS, Verification):
        ae.add_supported_context(uid, list(UNCOMPRESSED))


def prefer_requestor_syntaxes(requested: list[Any], supported: list[Any], role_selected: set[str]) -> None:
    """Let each abstract syntax's transfer syntax be the one the requestor proposed first.

    pynetdicom, as acceptor, takes the first of *its own* transfer syntaxes that
    a context proposes; a sender proposing [implicit, explicit] for an implicit
    file would then have to transcode it. Reordering the supported lists (this
    association's copy) to the requestor's order stores what the sender has.
    Not for SOP classes the requestor wants to receive (SCP role selection, as
    for C-GET): there the node's order, uncompressed first, stays.
    """
    order: dict[str, list[str]] = {}
    for cx in requested:
        if str(cx.abstract_syntax) not in role_selected:
            order.setdefault(str(cx.abstract_syntax), [str(ts) for ts in cx.transfer_syntax])
    for cx in supported:
        wanted = order.get(str(cx.abstract_syntax))
        if not wanted:
            continue
        ours = [str(ts) for ts in cx.transfer_syntax]
        cx.transfer_syntax = [ts for ts in wanted if ts in ours] + [ts for ts in ours if ts not in wanted]


def _fallback(syntax: str) -> bool:
    """An uncompressed little-endian syntax: every decodable instance can be converted into it."""
    uid = UID(syntax)
    return not uid.is_compressed and uid.is_little_endian


def choose_held_syntaxes(proposed: list[list[str]], held: set[str]) -> list[str | None]:
    """Per proposed context of one SOP class (its transfer syntaxes, requester's order): the syntax to
    accept, or None for the node's own order (uncompressed first).

    The rule: never fail a sub-operation that could succeed, then return as many instances as stored as
    possible. The node never compresses, so an instance in a syntax no context accepted can only be sent
    converted into an uncompressed little-endian context. Hence:
    1. a context proposing one syntax gets it;
    2. each context proposing several takes, in the requester's order, a held syntax no other context has
       taken yet (those instances go back exact);
    3. if that leaves a held syntax without a context and no accepted context can take a conversion, the
       last context proposing an uncompressed little-endian syntax is made the fallback (a held one it
       proposed, else its first), and step 2 is redone for the others.
    With one context per class (dcmtk getscu) holding the class in a compressed syntax S and in another:
    the context becomes uncompressed (S instances converted, none failed) rather than S (the others would
    fail). A requester proposing a context per syntax gets every instance exact.
    """
    fixed: list[str | None] = [cx[0] if len(cx) == 1 else None for cx in proposed]

    def assign(choice: list[str | None]) -> list[str | None]:
        out = list(choice)
        taken = {c for c in out if c is not None}
        for i, cx in enumerate(proposed):
            if out[i] is None:
                options = [ts for ts in cx if ts in held and ts not in taken]
                if options:
                    out[i] = options[0]
                    taken.add(options[0])
        return out

    choice = assign(fixed)
    chosen = {c for c in choice if c is not None}
    if held <= chosen or any(_fallback(c) for c in chosen):
        return choice
    candidates = [i for i, cx in enumerate(proposed) if fixed[i] is None and any(_fallback(ts) for ts in cx)]
    if not candidates:
        return choice  # no context can take a conversion: what is not exact fails whatever is chosen
    last = candidates[-1]
    held_fallbacks = [ts for ts in proposed[last] if _fallback(ts) and ts in held]
    fixed[last] = (held_fallbacks or [ts for ts in proposed[last] if _fallback(ts)])[0]
    return assign(fixed)


def prefer_held_syntaxes(requested: list[Any], supported: list[Any], role_selected: set[str],
                         held: dict[str, set[str]]) -> None:
    """For the SOP classes the requestor wants to receive (C-GET), accept the syntaxes the node stores them in.

    A C-GET's storage contexts are negotiated before the request says which
    instances it wants, and an acceptor accepts one transfer syntax per
    context; `choose_held_syntaxes` decides per context. pynetdicom's
    acceptor picks, per abstract syntax, the first of *its* syntaxes that a
    context proposes; a context given a syntax here is narrowed to it (this
    association's copy of the request), so that it is the one accepted.
    """
    by_class: dict[str, list[Any]] = {}
    for cx in requested:
        uid = str(cx.abstract_syntax)
        if uid in role_selected and uid in held:
            by_class.setdefault(uid, []).append(cx)
    ours = {str(cx.abstract_syntax): {str(ts) for ts in cx.transfer_syntax} for cx in supported}
    for uid, contexts in by_class.items():
        proposals = [[str(ts) for ts in cx.transfer_syntax if str(ts) in ours.get(uid, set())] for cx in contexts]
        for cx, chosen in zip(contexts, choose_held_syntaxes(proposals, held[uid])):
            if chosen is not None:
                cx.transfer_syntax = [chosen]
