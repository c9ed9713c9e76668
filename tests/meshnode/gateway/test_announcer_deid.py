"""A route marked for de-identification: the announcer hands the study to the research share path (a
de-identified copy), never to the plain share; a held share is settled, not retried nor announced."""

from __future__ import annotations

from pathlib import Path

from meshnode.gateway.routes import Route
from protocol.deid import DeidProfile
from protocol.document import Signed
from protocol.manifest import Manifest, Priority, Purpose
from tests.meshnode.gateway.conftest import GatewayFactory
from tests.meshnode.gateway.harness import config, eventually

RESEARCH = Route("lung", ("RES",), Priority.ROUTINE, Purpose.RESEARCH, called_ae="MESH_LUNG", quiet_period_s=1,
                 deid=DeidProfile("lung"))


async def test_a_research_route_never_shares_the_original(gateways: GatewayFactory, ct_study: list[Path]) -> None:
    gw = await gateways(config(routes=[RESEARCH]), dimse=False)
    asked: list[tuple[str, str]] = []

    async def held(study: str, route: Route) -> Signed[Manifest] | None:
        asked.append((study, route.name))
        return None  # held for a human decision

    gw.announcer.share_research = held
    study = ""
    for path in ct_study[:2]:
        study = (await gw.intake.store(path.read_bytes(), RESEARCH, source="dimse:CT@127.0.0.1")).study_uid
    await eventually(lambda: asked[:1], "the research share path")
    await eventually(lambda: not gw.announcer.pending(), "the held announcement to be settled")
    assert asked == [(study, "lung")]
    assert gw.shared.calls == [] and gw.shared.manifests == []  # the plain share path: never


async def test_without_a_research_share_path_the_route_refuses_rather_than_share(
        gateways: GatewayFactory, ct_study: list[Path]) -> None:
    gw = await gateways(config(routes=[RESEARCH]), dimse=False)
    gw.announcer.share_research = None
    await gw.intake.store(ct_study[0].read_bytes(), RESEARCH, source="dimse:CT@127.0.0.1")
    await eventually(lambda: [r for r in gw.announcer.driver.records() if r.attempts], "a failed attempt")
    [record] = gw.announcer.driver.records()
    assert "research shares are unavailable" in record.last_error
    assert gw.shared.calls == []
