"""A directory client for a node, built from its home folder, on a short-lived host."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from protocol.errors import ConfigError
from meshnode.directory.cache import DirectoryCache, FileRosterVersionStore
from meshnode.directory.client import DirectoryClient
from common.directory_transport import directory_peer_id, libp2p_transport
from meshnode.home import NodeHome
from common.p2p.host import running_host
from protocol.roster import RosterGuard


def roster_guard(home: NodeHome) -> RosterGuard:
    config = home.config()
    if not config.authority_keys:
        raise ConfigError(f"{home.config_path}: [trust] authority_keys is empty; add your authority's key ID")
    store = FileRosterVersionStore(home.state_dir / "roster-version")
    return RosterGuard(config.authority_keys, store, skew=config.clock_skew)


@asynccontextmanager
async def directory_session(home: NodeHome, *, timeout: float = 10.0) -> AsyncIterator[DirectoryClient]:
    config = home.config()
    if not config.directory:
        raise ConfigError(f"{home.config_path}: [directory] address is not set")
    key = home.signing_key()
    guard = roster_guard(home)
    async with running_host(key.seed, []) as host:
        yield DirectoryClient(
            libp2p_transport(host, config.directory, timeout=timeout),
            guard,
            DirectoryCache(home.directory_cache_dir),
            directory_peer_id=directory_peer_id(config.directory),
            skew=config.clock_skew,
        )
