"use strict";
// The send page: find a study, look at its series, choose organisations, send; follow each recipient live
// (/ui/api/events?page=outbox), recall, redeliver. The JSON API is /ui/api/send/... (meshnode/web/send_web.py);
// every value from the server goes into the page as text (textContent), never as HTML.

const chosen = new Map();  // org code -> name
let selectedStudy = null;
let options = [];
let active = -1;
let stream = null;

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

function dicomDate(d) { return d && d.length === 8 ? `${d.slice(0, 4)}-${d.slice(4, 6)}-${d.slice(6)}` : (d || ""); }
function person(name) { return (name || "").replace(/\^+/g, " ").trim(); }

// -- 1. find --------------------------------------------------------------------------------------------
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
      const who = `${person(s.patient_name)}${s.birth_date ? ", born " + dicomDate(s.birth_date) : ""}`;
      body.append(el("tr", {},
        el("td", { text: dicomDate(s.study_date) }), el("td", { text: who }), el("td", { text: s.patient_id }),
        el("td", { text: s.description }), el("td", { text: s.modalities.join(", ") }),
        el("td", { text: s.series }), el("td", { text: s.instances }), el("td", { text: s.accession }),
        el("td", {}, el("button", { type: "button", class: "choose", "data-study": s.study_uid,
          "aria-label": `Choose the study of ${dicomDate(s.study_date)} for ${who}`,
          onclick: () => chooseStudy(s.study_uid) }, "Choose"))));
    }
    $("studies").hidden = data.studies.length === 0;
    say("search-status", data.studies.length === 0 ? "No study held here matches." :
      `${data.studies.length} stud${data.studies.length === 1 ? "y" : "ies"}${data.more ? " (more: narrow the search)" : ""}.`);
  } catch (e) {
    say("search-status", e.message, true);
  }
}

// -- 2. the study -------------------------------------------------------------------------------------
function dataUrl(blob) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(blob);
  });
}

async function thumbnail(item, series) {
  const holder = item.querySelector(".thumb");
  if (!series.thumbnail) {  // a study of very many series: only the first ones have thumbnails
    holder.replaceChildren(el("span", { class: "no-thumb", text: "no thumbnail" }));
    return;
  }
  try {
    const response = await fetch(series.thumbnail, { credentials: "same-origin" });
    if (!response.ok) {
      let message = `no thumbnail (HTTP ${response.status})`;
      try { message = (await response.json()).message || message; } catch (e) { /* not JSON */ }
      holder.replaceChildren(el("span", { class: "no-thumb", text: message }));
      return;
    }
    const img = el("img", { alt: `Series ${series.number ?? ""} ${series.description || series.modality}, middle image`,
                            width: 128, height: 128 });
    img.src = await dataUrl(await response.blob());
    holder.replaceChildren(img);
  } catch (e) {
    holder.replaceChildren(el("span", { class: "no-thumb", text: "no thumbnail: " + e.message }));
  }
}

async function chooseStudy(uid) {
  try {
    const s = await meshPortal.api("GET", `/ui/api/send/studies/${encodeURIComponent(uid)}/series`);
    selectedStudy = s;
    $("study").hidden = false;
    $("send").hidden = !meshPortal.may("send");
    $("study-summary").textContent = `${person(s.patient_name)} (${s.patient_id}), ${dicomDate(s.study_date)} `
      + `${s.description}${s.accession ? ", accession " + s.accession : ""}: ${s.series.length} series`;
    $("study-view").href = s.viewer;
    const list = $("series");
    list.replaceChildren();
    for (const series of s.series) {
      const item = el("li", { class: "series-item" },
        el("div", { class: "thumb" }, el("span", { class: "muted", text: "loading..." })),
        el("div", { class: "caption", text: `${series.number ?? "-"} ${series.modality} ${series.description}` }),
        el("div", { class: "muted", text: `${series.instances} instance${series.instances === 1 ? "" : "s"}` }));
      list.append(item);
      thumbnail(item, series);
    }
    if (!meshPortal.may("send")) say("notice", "Sending needs a user with the send permission (clinician or PACS team).");
    $("study").scrollIntoView({ block: "nearest" });
  } catch (e) {
    say("search-status", e.message, true);
  }
}

// -- 3. organisations (type-ahead) ------------------------------------------------------------------
let typed = 0;
async function lookup() {
  const text = $("org-input").value.trim();
  const mine = ++typed;
  if (!text) { showOptions([]); return; }
  await new Promise((r) => setTimeout(r, 120));  // let fast typing settle
  if (mine !== typed) return;
  try {
    const found = await meshPortal.api("GET", "/ui/api/send/orgs?q=" + encodeURIComponent(text));
    if (mine === typed) showOptions(found.filter((o) => !chosen.has(o.code)));
  } catch (e) {
    showOptions([]);
    say("send-status", e.message, true);
  }
}

function showOptions(found) {
  options = found;
  active = found.length ? 0 : -1;
  const list = $("org-options");
  list.replaceChildren(...found.map((o, i) => el("li", {
    id: `org-option-${i}`, role: "option", "data-code": o.code, "aria-selected": i === active ? "true" : "false",
    onmousedown: (ev) => { ev.preventDefault(); pick(i); },
  }, el("b", { text: o.code }), " ", o.name)));
  list.hidden = found.length === 0;
  $("org-input").setAttribute("aria-expanded", found.length ? "true" : "false");
  highlight();
}

function highlight() {
  const input = $("org-input");
  for (const [i, li] of [...$("org-options").children].entries()) {
    li.setAttribute("aria-selected", i === active ? "true" : "false");
    li.classList.toggle("active", i === active);
  }
  if (active >= 0) input.setAttribute("aria-activedescendant", `org-option-${active}`);
  else input.removeAttribute("aria-activedescendant");
}

function pick(i) {
  const o = options[i];
  if (!o) return;
  chosen.set(o.code, o.name);
  $("org-input").value = "";
  showOptions([]);
  renderChosen();
  $("org-input").focus();
}

function renderChosen() {
  $("chosen").replaceChildren(...[...chosen.entries()].map(([code, name]) => el("li", { class: "chip", "data-code": code },
    `${name} (${code}) `,
    el("button", { type: "button", "aria-label": `Remove ${name}`, onclick: () => { chosen.delete(code); renderChosen(); } }, "\u00d7"))));
}

function orgKeys(ev) {
  if (ev.key === "ArrowDown" && options.length) { active = (active + 1) % options.length; highlight(); ev.preventDefault(); }
  else if (ev.key === "ArrowUp" && options.length) { active = (active - 1 + options.length) % options.length; highlight(); ev.preventDefault(); }
  else if (ev.key === "Enter") { ev.preventDefault(); if (active >= 0) pick(active); }
  else if (ev.key === "Escape") showOptions([]);
}

// -- send -----------------------------------------------------------------------------------------------
function shareBody() {
  const form = $("share");
  const f = new FormData(form);
  const body = { study: selectedStudy.study_uid, to: [...chosen.keys()], priority: f.get("priority"),
                 purpose: f.get("purpose") };
  const lifetime = String(f.get("lifetime_days") || "").trim();
  if (lifetime) body.lifetime_days = Number(lifetime);
  const project = String(f.get("deid_project") || "").trim();
  const deidOptions = f.getAll("deid_option");
  const risk = String(f.get("pixel_risk") || "");
  const safePrivate = String(f.get("safe_private") || "").split("\n").map((l) => l.trim()).filter((l) => l);
  if (project || deidOptions.length || risk || safePrivate.length || body.purpose === "research") {
    body.deid = { project };
    for (const o of deidOptions) body.deid[o] = true;
    if (risk) body.deid.pixel_risk = risk;
    if (safePrivate.length) body.deid.safe_private = safePrivate;
  }
  if (f.get("include_unreconciled")) body.include_unreconciled = true;
  const origin = String(f.get("origin") || "").trim();
  if (origin) body.origin = origin;
  const attention = String(f.get("attention") || "").trim();
  const note = String(f.get("note") || "").trim();
  if (attention) body.attention = attention;
  if (note) body.note = note;
  return body;
}

async function send(ev) {
  ev.preventDefault();
  if (!selectedStudy) { say("send-status", "Choose a study first.", true); return; }
  if (chosen.size === 0) { say("send-status", "Choose at least one organisation.", true); $("org-input").focus(); return; }
  $("send-button").disabled = true;
  say("send-status", "Sending...");
  try {
    const r = await meshPortal.api("POST", "/ui/api/send/share", shareBody());
    const to = [...chosen.values()].join(", ");
    if (r.research_share && r.state === "held") {
      say("send-status", `Research share ${r.research_share} is held: ${r.held.length} instance(s) may carry burned-in identifiers; a reviewer decides.`);
    } else {
      say("send-status", `Sent to ${to}: ${r.instances} instance(s), manifest ${r.manifest_id}.`);
    }
    chosen.clear();
    renderChosen();
    for (const name of ["attention", "note"]) $("share").elements[name].value = "";
  } catch (e) {
    say("send-status", e.message, true);
  } finally {
    $("send-button").disabled = false;
  }
}

// -- 4. sent, live ----------------------------------------------------------------------------------
function recipientLine(org, d, total) {
  let text = d.status;
  let pct = null;
  if (d.status === "announced") {
    pct = total ? Math.min(100, Math.round(100 * d.served.blocks / total)) : 0;
    text = d.served.blocks ? `fetching ${pct}% (from this node)` : "announced";
  } else if (d.status === "delivered") {
    text = "delivered, receipt verified";
    pct = 100;
  } else if (d.last_error && d.status !== "recalled") {
    text = `${d.status}: ${d.last_error}`;
  }
  const line = el("div", { class: "recipient", "data-org": org, "data-status": d.status },
    el("b", { text: org }), " ", el("span", { class: `state-${d.status}`, text }));
  if (d.pacs_forward_text) {  // the recipient's signed report of its PACS forward
    line.setAttribute("data-pacs", d.pacs_forward.state);
    line.append(" ", el("span", { class: `pacs pacs-${d.pacs_forward.state}`, text: `\u00b7 ${d.pacs_forward_text}` }));
  }
  if (pct !== null) {
    const bar = el("span", { class: "bar", role: "progressbar", "aria-label": `${org} fetched`, "aria-valuemin": "0",
                             "aria-valuemax": "100", "aria-valuenow": String(pct) }, el("span", {}));
    bar.firstChild.style.width = pct + "%";
    line.append(" ", bar);
  }
  return line;
}

function recallForm(row, cell) {
  const reason = el("input", { "aria-label": "Reason for the recall", maxlength: 1024, class: "reason", required: true });
  const copies = el("input", { type: "checkbox", class: "copies" });
  const status = el("span", { role: "status" });
  const form = el("form", { class: "recall-form", onsubmit: async (ev) => {
    ev.preventDefault();
    try {
      const r = await meshPortal.api("POST", "/ui/api/send/recall", { manifest: row.manifest_id, reason: reason.value,
                                                                    research_copies: copies.checked });
      status.textContent = `Recalled; recipients are being told${r.research_copies.length ? ` (${r.research_copies.length} research cop(ies)${r.research_copies_recalled ? " recalled too" : " stay shared"})` : ""}.`;
      status.className = "";
    } catch (e) { status.textContent = e.message; status.className = "bad"; }
  } }, el("label", {}, "Reason ", reason), " ", el("label", {}, copies, " research copies too"), " ",
  el("button", { type: "submit" }, "Confirm recall"), " ", status);
  cell.append(form);
  reason.focus();
}

function renderOutbox(data) {
  const body = $("outbox").querySelector("tbody");
  const open = new Map([...body.querySelectorAll("form.recall-form")].map((f) => [f.closest("tr").dataset.manifest, f]));
  body.replaceChildren();
  for (const r of data.rows) {
    const recipients = el("td", {}, ...Object.entries(r.recipients).sort().map(([org, d]) => recipientLine(org, d, r.blocks_total)));
    const actions = el("td", { class: "actions" });
    if (r.study_uid) actions.append(el("a", { href: `/ui/viewer?study=${encodeURIComponent(r.study_uid)}` }, "View"), " ");
    if (meshPortal.may("send") && r.state !== "recalled") {
      actions.append(el("button", { type: "button", class: "recall", "aria-label": `Recall the study sent ${r.created_at}`,
        onclick: (ev) => { ev.target.disabled = true; recallForm(r, actions); } }, "Recall"), " ");
    }
    if (meshPortal.may("send") && Object.values(r.recipients).some((d) => d.status.endsWith("failed"))) {
      actions.append(el("button", { type: "button", onclick: async () => {
        try { await meshPortal.api("POST", "/ui/api/send/redeliver", { manifest: r.manifest_id }); }
        catch (e) { say("notice", e.message, true); }
      } }, "Try again"));
    }
    const tr = el("tr", { "data-manifest": r.manifest_id },
      el("td", { text: r.created_at }),
      el("td", { text: r.patient_name !== undefined ? `${person(r.patient_name)} (${r.patient_id})` : "-" }),
      el("td", { text: r.description !== undefined ? `${dicomDate(r.study_date)} ${r.description}` : r.study }),
      el("td", {}, el("span", { class: `pill ${r.priority}`, text: r.priority })),
      recipients, actions);
    const keep = open.get(r.manifest_id);
    if (keep) { actions.querySelector("button.recall")?.setAttribute("disabled", ""); actions.append(keep); }
    body.append(tr);
  }
  $("outbox-empty").hidden = data.rows.length > 0;
}

function follow() {
  if (stream) stream.close();
  stream = new EventSource("/ui/api/events?page=outbox");
  stream.addEventListener("update", (ev) => {
    $("live").classList.add("on");
    renderOutbox(JSON.parse(ev.data));
  });
  stream.onerror = () => $("live").classList.remove("on");
}

window.addEventListener("DOMContentLoaded", async () => {
  const s = await meshPortal.session();
  $("org").textContent = s.org || "";
  $("who").textContent = s.user ? `${s.user} (${s.roles.join(", ")})` : "";
  $("search").addEventListener("submit", search);
  $("share").addEventListener("submit", send);
  $("org-input").addEventListener("input", lookup);
  $("org-input").addEventListener("keydown", orgKeys);
  $("org-input").addEventListener("blur", () => setTimeout(() => showOptions([]), 150));
  // a research share is a de-identified copy: no free text of the sender's goes with it (the node refuses it)
  $("share").elements.purpose.addEventListener("change", () => {
    const research = $("share").elements.purpose.value === "research";
    $("notify-fields").disabled = research;
    $("more").open = $("more").open || research;
  });
  if (!s.user) {
    say("notice", "Sign in on the main page (/ui/) first.");
    for (const id of ["find", "sent"]) $(id).hidden = true;
    return;
  }
  if (!meshPortal.may("read")) {
    say("notice", "Finding studies needs a user with the read permission.");
    $("find").hidden = true;
  }
  follow();
});
