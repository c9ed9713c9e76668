"""The portal's viewer (Cornerstone3D, bundled in meshnode/web/static/viewer/) in a real headless Chromium over a
real node's WADO-RS.

Org A shares one study with org B; B's inbox row links to the viewer. The study has three series whose pixels are a known pattern of 8x8 blocks (each block one value, different
per image): uncompressed CT (signed, rescale intercept -1024), the same as JPEG-LS lossless (decoded by the
CharLS WebAssembly codec in the browser), and one multi-frame Enhanced CT instance as RLE Lossless. The test
sets a window through the page's controls and reads the canvas back: every block centre must show the stored
value mapped through the modality LUT and that window (within 2 of 255 grey levels), at the block's place in
the image (the image fitted to the canvas, centred). It scrolls (keyboard, slider) and checks the next image.
Hostile: a user without the read permission and a visitor with no session get no images (403/401 from WADO-RS
and a clear message in the page), a study the node does not hold says so, a series description holding HTML
is shown as text.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import gdcm  # type: ignore[import-untyped]
import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGLSLossless, generate_uid
from selenium import webdriver
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.actions.wheel_input import ScrollOrigin
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from meshnode.demo.mesh import MeshDemo
from meshnode.demo.workspace import Workspace
from meshnode.dicom import synthetic
from tests.e2e.browser import assert_accessible, screenshot, wait
from tests.e2e.web import add_user, enable_http, http_url

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROWS, COLUMNS, BLOCK = 48, 64, 8
INTERCEPT = -1024
#: the window the test sets (width, centre) and its linear VOI range (PS3.3 C.11.2.1.2, as Cornerstone maps it)
WIDTH, CENTRE = 1200, 200
#: the window set for the 8-bit JPEG baseline series
WINDOW8 = (256, 128)
XSS = '<img src=x onerror="window.__xss=1">CHEST & <b>bold</b>'


def pattern(k: int) -> np.ndarray:
    """HU of image k: block (by, bx) holds (by * 8 + bx) * 18 - 300 + 40 * k (neighbouring blocks differ by 3.8
    grey levels in the test's window, neighbouring images by 8.5: more than the tolerance of 2)."""
    by, bx = np.mgrid[0:ROWS, 0:COLUMNS] // BLOCK
    values: np.ndarray = ((by * (COLUMNS // BLOCK) + bx) * 18 - 300 + 40 * k).astype(np.int16)
    return values


def pattern8(k: int) -> np.ndarray:
    """Stored values (8-bit, no rescale) of image k of the JPEG baseline series: block b holds 4 b + 10 + 20 k."""
    by, bx = np.mgrid[0:ROWS, 0:COLUMNS] // BLOCK
    values: np.ndarray = ((by * (COLUMNS // BLOCK) + bx) * 4 + 10 + 20 * k).astype(np.uint8)
    return values


def display(value: float, window: tuple[int, int]) -> float:
    width, centre = window
    lower = centre - 0.5 - (width - 1) / 2
    upper = centre - 0.5 + (width - 1) / 2
    return float(np.clip((value - lower) / (upper - lower), 0, 1) * 255)


def gdcm_compress(src: Path, dst: Path, syntax: int) -> None:
    """Re-encode a file with GDCM (JPEG 2000 lossless, JPEG lossless SV1, JPEG baseline)."""
    reader = gdcm.ImageReader()
    reader.SetFileName(str(src))
    if not reader.Read():
        raise RuntimeError(f"GDCM cannot read {src}")
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(syntax))
    change.SetInput(reader.GetImage())
    if not change.Change():
        raise RuntimeError(f"GDCM cannot encode {src} as {syntax}")
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(dst))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    if not writer.Write():
        raise RuntimeError(f"GDCM cannot write {dst}")


def new_series(ds: pydicom.Dataset, series_uid: str, number: int) -> None:
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = number
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID


def make_study(root: Path) -> tuple[str, dict[str, str]]:
    """Three series in one study; returns the study UID and {kind: series UID}."""
    files = synthetic.generate_ct_study(root / "plain", slices=3, rows=ROWS, columns=COLUMNS, seed=71)
    study = str(pydicom.dcmread(files[0]).StudyInstanceUID)
    series: dict[str, str] = {}
    for k, path in enumerate(sorted(files)):
        ds = pydicom.dcmread(path)
        ds.PixelData = (pattern(k).astype(np.int32) - INTERCEPT).astype(np.int16).tobytes()
        ds.InstanceNumber = k + 1
        ds.save_as(path, enforce_file_format=True)
        series["plain"] = str(ds.SeriesInstanceUID)
    jls = root / "plain" / "jpegls"
    jls.mkdir()
    series["jpegls"] = generate_uid()
    for k, path in enumerate(sorted(files)):
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID = series["jpegls"]
        ds.SeriesNumber = 2
        ds.SeriesDescription = XSS
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.PixelRepresentation = 0  # unsigned stored values (HU + 1024 > 0)
        stored = (pattern(k).astype(np.int32) - INTERCEPT).astype(np.uint16)
        ds.PixelData = stored.tobytes()
        ds.compress(JPEGLSLossless, stored, encoding_plugin="pyjpegls", generate_instance_uid=False)
        ds.save_as(jls / f"jls_{k}.dcm", enforce_file_format=True)
    for kind, number, syntax in (("jpeg2000", 4, gdcm.TransferSyntax.JPEG2000Lossless),
                                 ("jpeg-lossless", 5, gdcm.TransferSyntax.JPEGLosslessProcess14_1)):
        series[kind] = generate_uid()
        (root / "plain" / kind).mkdir()
        for k, path in enumerate(sorted(files)):
            ds = pydicom.dcmread(path)
            new_series(ds, series[kind], number)
            ds.SeriesDescription = kind
            ds.save_as(root / f"{kind}-{k}.dcm", enforce_file_format=True)
            gdcm_compress(root / f"{kind}-{k}.dcm", root / "plain" / kind / f"{k}.dcm", syntax)
    series["jpeg-baseline"] = generate_uid()
    (root / "plain" / "jpeg-baseline").mkdir()
    for k, path in enumerate(sorted(files)):
        ds = pydicom.dcmread(path)
        new_series(ds, series["jpeg-baseline"], 6)
        ds.SeriesDescription = "jpeg-baseline"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.RescaleIntercept, ds.RescaleSlope, ds.WindowCenter, ds.WindowWidth = "0", "1", "128", "256"
        for tag in ("SmallestImagePixelValue", "LargestImagePixelValue"):
            if tag in ds:
                delattr(ds, tag)
        ds.PixelData = pattern8(k).tobytes()
        ds.save_as(root / f"baseline-{k}.dcm", enforce_file_format=True)
        gdcm_compress(root / f"baseline-{k}.dcm", root / "plain" / "jpeg-baseline" / f"{k}.dcm",
                      gdcm.TransferSyntax.JPEGBaselineProcess1)
    # one JPEG-LS instance whose codestream is garbage (a well-formed file around it)
    series["corrupt"] = generate_uid()
    ds = pydicom.dcmread(sorted(files)[0])
    new_series(ds, series["corrupt"], 8)
    ds.SeriesDescription = "corrupt"
    ds.PixelRepresentation = 0
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xf7" + bytes(range(256)) * 4])
    ds.file_meta.TransferSyntaxUID = JPEGLSLossless
    (root / "plain" / "corrupt").mkdir()
    ds.save_as(root / "plain" / "corrupt" / "0.dcm", enforce_file_format=True)
    frames = synthetic.generate_multiframe(root / "plain" / "multi", frames=3, rows=ROWS, columns=COLUMNS,
                                           seed=71, study_uid=study, series_number=3, compressed=False)
    ds = pydicom.dcmread(frames[0])
    volume = np.stack([pattern(3 + f).astype(np.int32) - INTERCEPT for f in range(3)]).astype(np.int16)
    ds.PixelData = volume.tobytes()
    ds.compress(pydicom.uid.RLELossless, volume, encoding_plugin="pydicom", generate_instance_uid=False)
    ds.save_as(frames[0], enforce_file_format=True)
    series["multi"] = str(ds.SeriesInstanceUID)
    return study, series


CANVAS_SAMPLES = """
const points = arguments[0];
const canvas = document.querySelector('#viewport canvas');
if (!canvas) return null;
const ctx = canvas.getContext('2d');
const img = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
return {w: canvas.width, h: canvas.height, values: points.map(([x, y]) => {
  const i = (Math.floor(y) * canvas.width + Math.floor(x)) * 4;
  return [img[i], img[i + 1], img[i + 2]];
})};
"""


def block_centres(width: int, height: int) -> list[tuple[int, int, float, float]]:
    """(by, bx, canvas x, canvas y) of each block's centre, the image fitted to the canvas and centred."""
    scale = min(width / COLUMNS, height / ROWS)
    x0, y0 = (width - COLUMNS * scale) / 2, (height - ROWS * scale) / 2
    out = []
    for by in range(ROWS // BLOCK):
        for bx in range(COLUMNS // BLOCK):
            out.append((by, bx, x0 + (bx + 0.5) * BLOCK * scale, y0 + (by + 0.5) * BLOCK * scale))
    return out


def check_image(driver: webdriver.Chrome, k: int, what: str, *, eight_bit: bool = False,
                tolerance: float = 2) -> None:
    """The canvas shows image k of the pattern (of pattern8 when `eight_bit`) through the test's window."""
    size = driver.execute_script("const c = document.querySelector('#viewport canvas');"
                                 "return c ? [c.width, c.height] : null;")
    assert size, "no canvas"
    centres = block_centres(*size)
    expected = pattern8(k) if eight_bit else pattern(k)
    window = WINDOW8 if eight_bit else (WIDTH, CENTRE)

    def matches() -> list[tuple[int, int, float, list[int]]] | None:
        got = driver.execute_script(CANVAS_SAMPLES, [[x, y] for _, _, x, y in centres])
        bad = []
        for (by, bx, _, _), rgb in zip(centres, got["values"]):
            want = display(float(expected[by * BLOCK, bx * BLOCK]), window)
            if max(abs(c - want) for c in rgb) > tolerance:
                bad.append((by, bx, want, rgb))
        return bad or None

    # the image renders asynchronously after the index changes: poll until it matches, then confirm once more
    try:
        wait(f"{what}: canvas showing image {k}", lambda: matches() is None, 30)
    except TimeoutError:
        raise AssertionError(f"{what}: canvas differs from image {k}: {(matches() or [])[:8]}") from None


def set_window(driver: webdriver.Chrome, window: tuple[int, int] = (WIDTH, CENTRE)) -> None:
    for field, value in (("ww", window[0]), ("wc", window[1])):
        box = driver.find_element(By.ID, field)
        box.clear()
        box.send_keys(str(value))
    driver.find_element(By.CSS_SELECTOR, "#wl-form button[type=submit]").click()
    wait("the window", lambda: driver.execute_script("return document.body.dataset.window")
         == f"{window[0]},{window[1]}")


def open_series(driver: webdriver.Chrome, url: str, study: str, series: str,
                window: tuple[int, int] = (WIDTH, CENTRE)) -> None:
    driver.get(f"{url}/ui/viewer?study={study}&series={series}")
    wait("the series shown", lambda: driver.execute_script("return document.body.dataset.ready") == series, 60)
    set_window(driver, window)


def status_text(driver: webdriver.Chrome) -> str:
    return str(driver.find_element(By.ID, "status").text)


def login(driver: webdriver.Chrome, url: str, token: str) -> None:
    driver.delete_all_cookies()
    driver.get(url + "/ui/")
    driver.find_element(By.ID, "token").send_keys(token)
    driver.find_element(By.CSS_SELECTOR, "#login button").click()
    wait("the login", lambda: driver.find_element(By.ID, "logout").is_displayed())


def http_status(url: str, headers: dict[str, str]) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=30) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


def test_viewer_shows_the_stored_pixels(tmp_path: Path, browser: webdriver.Chrome) -> None:
    mesh = MeshDemo(Workspace(tmp_path))
    try:
        nodes = mesh.setup([("a", "RGT", "Org A"), ("b", "RJ1", "Org B")], start=False)
        sender, node = nodes["a"], nodes["b"]
        enable_http(node)
        mesh.start(sender)
        mesh.start(node)
        study, series = make_study(tmp_path / "study")
        mesh.cli(sender, "ingest", str(tmp_path / "study" / "plain"), "--no-progress")
        manifest = mesh.share(sender, study, ["RJ1"])
        mesh.wait_for(lambda: mesh.delivered(sender, manifest, ["RJ1"]), 120, "the study delivered to B")
        radiologist = add_user(mesh, node, "radiologist", "clinician")
        auditor = add_user(mesh, node, "auditor1", "auditor")
        url = http_url(node)

        # the received study's inbox row links to the viewer
        login(browser, url, radiologist)
        link = wait("the View link in the inbox row", lambda: browser.find_elements(
            By.CSS_SELECTOR, f'#inbox-table tr[data-manifest="{manifest}"] a.view-link'))
        link[0].click()
        wait("the viewer from the inbox", lambda: browser.execute_script("return document.body.dataset.ready"))
        assert f"/ui/viewer?study={study}" in browser.current_url
        # uncompressed CT: three slices, scrolled by keyboard and by the slider
        open_series(browser, url, study, series["plain"])
        assert browser.find_elements(By.CSS_SELECTOR, "#series button.series")
        assert len(browser.find_elements(By.CSS_SELECTOR, "#series button.series")) == 7
        check_image(browser, 0, "uncompressed")
        assert browser.find_element(By.ID, "position").text == "Image 1 / 3"
        browser.find_element(By.ID, "viewport").click()  # focus (and a window/level click without a drag)
        set_window(browser)
        browser.find_element(By.ID, "viewport").send_keys(Keys.ARROW_DOWN)
        wait("the next image", lambda: browser.find_element(By.ID, "position").text == "Image 2 / 3")
        check_image(browser, 1, "uncompressed after ArrowDown")
        slider = browser.find_element(By.ID, "slice")
        slider.send_keys(Keys.END)
        wait("the last image", lambda: browser.find_element(By.ID, "position").text == "Image 3 / 3")
        check_image(browser, 2, "uncompressed after the slider")
        # the mouse: the wheel scrolls back, a left-button drag changes the window (the default tool)
        viewport = browser.find_element(By.ID, "viewport")
        ActionChains(browser).scroll_from_origin(ScrollOrigin.from_element(viewport), 0, -120).perform()
        wait("the wheel scroll", lambda: browser.find_element(By.ID, "position").text == "Image 2 / 3")
        check_image(browser, 1, "uncompressed after the wheel")
        ActionChains(browser).move_to_element(viewport).click_and_hold().move_by_offset(60, 40).release().perform()
        wait("the window dragged", lambda: browser.execute_script("return document.body.dataset.window")
             != f"{WIDTH},{CENTRE}")
        set_window(browser)
        assert_accessible(browser, "viewer")
        screenshot(browser, "portal-viewer")

        # JPEG-LS lossless, decoded by the CharLS WebAssembly codec in the worker
        open_series(browser, url, study, series["jpegls"])
        check_image(browser, 0, "JPEG-LS")
        browser.find_element(By.ID, "viewport").send_keys(Keys.ARROW_DOWN)
        wait("the next JPEG-LS image", lambda: browser.find_element(By.ID, "position").text == "Image 2 / 3")
        check_image(browser, 1, "JPEG-LS after ArrowDown")
        # the series description holding HTML is text, not markup
        labels = [b.text for b in browser.find_elements(By.CSS_SELECTOR, "#series button.series")]
        assert any("<img src=x" in t for t in labels), labels
        assert not browser.find_elements(By.CSS_SELECTOR, "#series img, #series b")
        assert browser.execute_script("return window.__xss") is None

        # one multi-frame instance (RLE Lossless), one image per frame
        open_series(browser, url, study, series["multi"])
        assert browser.find_element(By.ID, "position").text == "Image 1 / 3"
        check_image(browser, 3, "multi-frame RLE frame 1")
        browser.find_element(By.ID, "viewport").send_keys(Keys.ARROW_DOWN)
        check_image(browser, 4, "multi-frame RLE frame 2")
        # JPEG 2000 lossless (OpenJPEG) and JPEG lossless SV1 (jpeg-lossless-decoder-js), signed 16-bit
        for kind in ("jpeg2000", "jpeg-lossless"):
            open_series(browser, url, study, series[kind])
            check_image(browser, 0, kind)
            browser.find_element(By.ID, "viewport").send_keys(Keys.ARROW_DOWN)
            check_image(browser, 1, f"{kind} after ArrowDown")
        # JPEG baseline (libjpeg-turbo), 8-bit: lossy, but a constant 8x8 block survives within 3 grey levels
        open_series(browser, url, study, series["jpeg-baseline"], WINDOW8)
        check_image(browser, 0, "JPEG baseline", eight_bit=True, tolerance=3)
        browser.find_element(By.ID, "viewport").send_keys(Keys.ARROW_DOWN)
        check_image(browser, 1, "JPEG baseline after ArrowDown", eight_bit=True, tolerance=3)
        assert not browser.execute_script("return document.body.dataset.failed"), status_text(browser)

        # a frame that cannot be decoded: a clear message, not a silent black square
        browser.get(f"{url}/ui/viewer?study={study}&series={series['corrupt']}")
        wait("the decode error", lambda: "Could not decode this image" in status_text(browser))

        # opening the study is audited with the user (110103 Instances Accessed)
        entries = mesh.audit(node)
        assert any(e.get("event_code") == 110103 and e.get("actor") == "user:radiologist"
                   and e.get("action") == "wado-metadata" for e in entries), entries[-5:]

        # signed out while viewing: the next image is refused (401), and the page says so
        open_series(browser, url, study, series["plain"])
        browser.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "fetch('/ui/api/session').then(r => r.json()).then(s => fetch('/ui/logout', {method: 'POST',"
            " headers: {'X-CSRF-Token': s.csrf}})).then(r => done(r.status), e => done(String(e)));")
        # another series of the same page (its first image not loaded yet: the thumbnails show the middle one)
        browser.find_elements(By.CSS_SELECTOR, "#series button.series")[4].click()
        wait("the refused image", lambda: "refused the image" in status_text(browser))

        # a study this node does not hold: a clear message, no image
        login(browser, url, radiologist)
        browser.get(f"{url}/ui/viewer?study=1.2.3.999")
        wait("the not-held message", lambda: "holds no study" in status_text(browser))

        # a user without the read permission, and no session at all: no images, a clear message
        login(browser, url, auditor)
        browser.get(f"{url}/ui/viewer?study={study}")
        wait("the refusal", lambda: "permission to read images" in status_text(browser))
        assert not browser.find_elements(By.CSS_SELECTOR, "#series button.series")
        instance = f"{url}/dicomweb/studies/{study}/series/{series['plain']}"
        assert http_status(instance, {"accept": "multipart/related; type=\"application/dicom\"",
                                      "authorization": f"Bearer {auditor}"}) == 403
        assert http_status(instance, {"accept": "multipart/related; type=\"application/dicom\""}) == 401
        browser.delete_all_cookies()
        browser.get(f"{url}/ui/viewer?study={study}")
        wait("the refusal without a session", lambda: "permission to read images" in status_text(browser))

        # the page's CSP: WebAssembly allowed, eval not, nothing from other origins
        with urllib.request.urlopen(f"{url}/ui/viewer", timeout=30) as r:
            csp = r.headers["content-security-policy"]
        assert "'wasm-unsafe-eval'" in csp and "'unsafe-eval'" not in csp and "default-src 'self'" in csp
        print(json.dumps({"csp": csp}))
    finally:
        mesh.close()
