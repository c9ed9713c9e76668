"use strict";
// dicom-mesh node UI: one page, six views (nav links; aria-current marks the open one), live updates by
// Server-Sent Events.
// Every value from the server goes into the page as text (textContent), never as HTML.

const PAGES = ["inbox", "outbox", "peers", "audit", "reconcile"];
let session = { user: null, roles: [], permissions: [], csrf: null, public_status: true, org: "" };
let stream = null;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k === "title") node.title = v;
    else node.setAttribute(k, v);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function fill(table, rows, render) {
  const body = table.querySelector("tbody");
  body.replaceChildren(...rows.map(render));
  table.parentElement.querySelector(".empty").hidden = rows.length > 0;
}

function when(iso) {
  if (!iso) return "";
  return iso.replace("T", " ").replace("Z", "");
}

function short(text, n) {
  text = text || "";
  return text.length > n ? text.slice(0, n) + "\u2026" : text;
}

function bytes(n) {
  if (n >= 1e9) return (n / 1e9).toFixed(2) + " GB";
  if (n >= 1e6) return (n / 1e6).toFixed(1) + " MB";
  if (n >= 1e3) return (n / 1e3).toFixed(0) + " kB";
  return n + " B";
}

function progress(done, total, doneBytes, totalBytes) {
  const pct = total ? Math.min(100, (100 * done) / total) : 100;
  const bar = el("span", { class: "bar", role: "progressbar", "aria-label": "blocks fetched",
    "aria-valuemin": "0", "aria-valuemax": "100", "aria-valuenow": pct.toFixed(1) }, el("span"));
  bar.firstChild.style.width = pct.toFixed(1) + "%";
  return el("span", { class: "progress", title: `${done}/${total} blocks, ${bytes(doneBytes)} of ${bytes(totalBytes)}` },
    bar, el("span", { class: "pct" }, pct.toFixed(1) + "%"));
}

function patient(row, identifiers) {
  if (!identifiers) return el("span", { class: "muted", title: "log in to see patient identifiers" }, "\u2014");
  return el("span", {}, el("b", {}, row.patient_name || ""), " ", el("span", { class: "mono" }, row.patient_id || ""),
    row.birth_date ? el("span", { class: "muted" }, ` b. ${row.birth_date}`) : null);
}

function study(row, identifiers) {
  const parts = [el("span", { class: "pill" }, row.modality || "?")];
  if (identifiers) {
    parts.push(" ", row.description || "", " ");
    if (row.accession) parts.push(el("span", { class: "muted" }, `acc. ${row.accession}`));
  } else {
    parts.push(" ", el("span", { class: "mono muted", title: "hashed study UID" }, short(row.study, 16)));
  }
  return el("span", {}, ...parts);
}

function forwarded(value) {
  if (!value || !value.length) return el("span", { class: "muted", title: "no PACS forward configured" }, "\u2014");
  return el("span", {}, ...value.map((d) => el("div", { class: "state-" + d.state, title: d.last_error || "" },
    `${d.destination}: ${d.state}`, el("span", { class: "muted" }, ` ${d.sent}/${d.total}`))));
}

// what the sender signed into the manifest for the recipients (shown to a signed-in user only: the server
// leaves both out of the public status page): the person it is for, and a note (text, line breaks kept)
function addressing(row) {
  return [
    row.attention ? el("div", { class: "for" }, el("span", { class: "muted" }, "For: "), row.attention) : null,
    row.note ? el("div", { class: "note" }, el("span", { class: "muted" }, "Note: "), row.note) : null,
  ];
}

// the inbox row named by the address (#inbox?manifest=ID: the link in the arrival email), marked and shown once
let shownSelected = null;

function markSelected(tr, manifest) {
  if (manifest !== selected().manifest) return tr;
  tr.classList.add("selected");
  tr.setAttribute("aria-current", "true");
  if (shownSelected !== manifest) {
    shownSelected = manifest;
    setTimeout(() => tr.scrollIntoView({ block: "center" }), 0);
  }
  return tr;
}

// the viewer (viewer.html) for a study this node holds whole: shown to a user who may read images
function viewLink(r) {
  if (!r.study_uid || !["complete", "receipted"].includes(r.state)) return null;
  return el("a", { class: "view-link", href: `/ui/viewer?study=${encodeURIComponent(r.study_uid)}`,
                   "aria-label": `View study ${r.description || ""}`.trim() }, "View");
}

const render = {
  inbox(data) {
    fill(document.getElementById("inbox-table"), data.rows, (r) => markSelected(el("tr", { "data-manifest": r.manifest_id },
      el("td", { class: "mono" }, when(r.created_at)),
      el("td", {}, el("b", {}, r.sender_org)),
      el("td", {}, el("span", { class: "pill " + r.priority }, r.priority)),
      el("td", {}, patient(r, data.identifiers)),
      el("td", {}, study(r, data.identifiers), el("div", { class: "muted" }, `${r.instances} instances`),
        ...addressing(r), viewLink(r)),
      el("td", { class: "state state-" + r.state }, r.state),
      el("td", {}, progress(r.blocks_done, r.blocks_total, r.bytes_done, r.bytes_total)),
      el("td", {}, r.first_instance_ms === null ? "" : `${r.first_instance_ms} ms`),
      el("td", {}, Object.entries(r.served_by_org || {}).map(([org, n]) => `${org}: ${n}`).join(", "),
        Object.keys(r.served_to || {}).length ? el("div", { class: "muted" }, "served to " +
          Object.entries(r.served_to).map(([org, d]) => `${org}: ${d.blocks}`).join(", ")) : null),
      el("td", { class: "forwarded" }, forwarded(r.forwarded))), r.manifest_id));
  },
  outbox(data) {
    fill(document.getElementById("outbox-table"), data.rows, (r) => el("tr", { "data-manifest": r.manifest_id },
      el("td", { class: "mono" }, when(r.created_at)),
      el("td", {}, el("span", { class: "pill " + (r.priority || "") }, r.priority || "")),
      el("td", {}, patient(r, data.identifiers)),
      el("td", {}, study(r, data.identifiers)),
      el("td", { class: "state-" + r.state }, r.state),
      el("td", {}, ...Object.entries(r.recipients).map(([org, d]) => el("div", { title: d.last_error || "" },
        el("b", {}, org), ": ", el("span", { class: "state-" + d.status }, d.status),
        d.receipt_verified ? el("span", { class: "ok" }, " \u2713 receipt verified") : null,
        d.pacs_forward_text ? el("span", { class: d.pacs_forward && d.pacs_forward.state === "forwarded" ? "ok" : "warn" },
          ` \u00b7 ${d.pacs_forward_text}`) : null,
        d.served && d.served.blocks ? el("span", { class: "muted" }, ` \u00b7 ${d.served.blocks} blocks served`) : null,
        d.attempts > 1 && d.state !== "delivered" ? el("span", { class: "muted" }, ` (${d.attempts} attempts)`) : null)))));
  },
  peers(data) {
    const self = data.self;
    const cards = [el("div", { class: "card" }, el("b", {}, `This node: ${self.org} ${self.org_name}`),
      el("div", { class: "mono" }, short(self.peer_id, 24)),
      el("div", { class: self.certificate === "valid" ? "ok" : "bad" }, `certificate ${self.certificate} until ${when(self.certificate_expires)}`))];
    if (data.roster) {
      cards.push(el("div", { class: "card" }, el("b", {}, `Roster v${data.roster.version}`),
        el("div", {}, `issued ${when(data.roster.issued_at)}`),
        el("div", { class: data.roster.state === "valid" ? "ok" : "bad" }, `${data.roster.state}, expires ${when(data.roster.expires_at)}`)));
    }
    document.getElementById("self").replaceChildren(...cards);
    fill(document.getElementById("peers-table"), data.peers, (p) => el("tr", {},
      el("td", {}, el("b", {}, p.org)),
      el("td", {}, p.org_name),
      el("td", { class: "mono", title: p.peer_id }, short(p.peer_id, 20)),
      el("td", { class: p.certificate === "valid" ? "ok" : p.certificate === "expiring" ? "warn" : "bad" },
        `${p.certificate} (serial ${p.serial})`),
      el("td", { class: "mono" }, when(p.certificate_expires)),
      el("td", { class: p.connected ? "ok" : "muted" }, p.connected ? "connected" : "not connected"),
      el("td", { class: "mono" }, when(p.last_seen))));
  },
  reconcile(rows) {
    // the patient reconciliation queue (GET /reconcile, queues permission: the pacs role); decisions in the page
    // (write permission: the pacs role) or with meshnode reconcile
    fill(document.getElementById("reconcile-table"), rows, (r) => el("tr", { "data-manifest": r.manifest },
      el("td", { class: "mono" }, when(new Date(r.created_ms).toISOString())),
      el("td", {}, el("b", {}, r.sender_org)),
      el("td", {}, `${r.arriving.patient_id} (${r.arriving.issuer || "no issuer"})`,
        el("div", { class: "muted" }, `${r.arriving.name} ${r.arriving.birth_date} ${r.arriving.sex}`)),
      el("td", { class: "mono" }, r.arriving.nhs_number || "-"),
      el("td", { class: "warn" }, r.reason, r.detail ? el("div", { class: "muted" }, r.detail) : null),
      el("td", { class: "mono", title: r.manifest }, short(r.manifest, 20)),
      may("write") ? reconcileControls(r) : null));
  },
  audit(data) {
    const chain = document.getElementById("chain");
    chain.className = "chain " + (data.chain.intact ? "ok" : "bad");
    chain.replaceChildren(data.chain.intact
      ? el("span", { class: "ok" }, `Chain intact: ${data.chain.verified_through} entries verified`)
      : el("span", { class: "bad" }, `Chain BROKEN: ` + data.chain.problems.map((p) => `entry ${p.seq}: ${p.problem}`).join("; ")),
      el("span", { class: "muted" }, ` (checked ${when(data.chain.checked_at)}, last full verification ${when(data.chain.last_full_verification)})`));
    fill(document.getElementById("audit-table"), data.entries, (e) => el("tr", {},
      el("td", { class: "mono" }, e.seq),
      el("td", { class: "mono" }, when(e.time)),
      el("td", { title: e.event }, e.code),
      el("td", {}, e.action),
      el("td", { class: e.outcome === 0 ? "ok" : e.outcome >= 8 ? "bad" : "warn" }, e.outcome),
      el("td", { class: "mono", title: e.actor }, short(e.actor, 22)),
      el("td", {}, e.actor_org),
      el("td", { class: "mono", title: e.study }, short(e.study, 14)),
      el("td", {}, e.detail)));
  },
};

function notice(text) {
  const n = document.getElementById("notice");
  n.textContent = text || "";
  n.hidden = !text;
}

function current() {
  const page = location.hash.slice(1).split("?")[0];
  return PAGES.includes(page) || page === "conflicts" ? page : "inbox";
}

function selected() {
  const query = location.hash.split("?")[1] || "";
  return { manifest: new URLSearchParams(query).get("manifest") };
}

function live(on) {
  const dot = document.getElementById("live");
  dot.classList.toggle("on", on);
  dot.setAttribute("aria-label", on ? "Live updates on" : "Live updates off");
}

function auditQuery() {
  const form = document.getElementById("audit-filter");
  const params = new URLSearchParams();
  for (const [k, v] of new FormData(form).entries()) if (v) params.set(k, v);
  return params.toString();
}

function open(page) {
  if (stream) stream.close();
  stream = null;
  live(false);
  for (const p of [...PAGES, "conflicts"]) document.getElementById("page-" + p).hidden = p !== page;
  for (const a of document.querySelectorAll("nav a")) {
    a.classList.toggle("active", a.dataset.page === page);
    if (a.dataset.page === page) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  conflictsPage(page === "conflicts");
  if (page === "conflicts") return;
  if (page === "audit" && !session.permissions.includes("audit")) {
    notice("The audit log needs a login with a token of a user with the audit role.");
    return;
  }
  if (!session.user && !session.public_status) {
    notice("Log in with your API token to see this node's status.");
    return;
  }
  if (page === "reconcile") {
    loadReconcile();
    return;
  }
  notice(session.user || page === "peers" ? "" : "Patient identifiers are shown after you log in.");
  const query = page === "audit" ? "&" + auditQuery() : "";
  stream = new EventSource(`/ui/api/events?page=${page}${query}`);
  stream.addEventListener("update", (ev) => {
    live(true);
    render[page](JSON.parse(ev.data));
    document.body.dataset.updated = String(Date.now());
  });
  stream.onerror = () => live(false);
}

async function loadReconcile() {
  if (!session.permissions.includes("queues")) {
    notice("The reconciliation queue is for the PACS team: it needs a user with the pacs role.");
    return;
  }
  const response = await fetch("/reconcile", { credentials: "same-origin" });
  if (!response.ok) {
    notice(`The reconciliation queue could not be read (HTTP ${response.status}).`);
    return;
  }
  notice("");
  render.reconcile(await response.json());
}

async function loadSession() {
  const response = await fetch("/ui/api/session", { credentials: "same-origin" });
  session = await response.json();
  document.getElementById("org").textContent = session.org;
  document.getElementById("who").textContent = session.user ? `${session.user} (${session.roles.join(", ")})` : "";
  document.getElementById("login").hidden = !!session.user;
  document.getElementById("logout").hidden = !session.user;
  document.getElementById("signin-link").hidden = !!session.user;
  document.getElementById("users-link").hidden = !(session.permissions || []).includes("admin");
  for (const th of document.querySelectorAll("th.decide")) th.hidden = !may("write");
  // the PACS team's queues (reconciliation, conflicts) need the queues permission (the pacs role)
  const queues = (session.permissions || []).includes("queues");
  for (const page of ["reconcile", "conflicts"]) {
    const link = document.querySelector(`nav a[data-page="${page}"]`);
    if (link) link.hidden = !queues;
  }
}

async function login(ev) {
  ev.preventDefault();
  const token = document.getElementById("token").value.trim();
  const response = await fetch("/ui/login", {
    method: "POST", credentials: "same-origin",
    headers: { "Content-Type": "application/json" }, body: JSON.stringify({ token }),
  });
  document.getElementById("token").value = "";
  if (!response.ok) {
    notice("Login refused: unknown, revoked or expired token.");
    return;
  }
  await loadSession();
  open(current());
}

// after a logout nothing the signed-in user saw stays in the page (hidden tabs included): a shared
// workstation's next user reads only what the public status page shows
function forget() {
  for (const body of document.querySelectorAll("main tbody")) body.replaceChildren();
  document.getElementById("chain").replaceChildren();
  document.getElementById("self").replaceChildren();
}

async function logout() {
  await fetch("/ui/logout", { method: "POST", credentials: "same-origin",
    headers: { "X-CSRF-Token": session.csrf || "" } });
  forget();
  await loadSession();
  open(current());
}

window.addEventListener("DOMContentLoaded", async () => {
  document.getElementById("login").addEventListener("submit", login);
  document.getElementById("logout").addEventListener("click", logout);
  document.getElementById("audit-filter").addEventListener("change", () => open("audit"));
  document.getElementById("audit-filter").addEventListener("submit", (ev) => { ev.preventDefault(); open("audit"); });
  window.addEventListener("hashchange", () => {
    open(current());
    // a keyboard or screen-reader user lands on the page they opened, not back at the top of the document
    document.getElementById("title-" + current()).focus();
  });
  await loadSession();
  open(current());
});

// -- conflicts: same SOP Instance UID, other bytes (GET /api/conflicts, queues permission: the pacs role;
// decisions need the write permission: the buttons on each pending row (the pacs role), or
// `meshnode conflicts decide ID replace|keep-both|discard`, or POST /api/conflicts/ID/decision)
let conflictsTimer = null;

async function loadConflicts(background) {
  // the timer's refreshes are not the person's activity: they must not keep the session alive (idle timeout)
  const response = await fetch("/api/conflicts?state=all", {
    credentials: "same-origin", headers: background ? { "X-Meshnode-Background": "1" } : {},
  });
  if (!response.ok) {
    notice(response.status === 403 ? "The conflict queue is for the PACS team: it needs a user with the pacs role."
      : "Sign in as a member of the PACS team to see the conflict queue.");
    return;
  }
  if (!background) notice("");
  const rows = await response.json();
  fill(document.getElementById("conflicts-table"), rows, (c) => el("tr", {},
    el("td", {}, "#" + c.id),
    el("td", {}, when(new Date(c.created_ms).toISOString())),
    el("td", {}, c.kind),
    el("td", { class: "mono", title: c.study_uid }, short(c.study_uid, 18)),
    el("td", { class: "mono", title: c.sop_instance_uid }, short(c.sop_instance_uid, 18)),
    el("td", { class: "mono", title: c.existing_sha256 }, short(c.existing_sha256, 16)),
    el("td", { class: "mono", title: c.newcomer_sha256 }, short(c.newcomer_sha256, 16)),
    el("td", {}, c.source + (c.route ? " (route " + c.route + ")" : "")),
    c.state === "pending" ? conflictControls(c)
      : el("td", {}, c.state + " by " + c.decided_by + (c.new_uid ? " as " + c.new_uid : ""))));
}

// -- decisions from the page (write permission: the pacs role), with the session cookie and its anti-CSRF
// token; the result or the refusal goes into the notice area as text, then the queue is read again
function may(permission) { return (session.permissions || []).includes(permission); }

async function decide(url, body, done, reload) {
  let text;
  try {
    const response = await fetch(url, { method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": session.csrf || "" }, body: JSON.stringify(body) });
    let data = null;
    try { data = await response.json(); } catch (e) { data = null; }
    const reason = data && (data.message || data.error) ? String(data.message || data.error) : "";
    text = response.ok ? done
      : response.status === 403 ? "Refused (HTTP 403): deciding needs a user with the pacs role (write permission)."
      : response.status === 409 ? "Already decided (HTTP 409)" + (reason ? ": " + reason : ".")
      : `Refused (HTTP ${response.status})` + (reason ? ": " + reason : ".");
  } catch (e) {
    text = "The node did not answer: " + e.message;
  }
  await reload();
  notice(text);
}

function reconcileControls(r) {
  const what = `${r.arriving.patient_id} from ${r.sender_org}`;
  const localId = el("input", { type: "text", size: "12", autocomplete: "off", placeholder: "local patient ID", "aria-label": `Local patient ID for ${what}` });
  const reason = el("input", { type: "text", size: "12", autocomplete: "off", placeholder: "reason (optional)", "aria-label": `Reason to reject ${what}` });
  const match = el("button", { type: "button", class: "decide-match", "aria-label": `Match ${what} to the local patient ID` }, "Match");
  const reject = el("button", { type: "button", class: "decide-reject", "aria-label": `Reject ${what}` }, "Reject");
  match.addEventListener("click", () => {
    const id = localId.value.trim();
    if (!id) { notice(`Enter the local patient ID to match ${what} to.`); localId.focus(); return; }
    decide(`/reconcile/${encodeURIComponent(r.manifest)}/match`, { local_id: id },
      `Matched ${what} to local patient ${id}: the study goes on to the PACS.`, loadReconcile);
  });
  reject.addEventListener("click", () => {
    decide(`/reconcile/${encodeURIComponent(r.manifest)}/reject`, { reason: reason.value.trim() },
      `Rejected ${what}.`, loadReconcile);
  });
  return el("td", { class: "decide" }, el("div", {}, localId, " ", match), el("div", {}, reason, " ", reject));
}

function conflictControls(c) {
  const cell = el("td", {}, `pending (${c.policy})`);
  if (!may("write")) return cell;
  const labels = { "replace": "Replace", "keep-both": "Keep both", "discard": "Discard" };
  const says = { "replace": "the newcomer replaces the stored instance", "keep-both": "both kept",
    "discard": "the newcomer is discarded" };
  for (const [decision, label] of Object.entries(labels)) {
    const button = el("button", { type: "button", "data-decision": decision, "aria-label": `${label}: conflict #${c.id}` }, label);
    button.addEventListener("click", () => decide(`/api/conflicts/${c.id}/decision`, { decision },
      `Conflict #${c.id} decided: ${says[decision]}.`, () => loadConflicts(true)));
    cell.append(" ", button);
  }
  return cell;
}

function conflictsPage(on) {
  if (conflictsTimer) clearInterval(conflictsTimer);
  conflictsTimer = null;
  if (!on) return;
  if (!(session.permissions || []).includes("queues")) {
    notice("The conflict queue is for the PACS team: it needs a user with the pacs role.");
    return;
  }
  loadConflicts();
  conflictsTimer = setInterval(() => loadConflicts(true), 5000);
}
