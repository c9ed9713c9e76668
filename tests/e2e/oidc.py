"""The real OpenID Connect provider the sign-on tests start (tests/e2e/oidc_provider.mjs on node-oidc-provider),
and a minimal "browser" (httpx with a cookie jar) that signs in through its development login pages."""

from __future__ import annotations

import json
import re
import subprocess
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "oidc_provider.mjs"
PROVIDER_MODULE = HERE.parents[1] / "tools" / "browser" / "node_modules" / "oidc-provider"
CLIENT_ID = "meshnode"
SECRET = "client-secret-of-the-test-node-0123456789"


@dataclass
class Provider:
    issuer: str
    process: subprocess.Popen[bytes]


@contextmanager
def oidc_provider(redirect: str) -> Iterator[Provider]:
    if not PROVIDER_MODULE.is_dir():
        raise AssertionError(f"{PROVIDER_MODULE} is missing: run `make npm-tools` (scripts/install-npm-tools.sh)")
    process = subprocess.Popen(["node", str(SCRIPT), "--client-id", CLIENT_ID, "--secret", SECRET,
                                "--redirect", redirect], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()  # the script prints its issuer once listening (or exits)
        if not line:
            raise AssertionError("the OpenID Connect provider did not start")
        yield Provider(str(json.loads(line)["issuer"]), process)
    finally:
        process.terminate()
        process.wait(10)


def sign_in_at_provider(authorize_url: str, login: str, redirect_prefix: str) -> str:
    """Follow the provider's pages as a browser would (login form of its devInteractions, consent given
    automatically) until it redirects to the node; returns that callback URL (with code and state)."""
    with httpx.Client(timeout=10, follow_redirects=False) as browser:
        url = authorize_url
        for _ in range(12):
            if url.startswith(redirect_prefix):
                return url
            response = browser.get(url)
            if response.status_code in (302, 303):
                url = urllib.parse.urljoin(url, response.headers["location"])
                continue
            form = re.search(r'<form[^>]*action="([^"]+)"', response.text)
            if response.status_code != 200 or form is None:
                raise AssertionError(f"unexpected provider page {response.status_code}: {response.text[:300]}")
            prompt = re.search(r'name="prompt" value="([a-z]+)"', response.text)
            fields = {"prompt": prompt[1] if prompt else "login", "login": login, "password": "anything"}
            posted = browser.post(urllib.parse.urljoin(url, form[1]), data=fields)
            if posted.status_code not in (302, 303):
                raise AssertionError(f"provider refused the form: {posted.status_code} {posted.text[:300]}")
            url = urllib.parse.urljoin(url, posted.headers["location"])
        raise AssertionError("no redirect back to the node")
