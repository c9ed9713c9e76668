"""Hypothesis strategies for every document and directory message, within the wire limits."""

from __future__ import annotations

from hypothesis import strategies as st

from protocol import directory_messages as dm
from protocol.address_record import MAX_ADDRS, AddressRecord
from protocol.certificate import MAX_ORG_NAME, ROLE_NAMES, Certificate
from protocol.cid import CID
from protocol.document import Document
from protocol.keys import SigningKey
from protocol.manifest import MAX_ATTENTION, MAX_NOTE, InstanceEntry, Manifest, Priority, Purpose, StudySummary
from protocol.recall import MAX_REASON, Recall, RecallAction
from protocol.receipt import Receipt
from protocol.roster import Roster
from protocol.schema import MAX_TIME

signing_keys = st.binary(min_size=32, max_size=32).map(SigningKey)
times = st.integers(0, MAX_TIME)
org_codes = st.from_regex(r"[A-Z0-9][A-Z0-9-]{1,15}", fullmatch=True)
serials = st.from_regex(r"[0-9a-f]{32}", fullmatch=True)
cids = st.binary(min_size=32, max_size=32).map(CID)
digests = st.binary(min_size=32, max_size=32)
uid_components = st.integers(0, 10**9).map(str)
uids = st.lists(uid_components, min_size=2, max_size=10).map(".".join).filter(lambda u: len(u) <= 64)


def wire_text(max_size: int, min_size: int = 0) -> st.SearchStrategy[str]:
    """Text the schema accepts: no control characters except tab, no lone surrogates."""
    chars = st.characters(exclude_categories=("Cs", "Cc")) | st.sampled_from("\t\x7f")
    return st.text(chars, min_size=min_size, max_size=max_size)


def free_text(max_size: int, *, line_breaks: bool) -> st.SearchStrategy[str]:
    """A manifest's attention or note: printable characters (and line feeds in a note), not empty, nothing
    to strip at either end."""
    chars = st.characters(exclude_categories=("Cs", "Cc", "Cf", "Zl", "Zp", "Zs", "Co", "Cn")) | st.just(" ")
    if line_breaks:
        chars = chars | st.just("\n")
    return st.text(chars, min_size=1, max_size=max_size).filter(lambda t: t == t.strip() and t.isprintable()
                                                                 or (line_breaks and t == t.strip()
                                                                     and t.replace("\n", "").isprintable()))


@st.composite
def time_window(draw: st.DrawFn) -> tuple[int, int]:
    start = draw(st.integers(0, MAX_TIME - 1))
    end = draw(st.integers(start + 1, MAX_TIME))
    return start, end


@st.composite
def certificates(draw: st.DrawFn) -> tuple[Certificate, SigningKey]:
    issuer = draw(signing_keys)
    not_before, not_after = draw(time_window())
    cert = Certificate(
        serial=draw(serials),
        org_code=draw(org_codes),
        org_name=draw(wire_text(MAX_ORG_NAME, min_size=1)),
        roles=tuple(sorted(draw(st.sets(st.sampled_from(sorted(ROLE_NAMES)), min_size=1)))),
        node_key=draw(signing_keys).public_key,
        not_before=not_before,
        not_after=not_after,
        issuer=issuer.peer_id,
    )
    return cert, issuer


@st.composite
def rosters(draw: st.DrawFn) -> tuple[Roster, SigningKey]:
    issued_at, expires_at = draw(time_window())
    keys = draw(st.lists(signing_keys, min_size=1, max_size=4, unique_by=lambda k: k.seed))
    roster = Roster(
        version=draw(st.integers(1, 2**63 - 1)),
        issued_at=issued_at,
        expires_at=expires_at,
        authorities=tuple(k.public_key for k in keys),  # any order: the wire form is a sorted set
        revoked=frozenset(draw(st.sets(serials, max_size=5))),
    )
    return roster, draw(st.sampled_from(keys))


multiaddrs = st.one_of(
    st.builds(
        "/ip4/{}.{}.{}.{}/tcp/{}".format,
        *[st.integers(0, 255)] * 4,
        st.integers(0, 65535),
    ),
    st.builds("/ip6/::{:x}/udp/{}/quic-v1".format, st.integers(0, 0xFFFF), st.integers(0, 65535)),
    st.builds("/dns4/{}/tcp/{}".format, st.from_regex(r"[a-z][a-z0-9-]{0,30}(\.[a-z]{2,6})?", fullmatch=True), st.integers(0, 65535)),
)


@st.composite
def address_records(draw: st.DrawFn) -> tuple[AddressRecord, SigningKey]:
    node = draw(signing_keys)
    record = AddressRecord(
        peer_id=node.peer_id,
        addrs=tuple(draw(st.lists(multiaddrs, min_size=1, max_size=MAX_ADDRS))),
        seq=draw(st.integers(0, 2**63 - 1)),
        expires_at=draw(times),
    )
    return record, node


@st.composite
def instance_entries(draw: st.DrawFn, series_uids: list[str]) -> InstanceEntry:
    return InstanceEntry(
        sop_class_uid=draw(uids),
        sop_instance_uid=draw(uids),
        series_uid=draw(st.sampled_from(series_uids)),
        transfer_syntax=draw(st.just("") | uids),
        size=draw(st.integers(0, 1 << 40)),
        digest=draw(digests),
        blocks=tuple(draw(st.lists(cids, min_size=1, max_size=4))),
    )


@st.composite
def manifests(draw: st.DrawFn) -> tuple[Manifest, SigningKey]:
    node = draw(signing_keys)
    created_at, expires_at = draw(time_window())
    series_uids = draw(st.lists(uids, min_size=1, max_size=3, unique=True))
    instances = tuple(
        draw(st.lists(instance_entries(series_uids), min_size=1, max_size=4, unique_by=lambda i: i.sop_instance_uid))
    )
    summary = StudySummary(
        patient_name=draw(wire_text(324)),
        patient_id=draw(wire_text(64)),
        birth_date=draw(wire_text(8)),
        sex=draw(wire_text(16)),
        modality=draw(wire_text(64)),
        study_date=draw(wire_text(8)),
        description=draw(wire_text(256)),
        series_count=len({i.series_uid for i in instances}),
        instance_count=len(instances),
    )
    manifest = Manifest(
        study_uid=draw(uids),
        sender_org=draw(org_codes),
        sender_peer=node.peer_id,
        recipients=tuple(sorted(draw(st.sets(org_codes, min_size=1, max_size=5)))),
        priority=draw(st.sampled_from(Priority)),
        purpose=draw(st.sampled_from(Purpose)),
        created_at=created_at,
        expires_at=expires_at,
        revision=draw(st.integers(1, 2**63 - 1)),
        summary=summary,
        instances=instances,
        attention=draw(st.just("") | free_text(MAX_ATTENTION, line_breaks=False)),
        note=draw(st.just("") | free_text(MAX_NOTE, line_breaks=True)),
    )
    return manifest, node


@st.composite
def receipts(draw: st.DrawFn) -> tuple[Receipt, SigningKey]:
    node = draw(signing_keys)
    receipt = Receipt(
        manifest_id=draw(cids),
        recipient_org=draw(org_codes),
        recipient_peer=node.peer_id,
        instances_verified=draw(st.integers(0, 50_000)),
        at=draw(times),
    )
    return receipt, node


@st.composite
def recalls(draw: st.DrawFn) -> tuple[Recall, SigningKey]:
    action = draw(st.sampled_from(RecallAction))
    recall = Recall(
        manifest_id=draw(cids),
        study_uid=draw(uids),
        sender_org=draw(org_codes),
        action=action,
        superseded_by=draw(cids) if action is RecallAction.SUPERSEDE else None,
        reason=draw(wire_text(MAX_REASON)),
        at=draw(times),
    )
    return recall, draw(signing_keys)


documents: st.SearchStrategy[tuple[Document, SigningKey]] = st.one_of(
    certificates(), rosters(), address_records(), manifests(), receipts(), recalls()
)

small_blobs = st.binary(max_size=200)
peer_ids = signing_keys.map(lambda k: k.peer_id)

requests: st.SearchStrategy[dm.Request] = st.one_of(
    st.builds(dm.LookupOrg, org_codes),
    st.builds(dm.LookupPeer, peer_ids),
    st.just(dm.GetRoster()),
    st.just(dm.GetIdentity()),
    st.builds(dm.Register, st.binary(max_size=dm.MAX_CERT_BYTES), st.binary(max_size=dm.MAX_RECORD_BYTES)),
    st.builds(dm.PublishRoster, st.binary(max_size=4096)),
)

responses: st.SearchStrategy[dm.Response] = st.one_of(
    st.builds(
        dm.Entries,
        st.lists(st.builds(dm.Entry, small_blobs, st.none() | small_blobs), max_size=5).map(tuple),
    ),
    st.builds(dm.RosterReply, st.none() | small_blobs),
    st.builds(dm.IdentityReply, small_blobs),
    st.just(dm.Accepted()),
    st.builds(dm.Refused, st.integers(0, 9999), wire_text(512)),
)
