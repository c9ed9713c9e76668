"""The viewer's committed assets and its page policy (fast checks; the browser test is
tests/e2e/test_portal_viewer.py, the rebuild check scripts/check_viewer_build.sh)."""

from __future__ import annotations

import re

from meshnode.web.ui import CONTENT_TYPES, CSP, PAGE_CSP, _static

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
