"""Where the patient pages (meshnode.web.patient_web) are served, behind their rate limit.

[patient_access] listen set (PatientAccessConfig.own_listener): a listener of their own, with its own WebApp
holding only the /p/ routes (anything else, /ui/, /dicomweb, /metrics, /health, answers 404), its own TLS
files, and its URL in patient-http.json in the node directory; the [http] listener then has no /p/ routes.
Otherwise the /p/ routes are added to the [http] app. Either way every request under /p/ passes the
per-address limiter first (meshnode.web.rate_limit), with [patient_access] trusted_proxies.

Off localhost the own listener needs TLS (tls_certificate, tls_key) or a TLS-terminating reverse proxy named
in trusted_proxies: a session cookie and a one-time code must not cross the internet in clear.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import trio
from starlette.types import ASGIApp

from meshnode.patient.config import PatientAccessConfig
from meshnode.web.app import AuditFn, Route, WebApp
from meshnode.web.auth import Authenticator
from meshnode.web.config import HttpConfig
from meshnode.web.rate_limit import RateLimited, RateLimiter
from meshnode.web.server import serve_http
from protocol.errors import ConfigError

if TYPE_CHECKING:
    from trio_typing import TaskStatus

ENDPOINT_FILE = "patient-http.json"
PREFIX = "/p/"
#: what a request costs of the per-minute budget: the viewer asks for one image per request and loads the
#: bundle's files, so those cost a tenth (every other request costs 1)
COSTS: tuple[tuple[str, float], ...] = (("/p/static/", 0.1), ("/p/dicomweb/", 0.1))


def limited(app: ASGIApp, config: PatientAccessConfig, limiter: RateLimiter | None = None) -> RateLimited:
    """`app` with every request under /p/ counted per client address ([patient_access] requests_per_minute)."""
    chosen = limiter if limiter is not None else RateLimiter(config.requests_per_minute)
    return RateLimited(app, chosen, PREFIX, config.proxy_networks, COSTS)


def listener_config(config: PatientAccessConfig) -> HttpConfig:
    """The own listener as an [http]-like config: its address, TLS files and trusted proxies; no public status
    or metrics (it has no such routes anyway)."""
    return HttpConfig(listen=config.listen, tls_certificate=config.tls_certificate, tls_key=config.tls_key,
                      public_status=False, public_metrics=False, public_url=config.public_url,
                      trusted_proxies=config.trusted_proxies, max_request_mb=1)


def check_exposure(config: PatientAccessConfig) -> None:
    """ConfigError for an own listener off loopback with neither TLS nor a trusted (TLS-terminating) proxy."""
    host, _ = listener_config(config).host_port
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback and not config.tls_certificate and not config.trusted_proxies:
        raise ConfigError("patient_access.listen: a listener off localhost needs tls_certificate and tls_key, or "
                          "a TLS-terminating reverse proxy in trusted_proxies")


def public_app(routes: Sequence[Route], auth: Authenticator, config: PatientAccessConfig, audit: AuditFn,
               limiter: RateLimiter | None = None) -> RateLimited:
    """The own listener's app: only the patient routes, all behind the limiter."""
    outside = [r.path for r in routes if not r.path.startswith(PREFIX) and r.path != "/p"]
    if outside:
        raise ValueError(f"the public listener serves only {PREFIX}: not {outside}")
    app = WebApp(list(routes), auth, listener_config(config), audit)
    chosen = limiter if limiter is not None else RateLimiter(config.requests_per_minute)
    return RateLimited(app, chosen, "/", config.proxy_networks, COSTS)


async def serve_patient_http(app: ASGIApp, config: PatientAccessConfig, home: Path, *,
                             task_status: TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
    """Listen on [patient_access] listen; write the URL to patient-http.json once bound."""
    check_exposure(config)
    await serve_http(app, listener_config(config), home, endpoint_file=ENDPOINT_FILE, what="patient pages",
                     task_status=task_status)
