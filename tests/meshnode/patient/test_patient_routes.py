"""The control API's patient link routes (what `meshnode patient-share` and `meshnode upload-link` call), on a real
LinkService with a real SMTP server and SMS gateway: the actor is the control account, errors are the service's."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from meshnode.node.patient_routes import routes
from meshnode.patient.service import LinkService
from protocol.errors import NotFoundError
from protocol.patient_link import LinkGone, PatientAccessError
from tests.meshnode.notify.smtp_server import SmtpServer
from tests.meshnode.patient.helpers import STUDY, Clock, SmsGateway, service


@pytest.fixture
def smtp(tmp_path: Path) -> Iterator[SmtpServer]:
    server = SmtpServer(tmp_path / "smtp").start()
    yield server
    server.stop()


@pytest.fixture
def gateway() -> Iterator[SmsGateway]:
    g = SmsGateway(Clock()).start()
    yield g
    g.stop()


def _routes(links: LinkService | None) -> Any:
    table = routes(SimpleNamespace(patient_links=links))  # type: ignore[arg-type]
    return {path: handler for (_, path), handler in table.items()}


async def test_create_list_show_revoke_unlock(smtp: SmtpServer, gateway: SmsGateway, tmp_path: Path) -> None:
    links, _ = service(smtp, gateway, tmp_path, Clock())
    r = _routes(links)
    made = await r["/patient-links/create"]({"studies": [STUDY], "person": "Ann", "email": "ann@example.org",
                                             "code_to": "+447700900123", "actor": "ops"})
    upload = await r["/patient-links/create"]({"kind": "upload", "person": "Dr Who", "email": "who@example.org",
                                               "code_to": "who@example.net"})
    listed = await r["/patient-links"]({})
    assert [x["id"] for x in listed["links"]] == [upload["id"], made["id"]]
    assert listed["links"][1]["created_by"] == "control:ops"
    shown = await r["/patient-links/show"]({"id": made["id"]})
    assert [h["action"] for h in shown["history"]] == ["created", "email sent"]
    with pytest.raises(PatientAccessError):  # a reason is required
        await r["/patient-links/unlock"]({"id": made["id"]})
    assert await r["/patient-links/unlock"]({"id": made["id"], "reason": "phoned"}) == {"unlocked": True}
    assert await r["/patient-links/revoke"]({"id": made["id"], "reason": "done"}) == {"revoked": True}
    with pytest.raises(LinkGone):
        await r["/patient-links/unlock"]({"id": made["id"], "reason": "phoned"})
    for body in ({}, {"id": 5}, {"id": "nope"}):
        with pytest.raises((PatientAccessError, LinkGone)):
            await r["/patient-links/show"](body)


async def test_off_is_a_clear_error() -> None:
    with pytest.raises(NotFoundError, match="patient_access"):
        await _routes(None)["/patient-links"]({})


async def test_minor10_an_unknown_kind_or_studies_on_an_upload_are_refused(smtp: SmtpServer, gateway: SmsGateway,
                                                                       tmp_path: Path) -> None:
    links, _ = service(smtp, gateway, tmp_path, Clock())
    r = _routes(links)
    base = {"person": "Dr Who", "email": "who@example.org", "code_to": "who@example.net"}
    for body in ({**base, "kind": "admin", "studies": [STUDY]}, {**base, "kind": "upload", "studies": [STUDY]},
                 {**base, "kind": 5, "studies": [STUDY]}):
        with pytest.raises(PatientAccessError):
            await r["/patient-links/create"](body)
    assert links.store.links() == [] and smtp.received == []
