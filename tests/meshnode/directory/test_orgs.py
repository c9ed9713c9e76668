"""The portal's organisation list (meshnode.directory.orgs.OrgList): fetched once per MAX_AGE_S, the last
verified list kept while the directory is down, a code it lacks looked for again (not on every key)."""

from __future__ import annotations

import pytest

from meshnode.directory.client import DirectoryOrg
from meshnode.directory.orgs import MAX_AGE_S, MAX_MATCHES, RECHECK_S, OrgList
from protocol.errors import UnavailableError


class Directory:
    def __init__(self) -> None:
        self.orgs = [DirectoryOrg("RGT", "Guy's and St Thomas'"), DirectoryOrg("RXX", "Royal Example")]
        self.up = True
        self.calls = 0

    async def list_orgs(self) -> list[DirectoryOrg]:
        self.calls += 1
        if not self.up:
            raise UnavailableError("directory down (test)")
        return list(self.orgs)


async def test_cached_refreshed_and_kept_while_the_directory_is_down() -> None:
    directory, now = Directory(), [1000.0]
    orgs = OrgList(directory.list_orgs, lambda: now[0], own_org="RGT")
    assert [o.code for o in await orgs.search("r")] == ["RXX"]  # own organisation left out
    assert [o.code for o in await orgs.search("royal")] == ["RXX"] and directory.calls == 1
    directory.orgs.append(DirectoryOrg("RTH", "Oxford"))
    directory.up = False
    now[0] += MAX_AGE_S
    assert [o.code for o in await orgs.search("r")] == ["RXX"]  # the last verified list, not an error
    assert directory.calls == 2
    assert await orgs.search("r") and directory.calls == 2  # not asked again on every key while down
    directory.up = True
    now[0] += RECHECK_S
    assert await orgs.find("RTH") == DirectoryOrg("RTH", "Oxford")  # a new organisation: looked for again
    assert await orgs.find("RZZ") is None and directory.calls == 3  # the list is fresh: not fetched again


async def test_never_fetched_and_directory_down_is_unavailable() -> None:
    directory = Directory()
    directory.up = False
    with pytest.raises(UnavailableError):
        await OrgList(directory.list_orgs, lambda: 0.0).search("R")


async def test_matches_are_bounded() -> None:
    directory = Directory()
    directory.orgs = [DirectoryOrg(f"R{i:03d}", f"Trust {i}") for i in range(100)]
    assert len(await OrgList(directory.list_orgs, lambda: 0.0).search("")) == MAX_MATCHES


async def test_an_organisation_that_joined_since_is_found_by_the_next_search() -> None:
    directory, now = Directory(), [0.0]
    orgs = OrgList(directory.list_orgs, lambda: now[0])
    assert await orgs.search("oxford") == [] and directory.calls == 1
    directory.orgs.append(DirectoryOrg("RTH", "Oxford"))
    assert await orgs.search("oxford") == [] and directory.calls == 1  # not on every key
    now[0] += RECHECK_S
    assert await orgs.search("oxford") == [DirectoryOrg("RTH", "Oxford")] and directory.calls == 2
    assert await orgs.search("royal") and directory.calls == 2  # found: the list is not fetched again
