"""The directory's organisation list as the staff portal's type-ahead uses it: fetched (and verified) by
DirectoryClient.list_orgs, kept for MAX_AGE_S, searched by code or name. A search or a code that finds
nothing looks again if the list is RECHECK_S old (an organisation that joined since shows up at once).

While the directory cannot be reached the last list verified is used (a listing that was never fetched is
UnavailableError). A name or code the page sends back is checked against this list before a share: an
organisation the directory does not list is not one the node can announce to either.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio

from meshnode.directory.client import DirectoryOrg
from protocol.errors import MeshError, UnavailableError

log = logging.getLogger(__name__)

#: how long a fetched list is used before the next search fetches it again
MAX_AGE_S = 300.0
#: a code missing from the list is looked for again (once) if the list is at least this old
RECHECK_S = 10.0
#: at most this many matches per search
MAX_MATCHES = 20

ListFn = Callable[[], Awaitable[list[DirectoryOrg]]]


class OrgList:
    def __init__(self, fetch: ListFn, clock: Callable[[], float], *, own_org: str = "") -> None:
        self._fetch = fetch
        self._clock = clock
        self._own = own_org
        self._orgs: dict[str, DirectoryOrg] | None = None
        self._fetched_at = 0.0
        self._lock = trio.Lock()

    async def _refresh(self, older_than: float) -> dict[str, DirectoryOrg]:
        async with self._lock:
            if self._orgs is not None and self._clock() - self._fetched_at < older_than:
                return self._orgs  # another request refreshed it meanwhile
            try:
                listed = await self._fetch()
            except MeshError as exc:
                if self._orgs is None:
                    raise UnavailableError(f"the directory's organisation list cannot be fetched: {exc}") from None
                log.warning("directory organisation list not refreshed (%s); using the one from %.0f s ago",
                            exc.name, self._clock() - self._fetched_at)
                self._fetched_at = self._clock() - MAX_AGE_S + RECHECK_S  # try again soon, not on every key
                return self._orgs
            self._orgs = {o.code: o for o in listed if o.code != self._own}
            self._fetched_at = self._clock()
            return self._orgs

    async def orgs(self) -> dict[str, DirectoryOrg]:
        if self._orgs is not None and self._clock() - self._fetched_at < MAX_AGE_S:
            return self._orgs
        return await self._refresh(MAX_AGE_S)

    async def search(self, text: str) -> list[DirectoryOrg]:
        """Organisations whose code starts with `text` or whose name contains it (case ignored): codes that
        match first, then names, each in order."""
        needle = text.strip().casefold()
        found = _matches(await self.orgs(), needle)
        if not found and self._clock() - self._fetched_at >= RECHECK_S:  # one that joined since: look again
            found = _matches(await self._refresh(RECHECK_S), needle)
        return found

    async def find(self, code: str) -> DirectoryOrg | None:
        """The listed organisation with this code (the list fetched again once if it may be out of date)."""
        orgs = await self.orgs()
        if code not in orgs and self._clock() - self._fetched_at >= RECHECK_S:
            orgs = await self._refresh(RECHECK_S)
        return orgs.get(code)


def _matches(orgs: dict[str, DirectoryOrg], needle: str) -> list[DirectoryOrg]:
    by_code = [o for c, o in sorted(orgs.items()) if c.casefold().startswith(needle)]
    by_name = sorted((o for o in orgs.values() if needle in o.name.casefold() and o not in by_code),
                     key=lambda o: (o.name.casefold(), o.code))
    return (by_code + by_name)[:MAX_MATCHES]
