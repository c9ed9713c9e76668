"""Network-namespace NAT tests (marker `netns`, `make test-netns`): real namespaces, iptables NAT, real nodes.

They need root, `ip`, `tc` and `iptables` (tcpdump for the capture test); without them they skip, saying
which is missing. CI runs as root with the Makefile's SYSTEM_DEPS installed, and `.ci/run` sets
MESH_NETNS_REQUIRED=1: then a missing prerequisite fails the run instead of skipping it.
"""

from __future__ import annotations

import os
import shutil

import pytest

from simulations.emulation.shaping import nat_problem

REQUIRED_ENV = "MESH_NETNS_REQUIRED"


def require(problem: str | None) -> None:
    """Skip (or fail, under MESH_NETNS_REQUIRED=1) when a prerequisite is missing."""
    if problem is None:
        return
    if os.environ.get(REQUIRED_ENV) == "1":
        pytest.fail(f"{REQUIRED_ENV}=1 but the namespace NAT tests cannot run here: {problem}")
    pytest.skip(f"the namespace NAT tests need root, ip, tc and iptables: {problem}")


@pytest.fixture(scope="session")
def netns_ok() -> None:
    require(nat_problem())


@pytest.fixture(scope="session")
def tcpdump_ok(netns_ok: None) -> None:
    require(None if shutil.which("tcpdump") else "`tcpdump` is not installed")
