"""The scenario error: a malformed or inconsistent scenario, refused before any run starts."""

from __future__ import annotations

from protocol.errors import ConfigError


class ScenarioError(ConfigError):
    """A scenario file with an unknown key, a wrong type, an impossible value or a dangling reference,
    or a run that cannot use the scenario it was given.

    The message starts with the file and the dotted key (``five-trusts.toml: groups[2].up``) and says
    what is wrong. The scenario is read by protocol.config_reader, like every configuration file.
    """

    code = 910
    name = "scenario-error"
