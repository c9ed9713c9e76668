"""C-FIND SCP: Patient Root and Study Root, at PATIENT / STUDY / SERIES / IMAGE level.

The identifier's keys are matched against every study the node holds
(meshnode.gateway.catalog, meshnode.gateway.matching). Keys the node does not
keep are returned empty. Each query is audited (Query, 110112) without its
values: they may name a patient. Statuses: 0xFF00 pending per match,
0x0000 done, 0xFE00 cancelled, 0x0124 caller may not query, 0xA700 too many
matches, 0xA900 identifier does not fit the information model, 0xC000
identifier that cannot be read or answered.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from functools import partial
from typing import Any

from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataset import Dataset

from meshnode.gateway.catalog import TooManyResultsError, find
from meshnode.gateway.dimse.bridge import AssociationInfo, AuditFn, TrioBridge
from meshnode.gateway.dimse.contexts import FIND_MODELS
from meshnode.gateway.matching import ATTRIBUTES, Query, QueryError, make_query
from meshnode.storage.audit import AuditEvent, EventCode, Outcome
from meshnode.storage.dbthread import DatabaseThread
from protocol.errors import MeshError

log = logging.getLogger(__name__)

PENDING = 0xFF00
CANCELLED = 0xFE00
NOT_AUTHORISED = 0x0124
OUT_OF_RESOURCES = 0xA700
DOES_NOT_MATCH = 0xA900
UNABLE_TO_PROCESS = 0xC000

Result = tuple[int | Dataset, Dataset | None]


def _status(code: int, comment: str) -> Dataset:
    ds = Dataset()
    ds.Status = code
    ds.ErrorComment = comment[:64]
    return ds


def identifier_keys(ds: Dataset) -> tuple[str, dict[str, str], list[str]]:
    """(QueryRetrieveLevel, keyword -> value text, keywords of other keys) of a query identifier."""
    level = ""
    keys: dict[str, str] = {}
    other: list[str] = []
    for elem in ds:
        keyword = elem.keyword or keyword_for_tag(elem.tag)
        if keyword == "QueryRetrieveLevel":
            level = str(elem.value or "")
        elif keyword in ("SpecificCharacterSet", ""):
            continue
        elif keyword in ATTRIBUTES:
            value = elem.value
            if value is None:
                keys[keyword] = ""
            elif elem.VM > 1:
                keys[keyword] = "\\".join(str(v) for v in value)
            else:
                keys[keyword] = str(value)
        else:
            other.append(keyword)
    return level, keys, other


def response(row: dict[str, str], query: Query, retrieve_ae: str) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.QueryRetrieveLevel = query.level.value
    for keyword, value in row.items():
        vr = ATTRIBUTES[keyword][0]
        if vr == "US":
            setattr(ds, keyword, int(value) if value else None)
        elif "\\" in value and vr in ("CS", "UI"):
            setattr(ds, keyword, value.split("\\"))
        else:
            setattr(ds, keyword, value or None)
    for keyword in query.unsupported:
        try:
            ds.add_new(keyword, dictionary_VR(keyword), None)
        except (KeyError, ValueError, TypeError):
            continue
    ds.RetrieveAETitle = retrieve_ae
    ds.InstanceAvailability = "ONLINE"
    return ds


class FindScp:
    def __init__(self, db: DatabaseThread, audit: AuditFn, retrieve_ae: str) -> None:
        self.db = db
        self.audit = audit
        self.retrieve_ae = retrieve_ae

    def handle(self, event: Any, bridge: TrioBridge) -> Iterator[Result]:
        info: AssociationInfo = event.assoc.gateway_info
        if "find" not in info.caller.allow:
            self._audit(bridge, info, Outcome.MINOR_FAILURE, "not permitted", EventCode.SECURITY_ALERT)
            yield _status(NOT_AUTHORISED, f"{info.calling_ae} may not query here"), None
            return
        model = str(event.request.AffectedSOPClassUID)
        try:
            level, keys, other = identifier_keys(event.identifier)
            query = make_query(level, keys, patient_root=FIND_MODELS.get(model) == "PATIENT", unsupported=other)
        except QueryError as exc:
            code = DOES_NOT_MATCH if "information model" in str(exc) else UNABLE_TO_PROCESS
            self._audit(bridge, info, Outcome.MINOR_FAILURE, exc.name)
            yield _status(code, str(exc)), None
            return
        except Exception as exc:  # untrusted identifier: pydicom fails in many ways
            self._audit(bridge, info, Outcome.MINOR_FAILURE, "unreadable identifier")
            yield _status(UNABLE_TO_PROCESS, f"cannot read the identifier ({type(exc).__name__})"), None
            return
        try:
            rows = bridge.call(self.db.run, partial(find, query=query))
        except TooManyResultsError as exc:
            self._audit(bridge, info, Outcome.MINOR_FAILURE, f"{query.level.value}: {exc}")
            yield _status(OUT_OF_RESOURCES, str(exc)), None
            return
        except MeshError as exc:
            yield _status(UNABLE_TO_PROCESS, f"{exc.name}: {exc}"), None
            return
        info.found += len(rows)
        self._audit(bridge, info, Outcome.SUCCESS, f"{query.level.value} level, {len(rows)} match(es)")
        for row in rows:
            if event.is_cancelled:
                yield CANCELLED, None
                return
            yield PENDING, response(row, query, self.retrieve_ae)

    def _audit(self, bridge: TrioBridge, info: AssociationInfo, outcome: Outcome, detail: str,
               code: EventCode = EventCode.QUERY) -> None:
        try:
            bridge.call(self.audit, AuditEvent(code, "dimse-find", outcome, actor=info.source, detail=detail[:300]))
        except MeshError as exc:
            log.error("cannot audit a C-FIND: %s", exc)
