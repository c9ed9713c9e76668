"use strict";
// The PACS team's review of uploads held in quarantine: per upload link, who sent it, the studies in it
// (read from the files' headers), what was refused; accept (ingested through the node's intake, so routing
// and patient reconciliation apply) or reject with a reason. Values from the server go in as text only.
(() => {
  const $ = (id) => document.getElementById(id);

  function el(tag, text, attrs) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    return node;
  }

  function mb(bytes) {
    return bytes < (1 << 20) ? Math.ceil(bytes / 1024) + " KB" : (bytes / (1 << 20)).toFixed(1) + " MB";
  }

  function say(text) { const s = $("status"); s.textContent = text; s.hidden = !text; }

  function linkCard(entry, index) {
    const card = el("section", null, { class: "card", "aria-labelledby": `link-${index}` });
    card.append(el("h2", `From ${entry.person || "(unnamed)"}`, { id: `link-${index}` }));
    card.append(el("p", `${entry.files} file(s) held, ${mb(entry.bytes)}; upload link ${entry.link}`,
                   { class: "muted" }));
    const table = el("table");
    table.append(el("caption", "Studies in these files"));
    const head = el("tr");
    for (const h of ["Patient", "Patient ID", "Date", "Description", "Modality", "Files", "Size"]) {
      head.append(el("th", h, { scope: "col" }));
    }
    const thead = el("thead");
    thead.append(head);
    table.append(thead);
    const body = el("tbody");
    for (const s of entry.studies) {
      const row = el("tr");
      for (const v of [s.patient_name, s.patient_id, s.study_date, s.study_description, s.modalities.join(", "),
                       s.files, mb(s.bytes)]) row.append(el("td", v));
      if (s.mixed) row.cells[0].append(el("strong", ` (files of ${s.patients.length} patients: held on accept)`));
      body.append(row);
    }
    table.append(body);
    card.append(table);
    if (entry.refused.length) {
      const details = el("details");
      details.append(el("summary", `${entry.refused.length} file(s) refused or skipped by the checks`));
      const list = el("ul");
      for (const r of entry.refused) list.append(el("li", `${r.name}: ${r.reason}`));
      details.append(list);
      card.append(details);
    }
    const form = el("form", null, { class: "users-tools" });
    const reasonId = `reason-${index}`;
    const field = el("div", null, { class: "field" });
    field.append(el("label", "Reason to reject", { for: reasonId }), el("input", null, { id: reasonId }));
    const accept = el("button", "Accept into the store", { type: "button", class: "primary" });
    const reject = el("button", "Reject and delete", { type: "button", class: "secondary" });
    accept.addEventListener("click", () => decide(entry.link, "accept", {}, accept));
    reject.addEventListener("click", () => {
      const reason = $(reasonId).value.trim();
      if (!reason) { $("error").textContent = "Give a reason to reject (it is audited)."; $(reasonId).focus(); return; }
      decide(entry.link, "reject", { reason }, reject);
    });
    form.append(field, accept, reject);
    card.append(form);
    return card;
  }

  function askCard(ask, index) {
    const card = el("section", null, { class: "card", "aria-labelledby": `ask-${index}` });
    card.append(el("h3", `${ask.person} asked for an upload link`, { id: `ask-${index}` }));
    const list = el("dl");
    for (const [term, value] of [["Email for the link", ask.email], ["Code to", ask.code_to],
                                 ["Message", ask.message], ["Asked", new Date(ask.created_at * 1000).toLocaleString()],
                                 ["From address", ask.client]]) {
      list.append(el("dt", term), el("dd", value));
    }
    card.append(list);
    const form = el("form", null, { class: "users-tools" });
    const reasonId = `ask-reason-${index}`;
    const field = el("div", null, { class: "field" });
    field.append(el("label", "Reason to decline", { for: reasonId }), el("input", null, { id: reasonId, maxlength: "500" }));
    const send = el("button", "Send an upload link", { type: "button", class: "primary" });
    const decline = el("button", "Decline", { type: "button", class: "secondary" });
    send.addEventListener("click", () => answer(ask.id, "send", {}, send));
    decline.addEventListener("click", () => {
      const reason = $(reasonId).value.trim();
      if (!reason) { $("error").textContent = "Give a reason to decline (kept with the request)."; $(reasonId).focus(); return; }
      answer(ask.id, "decline", { reason }, decline);
    });
    form.append(field, send, decline);
    card.append(form);
    return card;
  }

  async function answer(id, action, body, button) {
    $("error").textContent = "";
    button.disabled = true;
    try {
      await meshPortal.api("POST", `/ui/api/upload-requests/${encodeURIComponent(id)}/${action}`, body);
      say(action === "send" ? "Upload link sent: the email is on its way." : "Declined (nothing was sent).");
      await loadAsks();
    } catch (e) {
      $("error").textContent = e.message;
      button.disabled = false;
      if (e.status === 409) await loadAsks();
    }
  }

  async function loadAsks() {
    const data = await meshPortal.api("GET", "/ui/api/upload-requests");
    $("ask-list").replaceChildren(...data.requests.map(askCard));
    $("asks-empty").hidden = data.requests.length > 0;
  }

  // patient reconciliation holds a study back (files of several patients, another patient's study, no match)
  function acceptedText(answer) {
    const held = (answer.held || []).map((h) => `${h.study_uid}: ${h.reason}`);
    return `Accepted: ${answer.stored} instance(s) stored.` +
      (held.length ? ` Still held in quarantine (not stored): ${held.join("; ")}` : "");
  }

  async function decide(link, action, body, button) {
    $("error").textContent = "";
    button.disabled = true;
    try {
      const answer = await meshPortal.api("POST", `/ui/api/uploads/${encodeURIComponent(link)}/${action}`, body);
      say(action === "accept" ? acceptedText(answer) : `Rejected: ${answer.deleted} file(s) deleted.`);
      await load();
    } catch (e) {
      $("error").textContent = e.message;
      button.disabled = false;
    }
  }

  async function load() {
    const data = await meshPortal.api("GET", "/ui/api/uploads");
    const links = $("links");
    links.replaceChildren(...data.links.map(linkCard));
    $("empty").hidden = data.links.length > 0;
  }

  async function start() {
    const session = await meshPortal.session();
    $("who").textContent = session.user || "";
    $("org").textContent = session.org || "";
    if (!meshPortal.may("queues")) { $("denied").hidden = false; return; }
    $("review").hidden = false;
    try { await loadAsks(); } catch (e) { $("asks").hidden = true; }  // not offered: patient access is off
    try { await load(); } catch (e) { $("error").textContent = e.message; }
  }

  start();
})();
