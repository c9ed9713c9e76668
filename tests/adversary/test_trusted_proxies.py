"""Behind a TLS proxy every client's TCP peer is the proxy: with [http] trusted_proxies the client is the
right-most X-Forwarded-For hop that is not a listed proxy, so one person's failed sign-ins do not lock the
whole site out by address; without it (the default), or from a peer that is not listed, the header is
ignored (anyone can write it)."""

from __future__ import annotations

import ipaddress

import pytest

from meshnode.storage.users import MemoryUserStore
from meshnode.web.config import HttpConfig
from meshnode.web.http import forwarded_client
from meshnode.web.login_limit import PER_CLIENT
from protocol.config_reader import Table
from protocol.errors import ConfigError
from tests.meshnode.web.portal_app import cheap_hashing, make_portal

__all__ = ["cheap_hashing"]
PROXIES = [ipaddress.ip_network("10.0.0.5"), ipaddress.ip_network("fd00:1::/64")]


@pytest.mark.parametrize("peer, header, client", [
    ("10.0.0.5", ["203.0.113.7"], "203.0.113.7"),
    ("10.0.0.5", ["1.2.3.4, 203.0.113.7"], "203.0.113.7"),  # the client wrote 1.2.3.4: not believed
    ("10.0.0.5", ["1.2.3.4", "203.0.113.7, 10.0.0.5"], "203.0.113.7"),  # several headers, a proxy chain
    ("10.0.0.5", [], "10.0.0.5"),
    ("10.0.0.5", ["garbage, 203.0.113.7"], "203.0.113.7"),
    ("10.0.0.5", ["203.0.113.7, garbage"], "10.0.0.5"),  # the trusted proxy's own hop is not an address
    ("10.0.0.5", ["[2001:db8::1]:443"], "2001:db8::1"),
    ("fd00:1::9", ["198.51.100.2:5555"], "198.51.100.2"),
    ("::ffff:10.0.0.5", ["203.0.113.7"], "203.0.113.7"),
    ("203.0.113.9", ["10.9.9.9"], "203.0.113.9"),  # not a proxy: the header is the client's own claim
])
def test_the_client_behind_a_trusted_proxy(peer: str, header: list[str], client: str) -> None:
    assert forwarded_client(peer, header, PROXIES) == client
    assert forwarded_client(peer, header, []) == peer  # the default: never believed


@pytest.mark.usefixtures("cheap_hashing")
async def test_one_guesser_behind_the_proxy_does_not_lock_out_the_site() -> None:
    portal = make_portal(MemoryUserStore(), trusted_proxies=("10.0.0.5",))
    portal.user("alice", "clinician")
    for i in range(PER_CLIENT):
        reply = await portal.call("POST", "/ui/login", json={"user": f"u{i}", "password": "x", "code": "123456"},
                                  client="10.0.0.5", headers={"X-Forwarded-For": "203.0.113.66"})
        assert reply.status == 401
    blocked = await portal.call("POST", "/ui/login", json={"user": "u0", "password": "x", "code": "123456"},
                                client="10.0.0.5", headers={"X-Forwarded-For": "203.0.113.66"})
    assert blocked.status == 429
    portal.clock.now += 30
    ok = await portal.call("POST", "/ui/login", json={"user": "alice", "password": portal_password(),
                                                      "code": portal.code("alice")},
                           client="10.0.0.5", headers={"X-Forwarded-For": "198.51.100.20"})
    assert ok.status == 200
    refused = [e for e in portal.events if "refused" in e.detail]
    assert refused and all("203.0.113.66" in e.detail for e in refused)


def portal_password() -> str:
    from tests.meshnode.web.portal_app import PASSWORD
    return PASSWORD


def test_the_setting_is_checked() -> None:
    from meshnode.web.config import parse_http
    good = parse_http(Table({"http": {"listen": "127.0.0.1:8080", "trusted_proxies": ["10.0.0.5", "fd00::/8"]}}, ""))
    assert good.trusted_proxies == ("10.0.0.5", "fd00::/8")
    assert parse_http(Table({"http": {"listen": "127.0.0.1:8080"}}, "")).trusted_proxies == ()
    with pytest.raises(ConfigError, match="trusted_proxies"):
        parse_http(Table({"http": {"listen": "127.0.0.1:8080", "trusted_proxies": ["proxy.example"]}}, ""))
    assert HttpConfig(listen="x:1", trusted_proxies=("10.0.0.0/8",)).proxy_networks == \
        (ipaddress.ip_network("10.0.0.0/8"),)


def test_the_setting_survives_render() -> None:
    import tomllib

    from meshnode.web.config import parse_http
    config = HttpConfig(listen="127.0.0.1:8080", trusted_proxies=("10.0.0.5", "fd00::/8"))
    assert parse_http(Table(tomllib.loads(config.render()), "")) == config
