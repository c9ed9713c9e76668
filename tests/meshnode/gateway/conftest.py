"""Fixtures for the gateway tests: a small synthetic CT study, and gateways on real node stores."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import trio

from meshnode.dicom import synthetic
from meshnode.gateway.config import GatewayConfig
from tests.meshnode.gateway.harness import Gateway, config, start_gateway

GatewayFactory = Callable[..., Awaitable[Gateway]]


@pytest.fixture(scope="session")
def ct_study(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """A 6-slice 64x64 CT, explicit VR little endian."""
    return synthetic.generate_ct_study(tmp_path_factory.mktemp("ct") / "ct", slices=6, rows=64, columns=64, seed=11)


@pytest.fixture
async def gateways(tmp_path: Path) -> AsyncIterator[GatewayFactory]:
    """Start gateways (intake, announcer, DIMSE server on 127.0.0.1:0) on fresh node folders."""
    started: list[Gateway] = []
    async with trio.open_nursery() as nursery:

        async def make(gateway_config: GatewayConfig | None = None, *, name: str = "node",
                       dimse: bool = True, announce: bool = True) -> Gateway:
            gw = await start_gateway(nursery, tmp_path / name, gateway_config or config(), dimse=dimse,
                                     announce=announce)
            started.append(gw)
            return gw

        yield make
        nursery.cancel_scope.cancel()
    for gw in started:
        gw.state.close()
        gw.storage.close()
