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


def prefer_held_syntaxes(requested: list[Any], supported: list[Any], role_selected: set[str],
                         held: dict[str, set[str]]) -> None:
    """For the SOP classes the requestor wants to receive (C-GET), accept the syntax the node stores them in.

    A C-GET's storage contexts are negotiated before the request says which
    instances it wants, and an acceptor accepts one transfer syntax per
    context. When the node holds a SOP class in one transfer syntax and the
    requestor proposed it, that syntax is accepted: those instances go back
    as stored, byte for byte. When it holds the class in several syntaxes,
    one context cannot carry them all as they are; a compressed one would
    make every other instance fail (the node never compresses), so a held
    uncompressed syntax the requestor proposed is taken, and otherwise the
    node's own order (uncompressed first): every instance is delivered, the
    others converted (sending.py). A requestor proposing a context per
    transfer syntax gets every instance exact (the C-STORE takes an exactly
    matching context first).
    """
    proposed: dict[str, list[str]] = {}
    for cx in requested:
        uid = str(cx.abstract_syntax)
        if uid in role_selected:
            proposed.setdefault(uid, []).extend(str(ts) for ts in cx.transfer_syntax)
    order: dict[str, list[str]] = {}
    for uid, syntaxes in proposed.items():
        stored = held.get(uid, set())
        exact = list(dict.fromkeys(ts for ts in syntaxes if ts in stored))
        if len(stored) > 1:
            exact = [ts for ts in exact if not UID(ts).is_compressed]
        if exact:
            order[uid] = exact
    for cx in supported:
        wanted = order.get(str(cx.abstract_syntax))
        if not wanted:
            continue
        ours = [str(ts) for ts in cx.transfer_syntax]
        cx.transfer_syntax = [ts for ts in wanted if ts in ours] + [ts for ts in ours if ts not in wanted]
