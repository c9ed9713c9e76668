"""Messages of the request protocols: study requests, their responses, and prior-study queries.

    /dicom-mesh/study-request/1.0.0     requester -> a holder node   RequestDelivery -> Ack | Refused
    /dicom-mesh/request-response/1.0.0  holder -> the requester node ResponseDelivery -> Ack | Refused
    /dicom-mesh/prior-query/1.0.0       requester -> a holder node   PriorQuery -> PriorReply | Refused

Like the exchange protocols (protocol.exchange_messages): one stream per exchange, one request frame, one
response frame, CBOR maps, signed documents carried as their signed bytes with the signer's certificate.
A prior query is not a signed document: the stream's authenticated peer (its certificate, verified by
hello) is who asks, and the answer is study-level metadata only, at most MAX_PRIOR_STUDIES studies.
The wire spec is docs/protocol/requests.md.
"""

from __future__ import annotations

from dataclasses import dataclass

from protocol import cbor
from protocol.cbor import CborValue
from protocol.exchange_messages import MAX_CERT_BYTES, REPLY_MAX_FRAME, FrameLimits, Refused
from protocol.errors import LimitError, SchemaError
from protocol.schema import Fields, check_uid
from protocol.study_request import RequestResponse, StudyRequest, check_date, check_nhs_number

STUDY_REQUEST_PROTOCOL = "/dicom-mesh/study-request/1.0.0"
REQUEST_RESPONSE_PROTOCOL = "/dicom-mesh/request-response/1.0.0"
PRIOR_QUERY_PROTOCOL = "/dicom-mesh/prior-query/1.0.0"

#: studies one prior-query answer lists at most (the newest); `truncated` says when there were more
MAX_PRIOR_STUDIES = 100
MAX_DESCRIPTION = 64
MAX_MODALITIES = 16
PRIOR_MAX_RESPONSE_FRAME = 64 * 1024

REQUEST_LIMITS: dict[str, FrameLimits] = {
    STUDY_REQUEST_PROTOCOL: FrameLimits(StudyRequest.MAX_BYTES + MAX_CERT_BYTES + 256, REPLY_MAX_FRAME),
    REQUEST_RESPONSE_PROTOCOL: FrameLimits(RequestResponse.MAX_BYTES + MAX_CERT_BYTES + 256, REPLY_MAX_FRAME),
    PRIOR_QUERY_PROTOCOL: FrameLimits(256, PRIOR_MAX_RESPONSE_FRAME),
}


@dataclass(frozen=True)
class RequestDelivery:
    request: bytes
    certificate: bytes


@dataclass(frozen=True)
class ResponseDelivery:
    response: bytes
    certificate: bytes


@dataclass(frozen=True)
class PriorQuery:
    nhs_number: str
    #: the requesting user (for the holder's audit): printable, at most MAX_ASKED_BY characters; "" unknown
    asked_by: str = ""

    def __post_init__(self) -> None:
        if not self.nhs_number:
            raise SchemaError("a prior query names an NHS number")
        check_nhs_number(self.nhs_number, "prior query.nhs_number")
        check_asked_by(self.asked_by, "prior query.asked_by")


#: characters a prior query's `asked_by` may have
MAX_ASKED_BY = 128


def check_asked_by(value: str, what: str) -> str:
    if len(value) > MAX_ASKED_BY:
        raise LimitError(f"{what}: {len(value)} characters, limit {MAX_ASKED_BY}")
    if not value.isprintable():
        raise SchemaError(f"{what}: printable characters only")
    return value


@dataclass(frozen=True)
class PriorStudy:
    """What a prior query may say of one study: never the images, never another patient identifier."""

    study_uid: str
    study_date: str
    modalities: tuple[str, ...]
    description: str
    series: int
    instances: int

    def __post_init__(self) -> None:
        check_uid(self.study_uid, "prior study.study_uid")
        check_date(self.study_date, "prior study.study_date")
        if len(self.description) > MAX_DESCRIPTION or len(self.modalities) > MAX_MODALITIES:
            raise SchemaError("prior study: description or modalities too long")

    def to_json(self) -> dict[str, object]:
        return {"study_uid": self.study_uid, "study_date": self.study_date, "modalities": list(self.modalities),
                "description": self.description, "series": self.series, "instances": self.instances}


@dataclass(frozen=True)
class PriorReply:
    studies: tuple[PriorStudy, ...]
    truncated: bool = False


def encode_delivery(delivery: RequestDelivery | ResponseDelivery) -> bytes:
    if isinstance(delivery, RequestDelivery):
        return cbor.encode({"request": delivery.request, "certificate": delivery.certificate})
    return cbor.encode({"response": delivery.response, "certificate": delivery.certificate})


def decode_request_delivery(data: bytes) -> RequestDelivery:
    f = Fields(cbor.decode(data, max_depth=3, max_items=16), "request delivery")
    delivery = RequestDelivery(f.blob("request", max_len=StudyRequest.MAX_BYTES),
                               f.blob("certificate", max_len=MAX_CERT_BYTES))
    f.finish()
    return delivery


def decode_response_delivery(data: bytes) -> ResponseDelivery:
    f = Fields(cbor.decode(data, max_depth=3, max_items=16), "response delivery")
    delivery = ResponseDelivery(f.blob("response", max_len=RequestResponse.MAX_BYTES),
                                f.blob("certificate", max_len=MAX_CERT_BYTES))
    f.finish()
    return delivery


def encode_prior_query(query: PriorQuery) -> bytes:
    return cbor.encode({"nhs_number": query.nhs_number, **({"asked_by": query.asked_by} if query.asked_by else {})})


def decode_prior_query(data: bytes) -> PriorQuery:
    f = Fields(cbor.decode(data, max_depth=2, max_items=8), "prior query")
    query = PriorQuery(f.text("nhs_number", 10), f.optional_text("asked_by", MAX_ASKED_BY, check_asked_by))
    f.finish()
    return query


def encode_prior_reply(reply: PriorReply | Refused) -> bytes:
    if isinstance(reply, Refused):
        return cbor.encode({"ok": False, "code": reply.code, "message": reply.message})
    return cbor.encode({"ok": True, "truncated": reply.truncated, "studies": [
        {"study": s.study_uid, "date": s.study_date, "modalities": list(s.modalities),
         "description": s.description, "series": s.series, "instances": s.instances} for s in reply.studies]})


def _prior_study(value: CborValue, what: str) -> PriorStudy:
    f = Fields(value, what)

    def modality(item: CborValue, where: str) -> str:
        if not isinstance(item, str) or not 1 <= len(item) <= 16:
            raise SchemaError(f"{where}: expected a modality")
        return item

    study = PriorStudy(check_uid(f.text("study", 64), f"{what}.study"), f.text("date", 8),
                       f.array("modalities", modality, max_items=MAX_MODALITIES),
                       f.text("description", MAX_DESCRIPTION), f.integer("series", 0, 1 << 20),
                       f.integer("instances", 0, 1 << 30))
    f.finish()
    return study


def decode_prior_reply(data: bytes) -> PriorReply | Refused:
    f = Fields(cbor.decode(data, max_depth=4, max_items=MAX_PRIOR_STUDIES * (14 + MAX_MODALITIES) + 16),
               "prior reply")
    if not f.boolean("ok"):
        refused = Refused(f.integer("code", 0, 9999), f.text("message", 512))
        f.finish()
        return refused
    reply = PriorReply(f.array("studies", _prior_study, max_items=MAX_PRIOR_STUDIES), f.boolean("truncated"))
    f.finish()
    return reply
