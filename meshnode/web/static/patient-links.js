"use strict";
// The patient links page: find a study (the send page's API, /ui/api/send/studies), make a share or an upload
// link, list links with their state (a page at a time), revoke, unlock (the PACS team, with a reason), and read one
// link's history (/ui/api/patient-links, meshnode/web/patient_links_web.py). The server decides who sees what:
// the PACS team every link, anyone else the links they made and their forwards. Every value from the server goes into the page as text (textContent).

const chosen = new Map();  // study UID -> label
let current = null;        // the link whose history is shown
let offset = 0;            // the listing's page: links skipped (newest first)
const PAGE = 50;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c ?? "")));
  return node;
}

function $(id) { return document.getElementById(id); }

function say(id, text, bad) {
  const n = $(id);
  n.textContent = text || "";
  n.classList.toggle("bad", !!bad);
  if (id === "notice") n.hidden = !text;
}

function when(t) { return t ? new Date(t * 1000).toISOString().slice(0, 16).replace("T", " ") : ""; }
function dicomDate(d) { return d && d.length === 8 ? `${d.slice(0, 4)}-${d.slice(4, 6)}-${d.slice(6)}` : (d || ""); }
function person(name) { return (name || "").replace(/\^+/g, " ").trim(); }

function showChosen() {
  $("chosen").textContent = chosen.size ? [...chosen.values()].join("; ") : "none chosen";
}

async function search(ev) {
  ev.preventDefault();
  const params = new URLSearchParams();
  for (const [k, v] of new FormData($("search")).entries()) if (String(v).trim()) params.set(k, String(v).trim());
  say("search-status", "Searching...");
  try {
    const data = await meshPortal.api("GET", "/ui/api/send/studies?" + params.toString());
    const body = $("studies").querySelector("tbody");
    body.replaceChildren();
    for (const s of data.studies) {
      const label = `${dicomDate(s.study_date)} ${s.description || ""}`.trim();
      const box = el("input", { type: "checkbox", "aria-label": `Share the study of ${dicomDate(s.study_date)} for ${person(s.patient_name)}`,
        onchange: (e) => { if (e.target.checked) chosen.set(s.study_uid, label); else chosen.delete(s.study_uid); showChosen(); } });
      box.checked = chosen.has(s.study_uid);
      body.append(el("tr", {}, el("td", { text: dicomDate(s.study_date) }), el("td", { text: person(s.patient_name) }),
        el("td", { text: s.description }), el("td", { text: (s.modalities || []).join(", ") }), el("td", {}, box)));
    }
    $("studies").hidden = data.studies.length === 0;
    say("search-status", data.studies.length === 0 ? "No study held here matches." : `${data.studies.length} found.`);
  } catch (e) {
    say("search-status", e.message, true);
  }
}

async function create(ev) {
  ev.preventDefault();
  const form = new FormData($("create"));
  const kind = form.get("kind");
  const body = { kind, person: form.get("person"), email: form.get("email"), code_to: form.get("code_to") };
  if (String(form.get("days") || "").trim()) body.days = Number(form.get("days"));
  if (kind === "share") {
    if (!chosen.size) { say("create-status", "Choose at least one study first.", true); return; }
    body.studies = [...chosen.keys()];
  }
  say("create-status", "Creating...");
  try {
    const made = await meshPortal.api("POST", "/ui/api/patient-links", body);
    say("create-status", `Link made and emailed (${made.id}).`);
    $("create").reset();
    chosen.clear();
    showChosen();
    await refresh();
  } catch (e) {
    say("create-status", e.message, true);
  }
}

async function refresh() {
  const kind = $("kind-filter").value;
  try {
    const query = new URLSearchParams({ limit: String(PAGE), offset: String(offset) });
    if (kind) query.set("kind", kind);
    const data = await meshPortal.api("GET", "/ui/api/patient-links?" + query.toString());
    const body = $("links").querySelector("tbody");
    body.replaceChildren();
    for (const l of data.links) {
      const actions = el("td", {}, el("button", { type: "button", onclick: () => show(l.id),
        "aria-label": `History of the link for ${l.person}` }, "History"));
      if (l.state === "locked" && meshPortal.may("queues")) {
        actions.append(" ", el("button", { type: "button", onclick: () => startUnlock(l.id),
          "aria-label": `Unlock the link for ${l.person}` }, "Unlock"));
      }
      body.append(el("tr", {}, el("td", { text: l.kind }), el("td", { text: l.person }), el("td", { text: l.email }),
        el("td", { text: l.state + (l.revoke_reason ? ` (${l.revoke_reason})` : "") +
          (!l.email_sent && l.state !== "revoked" ? " (email not sent: revoke it and make a new one)" : "") }),
        el("td", { text: when(l.expires_at) }), el("td", { text: l.created_by }), actions));
    }
    say("list-status", data.links.length ? "" : (offset ? "No older links." : "No links yet."));
    $("older").hidden = !data.more;
    $("newer").hidden = offset === 0;
  } catch (e) {
    say("list-status", e.message, true);
  }
}

async function show(id) {
  try {
    const l = await meshPortal.api("GET", "/ui/api/patient-links/" + encodeURIComponent(id));
    current = l;
    $("detail").hidden = false;
    $("detail-summary").textContent = `${l.kind} for ${l.person} <${l.email}>, code by ${l.code_channel} to ` +
      `${l.code_to}; ${l.state}; until ${when(l.expires_at)}; ${l.studies.length} stud${l.studies.length === 1 ? "y" : "ies"}` +
      `; forwarded ${l.forwards} time(s)` + (l.parent_id ? `; forwarded from ${l.parent_id}` : "");
    $("revoke").hidden = l.state === "revoked" || l.state === "expired";
    $("unlock").hidden = !(l.state === "locked" && meshPortal.may("queues"));
    $("history").replaceChildren(...l.history.map((h) => el("li", { text:
      `${when(h.at)} ${h.action} by ${h.actor}${h.client ? " from " + h.client : ""}${h.detail ? ": " + h.detail : ""}` })));
    $("detail-title").focus();
  } catch (e) {
    say("notice", e.message, true);
  }
}

async function revoke(ev) {
  ev.preventDefault();
  if (!current) return;
  const reason = new FormData($("revoke")).get("reason");
  try {
    await meshPortal.api("POST", `/ui/api/patient-links/${encodeURIComponent(current.id)}/revoke`, { reason });
    say("notice", "Link revoked.");
    $("revoke").reset();
    await refresh();
    await show(current.id);
  } catch (e) {
    say("notice", e.message, true);
  }
}

async function startUnlock(id) {
  await show(id);
  if (!$("unlock").hidden) $("unlock").querySelector("input").focus();
}

async function unlock(ev) {
  ev.preventDefault();
  if (!current) return;
  const reason = new FormData($("unlock")).get("reason");
  try {
    await meshPortal.api("POST", `/ui/api/patient-links/${encodeURIComponent(current.id)}/unlock`, { reason });
    say("notice", "Link unlocked: the person must ask for a new code.");
    $("unlock").reset();
    await refresh();
    await show(current.id);
  } catch (e) {
    say("notice", e.message, true);
  }
}

document.addEventListener("DOMContentLoaded", async () => {
  const s = await meshPortal.session();
  $("org").textContent = s.org || "";
  $("who").textContent = s.user || "";
  $("detail-title").setAttribute("tabindex", "-1");
  $("search").addEventListener("submit", search);
  $("create").addEventListener("submit", create);
  $("revoke").addEventListener("submit", revoke);
  $("unlock").addEventListener("submit", unlock);
  $("refresh").addEventListener("click", refresh);
  $("kind-filter").addEventListener("change", () => { offset = 0; refresh(); });
  $("older").addEventListener("click", () => { offset += PAGE; refresh(); });
  $("newer").addEventListener("click", () => { offset = Math.max(0, offset - PAGE); refresh(); });
  if (!meshPortal.may("send")) {
    say("notice", "You need the send permission (clinician or PACS team) to use patient links.", true);
    return;
  }
  $("list-scope").textContent = meshPortal.may("queues")
    ? "You see every link (PACS team); unlocking a locked link is yours."
    : "You see the links you made and the shares forwarded from them; the PACS team unlocks locked links.";
  await refresh();
});
