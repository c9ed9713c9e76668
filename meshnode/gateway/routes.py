"""Routing rules: which organisations a study that arrives at the gateway is shared with.

A route is selected by the called AE title of a DIMSE association (a PACS
sends to AE `MESH_RGT` -> share with RGT) or by name (DICOMweb STOW-RS, from
its path or query). Studies that arrive on the node's own AE title, or on no
route, are stored locally and shared by hand (`meshnode share`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from protocol.deid import DeidProfile
from protocol.conflict import DEFAULT_POLICY, ConflictPolicy
from protocol.errors import MeshError
from protocol.manifest import Priority, Purpose
from protocol.schema import check_org_code

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
# PS3.5 6.2: AE titles are up to 16 characters of the default repertoire, no backslash or control characters.
_AE_RE = re.compile(r"^[ -\[\]-~]{1,16}$")

MIN_QUIET_PERIOD_S = 1
MAX_QUIET_PERIOD_S = 86400


class RouteError(MeshError):
    """A routing rule that is malformed, or a route asked for that does not exist."""

    code = 930
    name = "route-error"


def check_ae_title(value: str, what: str) -> str:
    """An AE title as configured or received: 1-16 printable characters, no backslash, not blank.

    Leading and trailing spaces are not significant (PS3.5 6.2) and are removed.
    """
    if not isinstance(value, str) or not _AE_RE.match(value) or not value.strip():
        raise RouteError(f"{what}: an AE title is 1-16 printable ASCII characters, no backslash (got {value!r})")
    return value.strip()


def check_route_name(value: str, what: str = "route name") -> str:
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise RouteError(f"{what}: 1-32 characters of a-z, 0-9, '-' and '_', starting with a letter or digit "
                         f"(got {value!r})")
    return value


@dataclass(frozen=True)
class Route:
    """Share what arrives on this route with `to`, at `priority`, for `purpose`, once quiet."""

    name: str
    to: tuple[str, ...]
    priority: Priority = Priority.ROUTINE
    purpose: Purpose = Purpose.CARE
    #: the called AE title that selects this route over DIMSE ("" : selectable by name only)
    called_ae: str = ""
    #: seconds without a new instance of a study before the study is announced
    quiet_period_s: int = 60
    #: de-identify (PS3.15 Annex E, these options): a de-identified copy is shared, never the original.
    #: Always set for purpose research (its project defaults to the route's name).
    deid: DeidProfile | None = None
    #: an instance whose SOP Instance UID is held here with other bytes (protocol.conflict; reject: a human decides)
    on_conflict: ConflictPolicy = DEFAULT_POLICY

    def __post_init__(self) -> None:
        check_route_name(self.name)
        if not self.to:
            raise RouteError(f"route {self.name}: 'to' needs at least one organisation")
        for org in self.to:
            try:
                check_org_code(org, f"route {self.name}: to")
            except MeshError as exc:
                raise RouteError(str(exc)) from None
        if len(set(self.to)) != len(self.to):
            raise RouteError(f"route {self.name}: an organisation is listed twice in 'to'")
        if self.called_ae:
            check_ae_title(self.called_ae, f"route {self.name}: called_ae")
        if not MIN_QUIET_PERIOD_S <= self.quiet_period_s <= MAX_QUIET_PERIOD_S:
            raise RouteError(f"route {self.name}: quiet_period_seconds must be in "
                             f"{MIN_QUIET_PERIOD_S}..{MAX_QUIET_PERIOD_S}")


class RouteTable:
    """Every configured route, looked up by name or by called AE title."""

    def __init__(self, routes: Iterable[Route] = ()) -> None:
        self._by_name: dict[str, Route] = {}
        self._by_ae: dict[str, Route] = {}
        for route in routes:
            if route.name in self._by_name:
                raise RouteError(f"two routes are named {route.name!r}")
            self._by_name[route.name] = route
            if route.called_ae:
                if route.called_ae in self._by_ae:
                    raise RouteError(f"routes {self._by_ae[route.called_ae].name!r} and {route.name!r} "
                                     f"share the called AE title {route.called_ae!r}")
                self._by_ae[route.called_ae] = route

    def __iter__(self) -> Iterator[Route]:
        return iter(self._by_name.values())

    def __len__(self) -> int:
        return len(self._by_name)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RouteTable) and list(self) == list(other)

    def __hash__(self) -> int:
        return hash(tuple(self))

    def by_name(self, name: str) -> Route:
        """The route called `name`; RouteError (naming the known ones) when there is none."""
        route = self._by_name.get(name)
        if route is None:
            known = ", ".join(sorted(self._by_name)) or "none configured"
            raise RouteError(f"no route named {name!r} (routes: {known})")
        return route

    def get(self, name: str) -> Route | None:
        return self._by_name.get(name)

    def by_called_ae(self, called_ae: str) -> Route | None:
        """The route a DIMSE association to `called_ae` selects, or None."""
        return self._by_ae.get(called_ae.strip())

    @property
    def called_ae_titles(self) -> frozenset[str]:
        return frozenset(self._by_ae)
