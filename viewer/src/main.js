// The portal's DICOM viewer: Cornerstone3D stack viewport over the node's own WADO-RS, with the session
// cookie. Bundled by scripts/build_viewer.sh into meshnode/web/static/viewer/ (no CDN: the decoder worker
// and the WebAssembly codecs are served from /ui/static/viewer/). Values from the server go into the page as
// text only (textContent), never as HTML.
import {
  Enums, RenderingEngine, eventTarget, init as coreInit, metaData, utilities,
} from "@cornerstonejs/core";
import {
  Enums as ToolEnums, PanTool, StackScrollTool, ToolGroupManager, WindowLevelTool, ZoomTool,
  addTool, init as toolsInit, utilities as toolUtilities,
} from "@cornerstonejs/tools";
import { init as loaderInit } from "@cornerstonejs/dicom-image-loader";

// Where the bundle's files and the DICOMweb root are: the page says so (data-viewer-base, data-dicomweb on
// <body>: the patients' viewer at /p/viewer uses /p/static/viewer/ and /p/dicomweb); without them, the
// portal's /ui/static/viewer/ and /dicomweb. Only paths of this origin are taken.
function pagePath(value, fallback) {
  return typeof value === "string" && /^\/[A-Za-z0-9_\/-]{0,100}$/.test(value) && !value.startsWith("//")
    ? value : fallback;
}
const BASE = pagePath(document.body.dataset.viewerBase, "/ui/static/viewer/");
const DICOMWEB = pagePath(document.body.dataset.dicomweb, "/dicomweb");
const SIGN_IN = document.body.dataset.signIn || "sign in again on the portal's front page";
const ENGINE = "mesh-viewer";
const VIEWPORT = "mesh-stack";
const TOOLS = "mesh-tools";
// window width / centre presets (the file's own window is "as stored")
const PRESETS = {
  "soft-tissue": [400, 40], lung: [1500, -600], bone: [2000, 300], brain: [80, 40], liver: [150, 30],
};
const MOUSE_TOOLS = { wl: WindowLevelTool.toolName, pan: PanTool.toolName, zoom: ZoomTool.toolName };

const $ = (id) => document.getElementById(id);
const state = { series: [], current: null, viewport: null, engine: null, leftTool: "wl" };

function text(id, value) { $(id).textContent = value; }

function status(message, isError) {
  const s = $("status");
  s.textContent = message;
  s.classList.toggle("error", !!isError);
}

// -- DICOM JSON (PS3.18 F.2) -------------------------------------------------------------------------
function value(item, tag) {
  const v = item[tag] && item[tag].Value;
  if (!v || !v.length) return undefined;
  return v[0];
}

// NumberOfFrames comes from the sender: a value of 2e8 would make the page build 2e8 image IDs. Frames per
// instance and images per series are capped, and an instance whose pixel data is inline and native has no
// more frames than its bytes hold.
const MAX_FRAMES = 10000;
const MAX_SERIES_IMAGES = 100000;
const NATIVE = new Set(["1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"]);

function framesOf(item) {
  let n = Math.floor(Number(value(item, "00280008") || 1));
  if (!Number.isFinite(n) || n < 1) n = 1;
  n = Math.min(n, MAX_FRAMES);
  const inline = item["7FE00010"] && item["7FE00010"].InlineBinary;
  const frameBytes = Number(value(item, "00280010") || 0) * Number(value(item, "00280011") || 0)
    * Number(value(item, "00280002") || 1) * Number(value(item, "00280100") || 0) / 8;
  if (typeof inline === "string" && frameBytes > 0 && NATIVE.has(String(value(item, "00020010") || ""))) {
    n = Math.max(1, Math.min(n, Math.floor(Math.floor(inline.length * 3 / 4) / frameBytes)));
  }
  return n;
}

function seriesOf(metadata, study, root = "/dicomweb") {
  const bySeries = new Map();
  for (const item of metadata) {
    const uid = value(item, "0020000E");
    const sop = value(item, "00080018");
    if (typeof uid !== "string" || typeof sop !== "string") continue;
    if (!bySeries.has(uid)) {
      bySeries.set(uid, {
        uid, number: Number(value(item, "00200011") || 0), description: String(value(item, "0008103E") || ""),
        modality: String(value(item, "00080060") || ""), instances: [],
      });
    }
    bySeries.get(uid).instances.push({
      sop, number: Number(value(item, "00200013") || 0), frames: framesOf(item),
    });
  }
  const out = [...bySeries.values()].sort((a, b) => a.number - b.number || (a.uid < b.uid ? -1 : 1));
  for (const s of out) {
    s.instances.sort((a, b) => a.number - b.number || (a.sop < b.sop ? -1 : 1));
    s.imageIds = [];
    for (const i of s.instances) {
      if (s.imageIds.length >= MAX_SERIES_IMAGES) break;
      const url = `${location.origin}${root}/studies/${encodeURIComponent(study)}/series/`
        + `${encodeURIComponent(s.uid)}/instances/${encodeURIComponent(i.sop)}`;
      if (i.frames > 1) {
        const last = Math.min(i.frames, MAX_SERIES_IMAGES - s.imageIds.length);
        for (let f = 1; f <= last; f++) s.imageIds.push(`wadouri:${url}?frame=${f}`);
      } else {
        s.imageIds.push(`wadouri:${url}`);
      }
    }
  }
  return out;
}

// -- the stack ---------------------------------------------------------------------------------------
function showPosition() {
  const vp = state.viewport;
  const n = vp.getImageIds().length;
  const i = vp.getCurrentImageIdIndex();
  const slider = $("slice");
  slider.max = String(Math.max(0, n - 1));
  slider.value = String(i);
  slider.setAttribute("aria-valuetext", `image ${i + 1} of ${n}`);
  text("position", `Image ${i + 1} / ${n}`);
  const voi = vp.getProperties().voiRange;
  if (voi) {
    const { windowWidth, windowCenter } = utilities.windowLevel.toWindowLevel(voi.lower, voi.upper);
    text("wl-readout", `W ${Math.round(windowWidth)} / L ${Math.round(windowCenter)}`);
    for (const [id, v] of [["ww", windowWidth], ["wc", windowCenter]]) {
      if (document.activeElement !== $(id)) $(id).value = String(Math.round(v * 100) / 100);
    }
    document.body.dataset.window = `${windowWidth},${windowCenter}`;
  }
  document.body.dataset.imageIndex = String(i);
}

async function openSeries(index) {
  const series = state.series[index];
  state.current = index;
  for (const [i, b] of [...document.querySelectorAll("#series button")].entries()) {
    b.setAttribute("aria-pressed", i === index ? "true" : "false");
  }
  document.body.dataset.ready = "";
  document.body.dataset.failed = "";
  status(`Loading series ${series.number}…`);
  await state.viewport.setStack(series.imageIds, 0);
  // the rest of the series loads in the background, nearest images first, so scrolling does not wait
  toolUtilities.stackPrefetch.enable(state.viewport.element);
  $("preset").value = "file";
  state.viewport.render();
  showPosition();
  text("series-title", `${series.modality} ${series.description}`.trim() || series.uid);
  if (!document.body.dataset.failed) status(`${series.imageIds.length} image(s)`);
  document.body.dataset.ready = series.uid;
}

async function scrollTo(i) {
  const vp = state.viewport;
  const n = vp.getImageIds().length;
  const target = Math.min(n - 1, Math.max(0, i));
  if (target === vp.getCurrentImageIdIndex()) return;
  document.body.dataset.ready = "";
  await vp.setImageIdIndex(target);
  showPosition();
  document.body.dataset.ready = state.series[state.current].uid;
}

function setWindow(width, center) {
  if (!(width >= 1) || !Number.isFinite(center)) return;
  const vp = state.viewport;
  vp.setProperties({ voiRange: utilities.windowLevel.toLowHighRange(width, center) });
  vp.render();
  showPosition();
}

function applyPreset(name) {
  if (name === "file") {
    state.viewport.resetProperties();
    state.viewport.render();
    showPosition();
  } else if (PRESETS[name]) {
    setWindow(...PRESETS[name]);
  }
}

function zoomBy(factor) {
  const vp = state.viewport;
  vp.setZoom(vp.getZoom() * factor);
  vp.render();
}

function panBy(dx, dy) {
  const vp = state.viewport;
  const [x, y] = vp.getPan();
  vp.setPan([x + dx, y + dy]);
  vp.render();
}

function reset() {
  state.viewport.resetCamera();
  state.viewport.resetProperties();
  state.viewport.render();
  $("preset").value = "file";
  showPosition();
}

function chooseTool(name) {
  const group = ToolGroupManager.getToolGroup(TOOLS);
  group.setToolPassive(MOUSE_TOOLS[state.leftTool]);
  state.leftTool = name;
  group.setToolActive(MOUSE_TOOLS[name], { bindings: [{ mouseButton: ToolEnums.MouseBindings.Primary }] });
  // the other two stay on the middle and right buttons
  for (const [key, tool] of Object.entries(MOUSE_TOOLS)) {
    if (key === name) continue;
    const button = key === "pan" ? ToolEnums.MouseBindings.Auxiliary : key === "zoom"
      ? ToolEnums.MouseBindings.Secondary : null;
    if (button) group.setToolActive(tool, { bindings: [{ mouseButton: button }] });
  }
  for (const b of document.querySelectorAll("[data-tool]")) {
    b.setAttribute("aria-pressed", b.dataset.tool === name ? "true" : "false");
  }
}

function onKey(event) {
  if (event.target.closest("input, select, textarea")) return;
  const vp = state.viewport;
  if (!vp || state.current === null) return;
  const i = vp.getCurrentImageIdIndex();
  const keys = {
    ArrowDown: () => scrollTo(i + 1), ArrowRight: () => scrollTo(i + 1), PageDown: () => scrollTo(i + 10),
    ArrowUp: () => scrollTo(i - 1), ArrowLeft: () => scrollTo(i - 1), PageUp: () => scrollTo(i - 10),
    Home: () => scrollTo(0), End: () => scrollTo(vp.getImageIds().length - 1),
    "+": () => zoomBy(1.25), "=": () => zoomBy(1.25), "-": () => zoomBy(0.8), r: reset,
  };
  if (keys[event.key]) {
    event.preventDefault();
    keys[event.key]();
  }
}

// -- thumbnails --------------------------------------------------------------------------------------
function seriesButton(series, index) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "series";
  button.setAttribute("aria-pressed", "false");
  const canvas = document.createElement("canvas");
  canvas.width = 96;
  canvas.height = 96;
  canvas.setAttribute("aria-hidden", "true");
  const label = document.createElement("span");
  label.textContent = `${series.number || ""} ${series.modality} ${series.description}`.trim();
  const count = document.createElement("small");
  count.textContent = `${series.imageIds.length} image(s)`;
  button.append(canvas, label, count);
  button.addEventListener("click", () => openSeries(index).catch(failed));
  return { button, canvas };
}

async function thumbnails(items) {
  for (const { canvas, series } of items) {
    const imageId = series.imageIds[Math.floor(series.imageIds.length / 2)];
    try {
      await utilities.loadImageToCanvas({ canvas, imageId, thumbnail: true });
    } catch (e) {
      canvas.title = "no preview";
    }
  }
}

function failed(error) {
  console.error(error);
  status(`Could not show the image: ${error && error.message ? error.message : error}`, true);
  document.body.dataset.failed = "1";
}

// -- start -------------------------------------------------------------------------------------------
async function metadataOf(study) {
  const response = await fetch(`${DICOMWEB}/studies/${encodeURIComponent(study)}/metadata`, {
    credentials: "same-origin", headers: { Accept: "application/dicom+json" },
  });
  if (response.status === 401 || response.status === 403) {
    throw new Error(`you are not signed in with permission to read these images (${SIGN_IN})`);
  }
  if (response.status === 404) throw new Error("this node holds no study with that Study Instance UID");
  if (!response.ok) throw new Error(`the node answered HTTP ${response.status}`);
  return response.json();
}

async function start() {
  const params = new URLSearchParams(location.search);
  const study = params.get("study") || "";
  if (!/^[0-9.]{1,64}$/.test(study)) {
    status("No study given: open the viewer from a study in the inbox (…/ui/viewer?study=<Study Instance UID>).", true);
    document.body.dataset.failed = "1";
    return;
  }
  text("study-uid", study);
  status("Loading study…");
  const metadata = await metadataOf(study);
  state.series = seriesOf(metadata, study, DICOMWEB);
  if (!state.series.length) throw new Error("this study has no images to show");

  coreInit();
  toolsInit();
  loaderInit({
    maxWebWorkers: 1, wasmBasePath: `${BASE}codecs/`,
    beforeSend: () => ({ Accept: "application/dicom" }),
  });
  const element = $("viewport");
  element.addEventListener("contextmenu", (e) => e.preventDefault());
  state.engine = new RenderingEngine(ENGINE);
  state.engine.enableElement({ viewportId: VIEWPORT, type: Enums.ViewportType.STACK, element,
                               defaultOptions: { background: [0, 0, 0] } });
  state.viewport = state.engine.getViewport(VIEWPORT);

  for (const tool of [WindowLevelTool, PanTool, ZoomTool, StackScrollTool]) addTool(tool);
  const group = ToolGroupManager.createToolGroup(TOOLS);
  for (const tool of [WindowLevelTool, PanTool, ZoomTool, StackScrollTool]) group.addTool(tool.toolName);
  group.addViewport(VIEWPORT, ENGINE);
  group.setToolActive(StackScrollTool.toolName, { bindings: [{ mouseButton: ToolEnums.MouseBindings.Wheel }] });
  chooseTool("wl");
  element.addEventListener(Enums.Events.STACK_NEW_IMAGE, showPosition);
  element.addEventListener(Enums.Events.VOI_MODIFIED, showPosition);
  // an image that cannot be fetched or decoded (a corrupt frame, a transfer syntax without a decoder) says so
  eventTarget.addEventListener(Enums.Events.IMAGE_LOAD_ERROR, (event) => {
    const detail = event.detail || {};
    const error = detail.error || {};
    // the loader rejects with the XMLHttpRequest itself when the node refuses the instance
    const http = typeof error.status === "number" && error.status >= 400 ? error.status : 0;
    if (http === 401 || http === 403) {
      status(`The node refused the image: your session has expired or you may not read images (${SIGN_IN}).`, true);
    } else if (http) {
      status(`The node could not send this image (HTTP ${http}).`, true);
    } else {
      const reason = error.message || (typeof error === "string" ? error : "");
      status(`Could not decode this image${reason ? `: ${reason}` : ""}`, true);
    }
    document.body.dataset.failed = "1";
  });

  const list = $("series");
  const items = state.series.map((s, i) => {
    const { button, canvas } = seriesButton(s, i);
    const li = document.createElement("li");
    li.append(button);
    list.append(li);
    return { canvas, series: s };
  });
  const wanted = state.series.findIndex((s) => s.uid === params.get("series"));
  await openSeries(wanted >= 0 ? wanted : 0);
  thumbnails(items);
}

function wire() {
  $("slice").addEventListener("input", (e) => scrollTo(Number(e.target.value)).catch(failed));
  $("preset").addEventListener("change", (e) => applyPreset(e.target.value));
  $("wl-form").addEventListener("submit", (e) => {
    e.preventDefault();
    setWindow(Number($("ww").value), Number($("wc").value));
    $("preset").value = "custom";
  });
  $("zoom-in").addEventListener("click", () => zoomBy(1.25));
  $("zoom-out").addEventListener("click", () => zoomBy(0.8));
  $("reset").addEventListener("click", reset);
  for (const b of document.querySelectorAll("[data-tool]")) {
    b.addEventListener("click", () => chooseTool(b.dataset.tool));
  }
  for (const b of document.querySelectorAll("[data-pan]")) {
    const [dx, dy] = b.dataset.pan.split(",").map(Number);
    b.addEventListener("click", () => panBy(dx, dy));
  }
  $("viewport").addEventListener("keydown", onKey);
  document.addEventListener("keydown", (e) => { if (e.target === document.body) onKey(e); });
}

wire();
start().catch(failed);
// exposed for the browser tests and the console: the metadata provider and the viewport
window.meshViewer = { state, metaData };
