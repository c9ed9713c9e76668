"""The reconciliation queue and lookup table over HTTP, attacked: wrong roles, no token, a session cookie
(CSRF), a study not in the queue, a replayed decision, bad records, injection-looking input. Each is
refused and changes nothing; every decision is audited with the user's name."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any, TypeVar

import pytest

from meshnode.gateway.reconcile_config import ReconciliationSettings
from meshnode.gateway.reconciler import Reconciler
from meshnode.storage.audit import AuditEvent, EventCode
from meshnode.storage.memory_metadata import MemoryMetadataStore
from meshnode.storage.metadata import MetadataStore
from meshnode.storage.patients import PatientRecord, ReconciliationRow, ReconState
from meshnode.storage.users import MemoryUserStore
from meshnode.web.app import WebApp
from meshnode.web.auth import SESSION_COOKIE, Authenticator, add_user, issue_token
from meshnode.web.config import HttpConfig
from meshnode.web.reconcile_web import ReconcileWeb
from protocol.cid import CID
from tests.meshnode.web.asgi import Reply, call

T = TypeVar("T")
WAITING = CID.of(b"a study waiting")
DECIDED = CID.of(b"a study matched automatically")
OTHER_NHS = CID.of(b"a study carrying another NHS number")
LOCAL = PatientRecord("RGT0001", "RGT", "9434765919", "SMITH^JANE", "19700101", "F", 1, "seed")


class Db:
    def __init__(self, store: MetadataStore) -> None:
        self.store = store

    async def run(self, fn: Callable[[MetadataStore], T]) -> T:
        return fn(self.store)


class Env:
    def __init__(self) -> None:
        self.store = MemoryMetadataStore()
        self.store.put_patients([LOCAL])
        self.store.add_reconciliation(ReconciliationRow(WAITING, "1.2.3", "RXX", ReconState.WAITING, 1,
                                                        patient_id="RXX9", reason="no-nhs-number"))
        self.store.add_reconciliation(ReconciliationRow(DECIDED, "1.2.4", "RXX", ReconState.MATCHED, 2,
                                                        local_id="RGT0001", decided_by="auto"))
        self.events: list[AuditEvent] = []
        self.released: list[CID] = []
        db = Db(self.store)
        self.reconciler = Reconciler(db, None, ReconciliationSettings(enabled=True), self.audit, "RGT", time.time)

        async def released(m: CID) -> None:
            self.released.append(m)

        self.reconciler.on_matched = released
        users = MemoryUserStore()
        now = int(time.time() * 1000)
        add_user(users, "reader", ("read",), now)
        add_user(users, "pacs", ("pacs",), now)  # the PACS team: the queues, and write to decide
        self.reader = issue_token(users, "reader", "", now)[0]
        self.writer = issue_token(users, "pacs", "", now)[0]
        web = ReconcileWeb(lambda: self.reconciler, db, self.audit, time.time)
        self.app = WebApp(web.routes(), Authenticator(users, time.time), HttpConfig(listen="127.0.0.1:0"), self.audit)

    async def audit(self, event: AuditEvent) -> None:
        self.events.append(event)

    async def post(self, path: str, token: str | None, body: Any, **headers: str) -> Reply:
        h = {"Content-Type": "application/json", **headers}
        if token:
            h["Authorization"] = f"Bearer {token}"
        return await call(self.app, "POST", path, headers=h, body=json.dumps(body).encode())

    def snapshot(self) -> tuple[object, ...]:
        return (self.store.reconciliations(), self.store.patients(), list(self.released))


@pytest.fixture
def env() -> Env:
    return Env()


async def test_only_a_writer_decides(env: Env) -> None:
    before = env.snapshot()
    path = f"/reconcile/{WAITING}/match"
    assert (await env.post(path, None, {"local_id": "RGT0001"})).status == 401
    assert (await env.post(path, env.reader, {"local_id": "RGT0001"})).status == 403
    # a browser's session cookie is not a credential for a POST outside /ui/ (CSRF)
    cookie = await env.post(path, None, {"local_id": "RGT0001"}, Cookie=f"{SESSION_COOKIE}=anything")
    assert cookie.status == 401
    assert (await env.post(f"/reconcile/{WAITING}/reject", env.reader, {})).status == 403
    assert (await env.post("/patients", env.reader, {"record": {"local_id": "X", "issuer": "RGT",
                                                                 "nhs_number": "4010232137"}})).status == 403
    assert (await env.post("/patients/delete", env.reader, {"local_id": "RGT0001"})).status == 403
    assert env.snapshot() == before
    assert [e.action for e in env.events].count("http-forbidden") == 4


async def test_reading_the_queue_needs_queues(env: Env) -> None:
    assert (await call(env.app, "GET", "/reconcile")).status == 401
    # read (a clinician, a machine's read token) is not enough: the queue and the lookup table are the PACS team's
    for path in ("/reconcile", "/patients"):
        assert (await call(env.app, "GET", path, headers={"Authorization": f"Bearer {env.reader}"})).status == 403
    r = await call(env.app, "GET", "/reconcile", headers={"Authorization": f"Bearer {env.writer}"})
    assert r.status == 200 and [row["manifest"] for row in r.json()] == [str(WAITING)]
    r = await call(env.app, "GET", "/reconcile", query="all=1", headers={"Authorization": f"Bearer {env.writer}"})
    assert len(r.json()) == 2
    assert [(e.action, e.actor) for e in env.events if e.code == EventCode.QUERY] == \
        [("reconcile-list", "user:pacs")] * 2  # patient identifiers shown: audited


@pytest.mark.parametrize("manifest", [str(CID.of(b"never arrived")), str(DECIDED), "..%2F..%2Fetc", "b" + "a" * 58,
                                      "'; DROP TABLE reconciliations;--"])
async def test_a_decision_for_a_study_not_waiting_changes_nothing(env: Env, manifest: str) -> None:
    before = env.snapshot()
    r = await env.post(f"/reconcile/{manifest}/match", env.writer, {"local_id": "RGT0001"})
    assert r.status in (400, 404)
    assert env.snapshot() == before
    assert not [e for e in env.events if e.code == EventCode.PATIENT_RECORD]


async def test_a_match_is_audited_with_the_user_and_a_replay_is_refused(env: Env) -> None:
    r = await env.post(f"/reconcile/{WAITING}/match", env.writer, {"local_id": "RGT0001", "actor": "someone-else"})
    assert r.status == 200 and r.json()["decided_by"] == "user:pacs" and r.json()["local"]["local_id"] == "RGT0001"
    assert env.released == [WAITING]
    after = env.snapshot()
    for replay in ({"local_id": "RGT0001"}, {"record": {"local_id": "X", "issuer": "RGT",
                                                        "nhs_number": "4010232137"}}):
        assert (await env.post(f"/reconcile/{WAITING}/match", env.writer, replay)).status == 400
    assert (await env.post(f"/reconcile/{WAITING}/reject", env.writer, {})).status == 400
    assert env.snapshot() == after
    decisions = [(e.action, e.actor) for e in env.events if e.code == EventCode.PATIENT_RECORD]
    assert decisions == [("reconcile-matched", "user:pacs")]


async def test_bad_matches_and_records_are_refused(env: Env) -> None:
    before = env.snapshot()
    path = f"/reconcile/{WAITING}/match"
    for body in ({"local_id": "NOSUCH"}, {}, {"local_id": 5}, {"local_id": "x" * 1000},
                 {"record": {"local_id": "X", "issuer": "RGT", "nhs_number": "9434765918"}},
                 {"record": {"local_id": "=cmd|' /C calc'!A0", "issuer": "RGT", "nhs_number": "4010232137"}},
                 {"record": {"local_id": "X", "issuer": "RGT", "nhs_number": "4010232137", "extra": "field"}},
                 {"record": "RGT0001"}, ["not", "an", "object"]):
        r = await env.post(path, env.writer, body)
        assert r.status in (400, 404), body
    r = await call(env.app, "POST", path, headers={"Authorization": f"Bearer {env.writer}"}, body=b"{not json")
    assert r.status == 400
    r = await call(env.app, "POST", path, headers={"Authorization": f"Bearer {env.writer}"}, body=b"x" * 20000)
    assert r.status == 413
    for body in ({"record": {"local_id": "RGT0002", "issuer": "RGT", "nhs_number": "1234567890"}},
                 {"record": {"local_id": "RGT0002", "issuer": "RGT\\X", "nhs_number": "4010232137"}}):
        assert (await env.post("/patients", env.writer, body)).status == 400
    assert (await env.post("/patients/delete", env.writer, {"local_id": "NOSUCH"})).status == 404
    assert env.snapshot() == before


async def test_a_writer_edits_the_table_audited(env: Env) -> None:
    r = await env.post("/patients", env.writer, {"record": {"local_id": "RGT0002", "issuer": "RGT",
                                                            "nhs_number": "401 023 2137", "name": "JONES^A"}})
    assert r.status == 200 and r.json()["nhs_number"] == "4010232137" and r.json()["updated_by"] == "user:pacs"
    got = await call(env.app, "GET", "/patients", query="nhs_number=4010232137",
                     headers={"Authorization": f"Bearer {env.writer}"})
    assert [p["local_id"] for p in got.json()] == ["RGT0002"]
    assert (await env.post("/patients/delete", env.writer, {"local_id": "RGT0002"})).status == 200
    actions = [(e.action, e.actor) for e in env.events if e.code == EventCode.PATIENT_RECORD]
    assert actions == [("patient-table-add", "user:pacs"), ("patient-table-delete", "user:pacs")]
    assert "4010232137" not in json.dumps([e.detail for e in env.events]) and "RGT0002" not in str(env.events)


async def test_a_match_with_another_nhs_number_needs_a_reason_over_http(env: Env) -> None:
    """Review finding 15, over HTTP: the study carries 4010232137, RGT0001 has another NHS number."""
    env.store.add_reconciliation(ReconciliationRow(OTHER_NHS, "1.2.5", "RXX", ReconState.WAITING, 3,
                                                   nhs_number="4010232137", reason="no-candidate"))
    before = env.snapshot()
    path = f"/reconcile/{OTHER_NHS}/match"
    for body in ({"local_id": "RGT0001"}, {"local_id": "RGT0001", "override_reason": ""},
                 {"local_id": "RGT0001", "override_reason": 7}, {"local_id": "RGT0001", "override_reason": "x" * 201}):
        r = await env.post(path, env.writer, body)
        assert r.status == 400, body
    assert env.snapshot() == before
    r = await env.post(path, env.writer, {"local_id": "RGT0001", "override_reason": "sender typo, checked with PAS"})
    assert r.status == 200, r.body
    assert r.json()["local"]["local_id"] == "RGT0001"
    [decision] = [e for e in env.events if e.action == "reconcile-matched"]
    assert decision.actor == "user:pacs" and "OVERRIDE" in decision.detail and "checked with PAS" in decision.detail
