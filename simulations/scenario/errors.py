"""The scenario error: a malformed or inconsistent scenario, refused before any run starts."""

from __future__ import annotations

from protocol.errors import MeshError


class ScenarioError(MeshError):
    """A scenario file with an unknown key, a wrong type, an impossible value or a dangling reference.

    The message starts with the dotted key (``groups[2].up``) and says what is wrong.
    """

    code = 910
    name = "scenario-error"
