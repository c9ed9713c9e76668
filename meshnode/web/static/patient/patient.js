// The patients' page (/p/): open the link, ask for and enter the one-time code, then the share: studies,
// view, download, key images, pass on to a doctor, sign out. The link's token is read from the URL's
// fragment (#t=...), which browsers never send to a server, and is removed from the address bar at once; it
// goes to the node only in POST bodies. Values from the server go into the page as text only (textContent).
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  let token = "";
  let csrf = "";

  function say(text, error) {
    const m = $("message");
    m.textContent = text;
    m.classList.toggle("error", Boolean(error));
    m.setAttribute("role", error ? "alert" : "status");
  }

  async function post(path, body) {
    const headers = { "Content-Type": "application/json" };
    if (csrf) headers["X-CSRF-Token"] = csrf;
    let response;
    try {
      response = await fetch(path, { method: "POST", credentials: "same-origin", headers, body: JSON.stringify(body) });
    } catch (e) {
      return { ok: false, status: 0, data: {} };
    }
    let data = {};
    try { data = await response.json(); } catch (e) { data = {}; }
    return { ok: response.ok, status: response.status, data };
  }

  function explain(reply) {
    const error = reply.data && reply.data.error;
    if (reply.status === 0) return "We could not reach the server. Check your internet connection and try again.";
    if (reply.status === 429) return "Too many requests from your connection: try again in a minute.";
    if (error === "link-gone") return "This link does not work any more: it may have expired or been withdrawn. Ask the hospital that sent it for a new one.";
    if (error === "link-locked") return "This link is locked after too many wrong codes. Ask the hospital that sent it to unlock it.";
    if (error === "code-refused") return "That code is not right, or it has expired. Check it and try again, or ask for a new code.";
    if (error === "code-limit-reached") return "No more codes can be sent for this link. Ask the hospital that sent it.";
    if (error === "no-session") return "You have been signed out. Open the link from your email again.";
    return `Something went wrong (error ${reply.status}). Please try again later.`;
  }

  function formatDate(value) {
    const m = /^(\d{4})(\d{2})(\d{2})$/.exec(value || "");
    if (!m) return value || "Not recorded";
    const date = new Date(Date.UTC(Number(m[1]), Number(m[2]) - 1, Number(m[3])));
    return date.toLocaleDateString(undefined, { year: "numeric", month: "long", day: "numeric", timeZone: "UTC" });
  }

  function readToken() {
    const m = /^#t=([A-Za-z0-9_-]{16,128})$/.exec(location.hash);
    if (m) {
      token = m[1];
      history.replaceState(null, "", location.pathname);  // not left in the address bar or the history
    }
  }

  function field(item, name) { return item.querySelector(`[data-field="${name}"]`); }

  function showStudy(list, s) {
    const item = $("study-template").content.firstElementChild.cloneNode(true);
    const title = s.description || "Imaging study";
    field(item, "description").textContent = title;
    field(item, "date").textContent = formatDate(s.date);
    field(item, "patient").textContent = s.patient_name || "Not recorded";
    field(item, "modalities").textContent = (s.modalities || []).join(", ") || "Not recorded";
    field(item, "images").textContent = String(s.images);
    const view = field(item, "view");
    view.textContent = "View";
    view.href = `/p/viewer?study=${encodeURIComponent(s.uid)}`;
    view.setAttribute("aria-label", `View ${title}, ${formatDate(s.date)}`);
    const keys = field(item, "keys");
    for (const series of s.series || []) {
      const li = document.createElement("li");
      const a = document.createElement("a");
      const q = new URLSearchParams({ study: s.uid, series: series.uid, instance: series.key_instance, format: "jpeg" });
      a.href = `/p/api/key-image?${q.toString()}`;
      a.download = `image-${series.number || 1}.jpg`;
      a.textContent = `Save a picture from ${series.description || series.modality || "this series"} (${series.images} images)`;
      li.append(a);
      keys.append(li);
    }
    list.append(item);
  }

  async function showShare() {
    let response;
    try {
      response = await fetch("/p/api/share", { credentials: "same-origin" });
    } catch (e) {
      return false;
    }
    if (!response.ok) return false;
    const data = await response.json();
    csrf = data.csrf || "";
    $("code-step").hidden = true;
    $("share-step").hidden = false;
    $("person").textContent = data.person || "you";
    $("expires").textContent = new Date(data.expires_at * 1000).toLocaleString();
    $("download").hidden = !data.download;
    if (data.download) $("download").href = data.download;
    const list = $("studies");
    list.replaceChildren();
    for (const s of data.studies || []) showStudy(list, s);
    $("forward").hidden = !data.may_forward;
    say(data.studies && data.studies.length ? "" : "There are no images in this share yet.");
    $("share-title").focus();
    return true;
  }

  // a session of an upload link (from before a reload): its page, not this one
  async function uploadSession() {
    try {
      const response = await fetch("/p/api/uploads", { credentials: "same-origin" });
      return response.ok;
    } catch (e) {
      return false;
    }
  }

  async function start() {
    readToken();
    if (!token) {
      if (await showShare()) return;
      if (await uploadSession()) { location.replace("/p/upload"); return; }
      say("Open the link from your email to see your images.", true);
      $("ask-hint").hidden = false;
      return;
    }
    const reply = await post("/p/api/open", { token });
    if (!reply.ok) { say(explain(reply), true); return; }
    $("code-step").hidden = false;
    if (reply.data.code_pending) $("send-code").textContent = "Send a new code";
    say(reply.data.code_pending
      ? `We have sent you a code by ${reply.data.channel}. Enter it below.`
      : `Press "Send me a code" and we will send you a code by ${reply.data.channel}.`);
  }

  $("send-code").addEventListener("click", async () => {
    const reply = await post("/p/api/code", { token });
    say(reply.ok ? "We have sent you a code. It works for 10 minutes." : explain(reply), !reply.ok);
    if (reply.ok) {
      $("send-code").textContent = "Send a new code";
      $("code").focus();
    }
  });

  $("code-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const code = $("code").value.trim();
    if (!code) { say("Enter the code we sent you.", true); $("code").focus(); return; }
    const reply = await post("/p/api/verify", { token, code });
    if (!reply.ok) { say(explain(reply), true); $("code").focus(); return; }
    csrf = reply.data.csrf;
    token = "";
    $("code").value = "";
    // an upload link: its page sends the images (the session cookie is the same)
    if (reply.data.kind === "upload") { location.assign("/p/upload"); return; }
    if (!(await showShare())) say("You are signed in, but the images could not be loaded. Please try again.", true);
  });

  $("forward-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const email = $("forward-email").value.trim();
    const codeTo = $("forward-code-to").value.trim();
    if (!email || !codeTo) { say("Enter the doctor's email address and where to send their code.", true); return; }
    const reply = await post("/p/api/forward", { email, code_to: codeTo });
    if (reply.ok) {
      $("forward-form").reset();
      say("Sent. The doctor gets an email with a link, and a code to open it.");
    } else {
      say(reply.status === 400 || reply.status === 403 ? "These images could not be sent on. Check the addresses." : explain(reply), true);
    }
  });

  $("sign-out").addEventListener("click", async () => {
    await post("/p/api/sign-out", {});
    csrf = "";
    $("share-step").hidden = true;
    $("studies").replaceChildren();
    say("You have signed out. To see your images again, open the link from your email.");
  });

  // a link opened in a tab already on this page changes only the fragment: load the page anew with it (a
  // clean page: nothing of the previous flow kept). Another site cannot do this to the page: it is served
  // with Cross-Origin-Opener-Policy: same-origin, so a page of another origin holds no reference to it.
  window.addEventListener("hashchange", () => {
    if (location.hash.startsWith("#t=")) location.reload();
  });

  start();
})();
