"""Where the patient pages (meshnode.web.patient_web) are served, behind their rate limit.

[patient_access] listen set (PatientAccessConfig.own_listener): a listener of their own, with its own WebApp
holding only the /p/ routes (anything else, /ui/, /dicomweb, /metrics, /health, answers 404), its own TLS
files, and its URL in patient-http.json in the node directory; the [http] listener then has no /p/ routes.
Otherwise the /p/ routes are added to the [http] app. Either way every request under /p/ passes the
per-address limiter first (meshnode.web.rate_limit; an IPv6 /64 is one client), with the listener's trusted
proxies: the own listener's [patient_access] trusted_proxies, or on the shared listener [http]'s (check_shared
refuses a [patient_access] list that differs from [http]'s: one list of proxies per listener).

Off localhost a listener serving /p/ needs TLS (tls_certificate, tls_key) or a TLS-terminating reverse proxy
named in trusted_proxies, and then an https:// public_url (the cookie's Secure flag follows it): a session
cookie and a one-time code must not cross the internet in clear (check_exposure, check_shared).

Every answer under /p/ (errors and the 429 too) says it may not be framed (X-Frame-Options, a CSP with
frame-ancestors 'none' unless the page set its own) and opens no window for another origin
(Cross-Origin-Opener-Policy: same-origin): PATIENT_HEADERS.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import trio
from starlette.types import ASGIApp

from meshnode.patient.config import PatientAccessConfig
from meshnode.web.app import PATIENT_PREFIX, AuditFn, Route, WebApp
from meshnode.web.auth import Authenticator
from meshnode.web.config import HttpConfig
from meshnode.web.rate_limit import RateLimited, RateLimiter
from meshnode.web.server import serve_http
from protocol.errors import ConfigError

if TYPE_CHECKING:
    from trio_typing import TaskStatus

ENDPOINT_FILE = "patient-http.json"
#: set on every answer under /p/ unless the route set its own
PATIENT_HEADERS = {"x-frame-options": "DENY", "cross-origin-opener-policy": "same-origin",
                   "content-security-policy": "default-src 'none'; frame-ancestors 'none'; base-uri 'none'",
                   "x-content-type-options": "nosniff"}


def cost(path: str) -> float:
    """What a request costs of the per-minute budget: the viewer loads the bundle's files and asks for one
    instance per image, so those cost a tenth; everything else, the study metadata (every header of the
    study) and the ZIP included, costs 1."""
    if path.startswith(PATIENT_PREFIX + "static/"):
        return 0.1
    if path.startswith(PATIENT_PREFIX + "dicomweb/") and "/instances/" in path and not path.endswith("/metadata"):
        return 0.1
    return 1.0


def limited(app: ASGIApp, config: PatientAccessConfig, limiter: RateLimiter | None = None,
            http: HttpConfig | None = None) -> RateLimited:
    """`app` (the [http] app) with every request under /p/ counted per client ([patient_access]
    requests_per_minute), behind [http]'s trusted proxies when `http` is given (check_shared)."""
    chosen = limiter if limiter is not None else RateLimiter(config.requests_per_minute)
    proxies = http.proxy_networks if http is not None else config.proxy_networks
    return RateLimited(app, chosen, PATIENT_PREFIX, proxies, cost, PATIENT_HEADERS)


def listener_config(config: PatientAccessConfig) -> HttpConfig:
    """The own listener as an [http]-like config: its address, TLS files and trusted proxies; no public status
    or metrics (it has no such routes anyway)."""
    return HttpConfig(listen=config.listen, tls_certificate=config.tls_certificate, tls_key=config.tls_key,
                      public_status=False, public_metrics=False, public_url=config.public_url,
                      trusted_proxies=config.trusted_proxies, max_request_mb=1)


def _exposed(where: str, host: str, tls: bool, proxies: Sequence[str], public_url: str) -> None:
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if loopback or tls:
        return
    if not proxies:
        raise ConfigError(f"{where}: a listener off localhost serving the patient pages needs tls_certificate and "
                          "tls_key, or a TLS-terminating reverse proxy in trusted_proxies")
    if not public_url.startswith("https://"):
        raise ConfigError("patient_access.public_url: behind a reverse proxy the patient pages' public_url must be "
                          "https:// (the session cookie is Secure only then)")


def check_exposure(config: PatientAccessConfig) -> None:
    """ConfigError for an own listener off loopback with neither TLS nor a trusted (TLS-terminating) proxy, or
    behind a proxy with an http:// public_url."""
    host, _ = listener_config(config).host_port
    _exposed("patient_access.listen", host, bool(config.tls_certificate), config.trusted_proxies,
             config.public_url)


def check_shared(config: PatientAccessConfig, http: HttpConfig) -> None:
    """The /p/ routes on the [http] listener: ConfigError when [patient_access] trusted_proxies is set and is
    not [http]'s (the limiter and the app would believe different proxies), or when that listener is off
    loopback with neither TLS nor a proxy (or behind a proxy with an http:// public_url)."""
    if config.trusted_proxies and set(config.trusted_proxies) != set(http.trusted_proxies):
        raise ConfigError("patient_access.trusted_proxies: the patient pages are on the [http] listener, whose "
                          "trusted_proxies apply: leave this empty or make it the same list")
    host, _ = http.host_port
    _exposed("http.listen", host, bool(http.tls_certificate), http.trusted_proxies, config.public_url)


def public_app(routes: Sequence[Route], auth: Authenticator, config: PatientAccessConfig, audit: AuditFn,
               limiter: RateLimiter | None = None) -> RateLimited:
    """The own listener's app: only the patient routes, all behind the limiter."""
    outside = [r.path for r in routes if not r.path.startswith(PATIENT_PREFIX)]
    if outside:
        raise ValueError(f"the public listener serves only {PATIENT_PREFIX}: not {outside}")
    app = WebApp(list(routes), auth, listener_config(config), audit)
    chosen = limiter if limiter is not None else RateLimiter(config.requests_per_minute)
    return RateLimited(app, chosen, "/", config.proxy_networks, cost, PATIENT_HEADERS)


async def serve_patient_http(app: ASGIApp, config: PatientAccessConfig, home: Path, *,
                             task_status: TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
    """Listen on [patient_access] listen; write the URL to patient-http.json once bound."""
    check_exposure(config)
    await serve_http(app, listener_config(config), home, endpoint_file=ENDPOINT_FILE, what="patient pages",
                     task_status=task_status)

