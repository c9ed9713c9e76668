"use strict";
// The requests page: a new request (with a prior-study lookup), the requests this node sent with their live
// state, and the requests other organisations sent here (PACS team: review, choose studies, send or decline).
// JSON API: /ui/api/requests/... (meshnode/web/requests_web.py). Server values go in as text only.
(() => {
  const $ = (id) => document.getElementById(id);
  const REFRESH_MS = 2000;
  const PAGE = 100;  // rows a listing returns (meshnode/node/request_routes.py PAGE)
  let reviewing = null;
  // paging: the cursor a table is shown from (null: the newest), and each table's last row's cursor
  const before = { outgoing: null, incoming: null };
  const last = { outgoing: null, incoming: null };

  function status(text) {
    const el = $("status");
    el.textContent = text || "";
    el.hidden = !text;
  }

  function cell(row, text, cls) {
    const td = document.createElement("td");
    td.textContent = text == null ? "" : String(text);
    if (cls) td.className = cls;
    row.appendChild(td);
    return td;
  }

  function patientOf(r) {
    return [r.nhs_number && `NHS ${r.nhs_number}`, r.patient_id && `ID ${r.patient_id}`].filter(Boolean).join(", ");
  }

  function answerOf(r) {
    if (r.state === "approved" && r.arrived && r.arrived.length === 0) {
      return `approved by ${r.decided_by} (waiting for the studies)`;
    }
    if (r.state === "approved" && r.arrived) {
      return `${r.arrived.length} of ${r.manifests.length} study(ies) arrived, shared by ${r.decided_by}`;
    }
    if (r.state === "approved") return `${r.manifests.length} study(ies) shared by ${r.decided_by}`;
    if (r.state === "declined") return `declined by ${r.decided_by}: ${r.decision_reason}`;
    if (r.state === "expired") return "expired unanswered";
    return "waiting for their PACS team";
  }

  function fill(table, rows, render) {
    const body = table.querySelector("tbody");
    body.replaceChildren(...rows.map(render));
    table.parentElement.querySelector(".empty").hidden = rows.length > 0;
  }

  function outgoingRow(r) {
    const tr = document.createElement("tr");
    tr.dataset.requestId = r.request_id;
    cell(tr, r.request_id.slice(0, 8), "mono");
    cell(tr, r.holder_org);
    cell(tr, patientOf(r));
    cell(tr, r.priority);
    cell(tr, r.requested_by);
    const waiting = r.state === "approved" && r.arrived && r.arrived.length === 0;
    cell(tr, waiting ? "approved (waiting for the studies)" : r.state, `state state-${r.state}`);
    cell(tr, answerOf(r), "answer");
    return tr;
  }

  function incomingRow(r) {
    const tr = document.createElement("tr");
    tr.dataset.requestId = r.request_id;
    cell(tr, r.request_id.slice(0, 8), "mono");
    cell(tr, r.requester_org);
    cell(tr, patientOf(r));
    cell(tr, r.priority);
    cell(tr, r.reason);
    cell(tr, r.requested_by);
    cell(tr, r.state, `state state-${r.state}`);
    const td = cell(tr, "");
    if (r.state === "pending") {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "review-button";
      button.textContent = "Review";
      button.setAttribute("aria-label", `Review request ${r.request_id.slice(0, 8)} from ${r.requester_org}`);
      button.addEventListener("click", () => review(r.request_id));
      td.appendChild(button);
    } else {
      td.textContent = answerOf(r);
    }
    return tr;
  }

  async function refresh(background) {
    const options = { background: !!background };  // the timer's refreshes are not activity (idle timeout)
    try {
      if (meshPortal.may("request")) fill($("outgoing-table"), await page("outgoing", options), outgoingRow);
      if (meshPortal.may("queues")) fill($("incoming-table"), await page("incoming", options), incomingRow);
    } catch (e) {
      status(`Could not refresh: ${e.message}`);
    }
  }

  async function page(name, options) {
    const query = before[name] ? `?before=${encodeURIComponent(before[name])}` : "";
    const rows = await meshPortal.api("GET", `/ui/api/requests/${name}${query}`, undefined, options);
    last[name] = rows.length ? rows[rows.length - 1].cursor : null;
    $(`${name}-older`).disabled = rows.length < PAGE;
    $(`${name}-newest`).hidden = !before[name];
    return rows;
  }

  function pager(name) {
    $(`${name}-older`).addEventListener("click", () => { before[name] = last[name]; refresh(); });
    $(`${name}-newest`).addEventListener("click", () => { before[name] = null; refresh(); });
  }

  function formBody() {
    const body = {};
    for (const el of $("request-form").elements) {
      if (el.name) body[el.name] = el.value.trim();
    }
    body.lifetime_days = Number(body.lifetime_days) || 7;
    return body;
  }

  async function send(ev) {
    ev.preventDefault();
    const body = formBody();
    if (!body.holder || !body.reason || !(body.nhs_number || body.patient_id)) {
      status("Give the organisation, the patient (NHS number or their patient ID) and a reason.");
      return;
    }
    $("req-send").disabled = true;
    try {
      const r = await meshPortal.api("POST", "/ui/api/requests", body);
      status(`Request ${r.request_id.slice(0, 8)} sent to ${r.holder_org}.`);
      await refresh();
    } catch (e) {
      status(`Not sent: ${e.message}`);
    } finally {
      $("req-send").disabled = false;
    }
  }

  async function priors() {
    const body = formBody();
    if (!body.holder || !body.nhs_number) {
      status("Give the organisation and the NHS number to look up their studies.");
      return;
    }
    try {
      const r = await meshPortal.api("POST", "/ui/api/requests/priors", { org: body.holder, nhs_number: body.nhs_number });
      $("priors").hidden = false;
      fill($("priors-table"), r.studies, (s) => {
        const tr = document.createElement("tr");
        cell(tr, s.study_date); cell(tr, s.modalities.join(", ")); cell(tr, s.description);
        cell(tr, s.series); cell(tr, s.instances); cell(tr, s.study_uid, "mono");
        return tr;
      });
      status(`${r.org} holds ${r.studies.length} study(ies) for this NHS number${r.truncated ? " (newest shown)" : ""}.`);
    } catch (e) {
      status(`Prior lookup refused: ${e.message}`);
    }
  }

  async function review(id) {
    try {
      const r = await meshPortal.api("GET", `/ui/api/requests/incoming/${encodeURIComponent(id)}`);
      reviewing = r.request_id;
      $("review").hidden = false;
      $("review-id").textContent = r.request_id.slice(0, 8);
      $("review-summary").textContent = `${r.requester_org} (${r.requested_by}) asks for ${patientOf(r)}`
        + `${r.modality ? `, ${r.modality}` : ""}${r.date_from || r.date_to ? `, ${r.date_from || "..."} to ${r.date_to || "..."}` : ""}`
        + `: ${r.reason} [${r.priority}, ${r.purpose}]`;
      $("search-from").value = isoDate(r.date_from);
      $("search-to").value = isoDate(r.date_to);
      $("search-modality").value = r.modality || "";
      showStudies(r.matching);
      if (r.mismatch) status(`This request names two different patients: ${r.mismatch}`);
    } catch (e) {
      status(`Cannot open the request: ${e.message}`);
    }
  }

  function isoDate(d) { return d && d.length === 8 ? `${d.slice(0, 4)}-${d.slice(4, 6)}-${d.slice(6)}` : ""; }

  async function research(ev) {
    ev.preventDefault();
    if (!reviewing) return;
    try {
      const rows = await meshPortal.api("POST", `/ui/api/requests/incoming/${reviewing}/search`, {
        date_from: $("search-from").value, date_to: $("search-to").value, modality: $("search-modality").value.trim(),
      });
      showStudies(rows);
      status(`${rows.length} study(ies) of this patient match.`);
    } catch (e) {
      status(`Search failed: ${e.message}`);
    }
  }

  function showStudies(studies) {
    const list = $("review-list");
    list.replaceChildren(...studies.map((s, i) => {
      const label = document.createElement("label");
      label.className = "study";
      const box = document.createElement("input");
      box.type = "checkbox";
      box.name = "study";
      box.value = s.study_uid;
      box.id = `study-${i}`;
      label.htmlFor = box.id;
      // the study's own patient ID and name, so a person sees a study that is not the requested patient's
      label.append(box, document.createTextNode(
        ` ${s.patient_id} ${s.patient_name}: ${s.study_date} ${s.modalities.join(",")} ${s.description}`
        + ` (${s.series} series, ${s.instances} images)`));
      return label;
    }));
    $("review-none").hidden = studies.length > 0;
    $("approve").disabled = studies.length === 0;
    const first = list.querySelector("input");
    (first || $("decline-reason")).focus();
  }

  async function decide(action) {
    if (!reviewing) return;
    let body;
    if (action === "approve") {
      const studies = [...$("review-list").querySelectorAll("input:checked")].map((b) => b.value);
      if (!studies.length) { status("Choose at least one study to send."); return; }
      body = { studies };
    } else {
      const reason = $("decline-reason").value.trim();
      if (!reason) { status("Say why the request is declined."); $("decline-reason").focus(); return; }
      body = { reason };
    }
    try {
      const r = await meshPortal.api("POST", `/ui/api/requests/incoming/${reviewing}/${action}`, body);
      status(action === "approve" ? `Sent ${r.manifests.length} study(ies) to ${r.requester_org}.`
        : `Declined the request from ${r.requester_org}.`);
      $("review").hidden = true;
      reviewing = null;
      await refresh();
    } catch (e) {
      status(`Not done: ${e.message}`);
    }
  }

  async function start() {
    const s = await meshPortal.session();
    $("org").textContent = s.org || "";
    $("who").textContent = s.user ? `${s.user}` : "";
    if (!s.user) { $("signin").hidden = false; return; }
    $("logout").hidden = false;
    $("logout").addEventListener("click", async () => {
      try { await meshPortal.api("POST", "/ui/logout"); } finally { window.location.href = "/ui/login"; }
    });
    const request = meshPortal.may("request"), queues = meshPortal.may("queues");
    $("new-request").hidden = !request;
    $("outgoing").hidden = !request;
    $("incoming").hidden = !queues;
    if (!request && !queues) status("Your role cannot send or answer requests.");
    $("request-form").addEventListener("submit", send);
    $("priors-lookup").addEventListener("click", priors);
    $("approve").addEventListener("click", () => decide("approve"));
    $("decline").addEventListener("click", () => decide("decline"));
    $("review-search").addEventListener("submit", research);
    $("review-close").addEventListener("click", () => { $("review").hidden = true; reviewing = null; });
    pager("outgoing");
    pager("incoming");
    await refresh();
    setInterval(() => refresh(true), REFRESH_MS);
  }

  document.addEventListener("DOMContentLoaded", start);
})();
