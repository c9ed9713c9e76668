"""The gateway's node.toml sections: valid ones round-trip, every malformed one is refused, naming the key."""

from __future__ import annotations

import pytest

from protocol.errors import ConfigError
from meshnode.config import NodeConfig, parse_config
from meshnode.gateway.config import Caller, DicomPeer, DimseSettings, GatewayConfig, PacsDestination
from meshnode.gateway.routes import Route, RouteError, RouteTable, check_ae_title
from protocol.manifest import Priority, Purpose

BASE = NodeConfig(org="RGT").render()

FULL = BASE + """
[[caller]]
ae_title = "RGT_PACS"
hosts = ["10.20.30.40", "pacs.example.nhs.uk"]
allow = ["store", "find"]

[[route]]
name = "stroke"
called_ae = "MESH_STROKE"
to = ["RJ1", "RAJ"]
priority = "urgent"
quiet_period_seconds = 20

[[route]]
name = "research"
to = ["RX1"]
purpose = "research"

[[move_destination]]
ae_title = "RGT_PACS"
host = "10.20.30.40"
port = 104

[[pacs]]
name = "main"
ae_title = "RGT_PACS"
host = "10.20.30.40"
port = 104
from_orgs = ["RJ1"]
retry_max_seconds = 60
"""


def test_defaults_render_and_parse_back() -> None:
    config = parse_config(BASE)
    assert config == NodeConfig(org="RGT")
    assert config.gateway.dimse == DimseSettings() and not config.gateway.dimse.enabled
    assert "[[route]]" in BASE and "# [[pacs]]" in BASE  # commented examples for the operator


def test_full_gateway_configuration() -> None:
    gw = parse_config(FULL).gateway
    assert gw.callers == (Caller("RGT_PACS", ("10.20.30.40", "pacs.example.nhs.uk"), frozenset({"store", "find"})),)
    stroke = gw.routes.by_called_ae("MESH_STROKE")
    assert stroke == Route("stroke", ("RJ1", "RAJ"), Priority.URGENT, Purpose.CARE, "MESH_STROKE", 20)
    assert gw.routes.by_name("research").called_ae == "" and gw.routes.by_name("research").quiet_period_s == 60
    assert gw.move_destination("RGT_PACS") == DicomPeer("RGT_PACS", "10.20.30.40", 104)
    assert gw.pacs == (PacsDestination("main", "RGT_PACS", "10.20.30.40", 104, "", ("RJ1",), 60, 5),)
    assert gw.caller("RGT_PACS") is not None and gw.caller("NOBODY") is None


def test_a_configured_gateway_renders_back_to_the_same_config() -> None:
    config = parse_config(FULL)
    assert parse_config(config.render()) == config


def test_route_lookup_errors_name_the_known_routes() -> None:
    table = RouteTable([Route("rgt", ("RGT",), called_ae="MESH_RGT")])
    with pytest.raises(RouteError, match="no route named 'nope' \\(routes: rgt\\)"):
        table.by_name("nope")
    assert table.by_called_ae(" MESH_RGT ") is not None and table.by_called_ae("OTHER") is None


@pytest.mark.parametrize("extra, message", [
    ("[dimse]\nenabled = true\n", "declare .* twice"),  # a second [dimse] table is a TOML error
    ("[[route]]\nname = \"x\"\nto = [\"RJ1\"]\nbogus = 1\n", "route\\[0\\].bogus: unknown key \\(known: called_ae, name, on_conflict, priority, purpose"),
    ("[[caller]]\nae_title = \"A\"\nallowed = [\"store\"]\n", "caller\\[0\\].allowed: unknown key \\(known: ae_title, allow, hosts\\)"),
    ("[[pacs]]\nname = \"m\"\nae_title = \"P\"\nhost = \"h\"\nport = 104\nretry = 1\n", "unknown key"),
    ("[route]\nname = \"x\"\n", "array of tables"),
    ("[[route]]\nname = \"x\"\nto = []\n", "at least one organisation"),
    ("[[route]]\nname = \"x\"\nto = [\"rj1\"]\n", "organisation code"),
    ("[[route]]\nname = \"x\"\nto = [\"RJ1\", \"RJ1\"]\n", "listed twice"),
    ("[[route]]\nname = \"X Y\"\nto = [\"RJ1\"]\n", "route\\[0\\].name: 1-32 characters"),
    ("[[route]]\nname = \"x\"\nto = [\"RJ1\"]\npriority = \"asap\"\n", "asap"),
    ("[[route]]\nname = \"x\"\nto = [\"RJ1\"]\nquiet_period_seconds = 0\n", "quiet_period_seconds"),
    ("[[route]]\nname = \"x\"\nto = [\"RJ1\"]\ncalled_ae = \"THIS_TITLE_IS_TOO_LONG\"\n", "AE title"),
    ("[[route]]\nname = \"x\"\nto = [\"RJ1\"]\ncalled_ae = \"BACK\\\\SLASH\"\n", "AE title"),
    ("[[route]]\nname = \"x\"\nto = [\"RJ1\"]\ncalled_ae = \"MESHNODE\"\n", "own \\[dimse\\] ae_title"),
    ("[[route]]\nname = \"x\"\nto = [\"RJ1\"]\n[[route]]\nname = \"x\"\nto = [\"RAJ\"]\n", "two routes are named"),
    ("[[route]]\nname = \"x\"\nto = [\"RJ1\"]\ncalled_ae = \"A\"\n[[route]]\nname = \"y\"\nto = [\"RAJ\"]\n"
     "called_ae = \"A\"\n", "share the called AE title"),
    ("[[caller]]\nae_title = \"A\"\nhosts = [\"http://x\"]\n", "not an IP address or host name"),
    ("[[caller]]\nae_title = \"A\"\nallow = [\"delete\"]\n", "caller\\[0\\].allow: unknown value\\(s\\) \\['delete'\\]; expected some of"),
    ("[[caller]]\nae_title = \"A\"\n[[caller]]\nae_title = \"A\"\n", "listed twice"),
    ("[[move_destination]]\nae_title = \"A\"\nhost = \"10.0.0.1\"\n", "move_destination\\[0\\].port: required key is missing"),
    ("[[move_destination]]\nae_title = \"A\"\nhost = \"10.0.0.1\"\nport = 70000\n", "move_destination\\[0\\].port: 70000 is outside 1..65535"),
    ("[[pacs]]\nname = \"m\"\nae_title = \"P\"\nhost = \"h\"\nport = true\n", "pacs\\[0\\].port: expected an integer in 1..65535, got a boolean"),
    ("[[pacs]]\nname = \"m\"\nae_title = \"P\"\nhost = \"h\"\nport = 104\n[[pacs]]\nname = \"m\"\n"
     "ae_title = \"Q\"\nhost = \"h\"\nport = 105\n", "used twice"),
    ("[[caller]]\nae_title = 5\n", "caller\\[0\\].ae_title: expected a string, got an integer"),
    ("[[caller]]\nae_title = \"A\"\nhosts = \"10.0.0.1\"\n", "caller\\[0\\].hosts: expected a list of strings"),
    ("[[pacs]]\nname = \"m\"\nae_title = \"P\"\nhost = \"h\"\nport = 104\nfrom_orgs = [\"rj1\"]\n",
     "pacs\\[0\\].from_orgs\\[0\\]: organisation code"),
    ("[[pacs]]\nname = \"m\"\nae_title = \"P\"\nhost = \"h\"\nport = 104\nmax_attempts = 1001\n",
     "pacs\\[0\\].max_attempts: 1001 is outside 1..1000"),
    ("[[route]]\nname = \"x\"\nto = \"RJ1\"\n", "route\\[0\\].to: expected a list of strings"),
    ("[[pacs]]\nname = \"m\"\nae_title = \"P\"\nhost = \"h\"\nport = 104\nreport_forward = \"yes\"\n",
     "pacs\\[0\\].report_forward: expected true or false"),
])
def test_bad_gateway_settings_are_refused_with_the_key_named(extra: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(BASE + "\n" + extra)


@pytest.mark.parametrize("key, value, message", [
    ("enabled", "1", "dimse.enabled: expected true or false, got an integer"),
    ("port", "-1", "dimse.port: -1 is outside 0..65535"),
    ("ae_title", '""', "AE title"),
    ("host", '"not a host!"', "host"),
    ("max_pdu_bytes", "100", "max_pdu_bytes"),
    ("quiet_period_seconds", "999999", "quiet_period_seconds"),
])
def test_bad_dimse_settings(key: str, value: str, message: str) -> None:
    lines = [f"{key} = {value}" if line.split("=")[0].strip() == key else line for line in BASE.splitlines()]
    with pytest.raises(ConfigError, match=message):
        parse_config("\n".join(lines))


def test_ae_titles_are_trimmed_and_checked() -> None:
    assert check_ae_title(" PACS ", "x") == "PACS"
    for bad in ("", "   ", "A" * 17, "TAB\tBED", "é"):
        with pytest.raises(RouteError):
            check_ae_title(bad, "x")


def test_gateway_config_defaults_are_usable_without_a_file() -> None:
    config = GatewayConfig()
    assert len(config.routes) == 0 and config.dimse.max_instance_bytes == 2048 * 1024 * 1024


def test_oversized_gateway_arrays_are_refused() -> None:
    callers = "".join(f'[[caller]]\nae_title = "A{i}"\n' for i in range(10_001))
    with pytest.raises(ConfigError, match="^node.toml: caller: 10001 items, more than the 10000 allowed"):
        parse_config(BASE + "\n" + callers)
    hosts = "[[caller]]\nae_title = \"A\"\nhosts = [" + ", ".join(['"10.0.0.1"'] * 10_001) + "]\n"
    with pytest.raises(ConfigError, match="caller\\[0\\].hosts: 10001 items"):
        parse_config(BASE + "\n" + hosts)


def test_report_forward_is_on_unless_turned_off_and_renders_back() -> None:
    pacs = "[[pacs]]\nname = \"m\"\nae_title = \"P\"\nhost = \"h\"\nport = 104\n"
    assert parse_config(BASE + "\n" + pacs).gateway.pacs[-1].report_forward is True
    off = parse_config(BASE + "\n" + pacs + "report_forward = false\n")
    assert off.gateway.pacs[-1].report_forward is False
    assert parse_config(off.render()).gateway.pacs == off.gateway.pacs
