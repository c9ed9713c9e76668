"""The viewer's committed assets and its page policy (fast checks; the browser test is
tests/e2e/test_portal_viewer.py, the rebuild check scripts/check_viewer_build.sh)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from meshnode.storage.audit import AuditEvent
from meshnode.storage.users import MemoryUserStore
from meshnode.web.app import WebApp, route
from meshnode.web.auth import Authenticator
from meshnode.web.config import HttpConfig
from meshnode.web.ui import CONTENT_TYPES, CSP, PAGE_CSP, Ui, _static
from tests.meshnode.web.asgi import call

ASSETS = ("viewer/viewer.js", "viewer/decodeImageFrameWorker.js", "viewer/codecs/charlswasm_decode.wasm",
          "viewer/codecs/openjpegwasm_decode.wasm", "viewer/codecs/libjpegturbowasm_decode.wasm",
          "viewer/codecs/openjphjs.wasm")


def test_viewer_csp_allows_webassembly_and_nothing_broader() -> None:
    policy = PAGE_CSP["viewer.html"]
    directives = dict(d.strip().split(" ", 1) for d in policy.split(";") if d.strip())
    assert directives["script-src"] == "'self' 'wasm-unsafe-eval'"
    assert directives["worker-src"] == "'self'"
    assert directives["img-src"] == "'self' data: blob:"
    assert "'unsafe-eval'" not in policy and "'unsafe-inline'" not in policy
    assert not re.search(r"https?:|\*", policy)
    # everything else is the portal's policy
    base = dict(d.strip().split(" ", 1) for d in CSP.split(";") if d.strip())
    assert {k: v for k, v in directives.items() if k not in ("script-src", "worker-src", "img-src")} == \
        {k: v for k, v in base.items() if k not in ("script-src", "img-src")}


def test_the_viewer_is_served_from_the_package_with_no_network_reference() -> None:
    page = _static("viewer.html")
    assert page is not None
    assert not re.search(rb"(src|href)=\"(https?:)?//", page)
    for name in ASSETS:
        data = _static(name)
        assert data, name
        assert CONTENT_TYPES["." + name.rsplit(".", 1)[1]]
    bundle = _static("viewer/viewer.js") or b""
    assert b"sourceMappingURL" not in bundle
    assert b"wasmBasePath" in bundle or b"/ui/static/viewer/codecs/" in bundle
    assert (_static("viewer/codecs/charlswasm_decode.wasm") or b"")[:4] == b"\0asm"


async def test_static_files_are_revalidated_by_etag_and_everything_else_stays_no_store() -> None:
    """The viewer's megabytes are kept by the browser and revalidated (a 304 without a body); a page and
    every other answer stay no-store."""
    ui = object.__new__(Ui)  # only its file serving: no node behind it
    ui._files = {}

    async def audit(event: AuditEvent) -> None:
        """Nothing to record."""

    app = WebApp([route("GET", "/ui/static/{name:path}", ui._asset, "public", "ui-static"),
                  route("GET", "/ui/{page}", ui._page_file, "public", "ui-page")],
                 Authenticator(MemoryUserStore()), HttpConfig(listen="127.0.0.1:0"), audit)
    first = await call(app, "GET", "/ui/static/viewer/viewer.js")
    assert first.status == 200 and first.body == _static("viewer/viewer.js")
    assert first.headers["cache-control"] == "private, no-cache" and first.headers["etag"]
    again = await call(app, "GET", "/ui/static/viewer/viewer.js", headers={"If-None-Match": first.headers["etag"]})
    assert again.status == 304 and again.body == b""
    other = await call(app, "GET", "/ui/static/viewer/viewer.js", headers={"If-None-Match": '"stale"'})
    assert other.status == 200 and other.body == first.body
    page = await call(app, "GET", "/ui/viewer")
    assert page.status == 200 and page.headers["cache-control"] == "no-store"
    for path in ("/ui/static/../node.db", "/ui/static/.hidden.js", "/ui/static/viewer/nothing.js", "/ui/nothing"):
        assert (await call(app, "GET", path)).status == 404, path


async def test_the_decode_worker_runs_under_its_own_strict_policy() -> None:
    """A worker's policy is its script response's, not the page's (review 2 finding 8): every script file
    is served with one that allows this origin's scripts, WebAssembly and fetches to this origin only."""
    ui = object.__new__(Ui)
    ui._files = {}

    async def audit(event: AuditEvent) -> None:
        """Nothing to record."""

    app = WebApp([route("GET", "/ui/static/{name:path}", ui._asset, "public", "ui-static")],
                 Authenticator(MemoryUserStore()), HttpConfig(listen="127.0.0.1:0"), audit)
    for path in ("/ui/static/viewer/decodeImageFrameWorker.js", "/ui/static/viewer/viewer.js",
                 "/ui/static/send.js"):
        r = await call(app, "GET", path)
        assert r.status == 200, path
        policy = r.headers["content-security-policy"]
        directives = dict(d.strip().split(" ", 1) for d in policy.split(";") if d.strip())
        assert directives == {"default-src": "'none'", "script-src": "'self' 'wasm-unsafe-eval'",
                              "connect-src": "'self'"}, path


@pytest.mark.skipif(shutil.which("node") is None, reason="needs Node.js (the viewer's build needs it too)")
def test_the_viewer_does_not_trust_number_of_frames() -> None:
    """Review 2 finding 7: the viewer's seriesOf (viewer/src/main.js, run as it is under Node.js) caps the
    frames of one instance at 10,000 whatever NumberOfFrames says, and inline native pixel data bounds them."""
    script = r"""
const { readFileSync } = require("node:fs");
const src = readFileSync(process.argv[1], "utf8");
const body = src.slice(src.indexOf("function value("), src.indexOf("// -- the stack"));
globalThis.location = { origin: "https://node.example" };
const seriesOf = new Function(body + "; return seriesOf;")();
const item = (frames, extra) => ({ "0020000E": { vr: "UI", Value: ["1.2.3"] },
  "00080018": { vr: "UI", Value: ["1.2.3." + frames] }, "00280008": { vr: "IS", Value: [frames] }, ...extra });
const bomb = seriesOf([item(2e8, {})], "1.2")[0].imageIds.length;
const inline = { "00020010": { vr: "UI", Value: ["1.2.840.10008.1.2.1"] }, "00280010": { vr: "US", Value: [2] },
  "00280011": { vr: "US", Value: [2] }, "00280100": { vr: "US", Value: [8] },
  "7FE00010": { vr: "OB", InlineBinary: Buffer.alloc(12).toString("base64") } };
const bounded = seriesOf([item(500, inline)], "1.2")[0].imageIds.length;
const honest = seriesOf([item(7, {})], "1.2")[0].imageIds.length;
console.log(JSON.stringify([bomb, bounded, honest]));
"""
    main = Path(__file__).resolve().parents[3] / "viewer" / "src" / "main.js"
    out = subprocess.run(["node", "-e", script, str(main)], capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(out.stdout) == [10000, 3, 7]  # 12 bytes of 2 x 2 x 8-bit frames: 3 frames at most
