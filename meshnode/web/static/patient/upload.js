"use strict";
// The uploader's page: pick or drop a folder, a ZIP or files; each goes up by tus 1.0.0 (core, creation,
// termination) to /p/api/uploads and resumes after a dropped connection (HEAD for the server's offset, then
// PATCH from there). The tus client is hand-written (about 60 lines): the page needs only these three parts
// of the protocol, and the project's rule for npm browser assets (built from pinned versions by a script and
// committed) would add a build step and a bundle for less than this file. Values go in as text only.
(() => {
  const API = "/p/api/uploads";
  const CHUNK = 16 << 20;
  const RETRIES = 8;
  const $ = (id) => document.getElementById(id);
  let queue = [];  // [{file, name}]
  let csrf = "";  // the patient session's anti-CSRF token (GET /p/api/uploads gives it)

  function b64(text) { return btoa(String.fromCharCode(...new TextEncoder().encode(text))); }
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

  async function tus(method, url, headers, body) {
    const response = await fetch(url, {
      method, body, credentials: "same-origin", headers: { "Tus-Resumable": "1.0.0", "X-CSRF-Token": csrf, ...headers },
    });
    if (response.status === 429) {  // the public pages' rate limit: wait as told, then the caller retries
      await sleep(1000 * Math.min(60, Number(response.headers.get("Retry-After")) || 5));
    }
    return response;
  }

  async function message(response) {
    try { return (await response.json()).message || `HTTP ${response.status}`; } catch (e) { return `HTTP ${response.status}`; }
  }

  // one file: create, then PATCH chunks; after a network error ask HEAD for the durable offset and go on
  async function send(item, progress) {
    const created = await tus("POST", API, {
      "Upload-Length": String(item.file.size), "Upload-Metadata": `filename ${b64(item.name)}`,
    });
    if (created.status !== 201) throw new Error(await message(created));
    const url = created.headers.get("Location");
    let offset = 0;
    let failures = 0;
    while (offset < item.file.size) {  // (an empty file is complete, and checked, as created)
      try {
        const end = Math.min(offset + CHUNK, item.file.size);
        const r = await tus("PATCH", url, {
          "Content-Type": "application/offset+octet-stream", "Upload-Offset": String(offset),
        }, item.file.slice(offset, end));
        if (r.status === 409 || r.status === 429 || r.status >= 500) {  // back off, a bounded number of times
          const why = await message(r);
          if (++failures > RETRIES) throw new Error(why);
          await sleep(Math.min(30000, 500 * 2 ** failures));
          offset = await durableOffset(url);
          if (r.status >= 500 && offset >= item.file.size) {  // all bytes arrived, but no verdict came back
            throw new Error(`all of it arrived, but the node could not finish checking it (${why})`);
          }
          continue;
        }
        if (r.status !== 204) throw new Error(await message(r));
        offset = Number(r.headers.get("Upload-Offset"));
        failures = 0;
        progress(offset);
      } catch (e) {
        if (!(e instanceof TypeError) || ++failures > RETRIES) throw e;  // TypeError: the network dropped
        $("status").textContent = "The connection dropped; resuming...";
        await sleep(Math.min(30000, 500 * 2 ** failures));
        offset = await durableOffset(url);
      }
    }
  }

  async function durableOffset(url) {
    const r = await tus("HEAD", url, {});
    if (r.status !== 200) throw new Error("the upload cannot be resumed: " + r.status);
    return Number(r.headers.get("Upload-Offset"));
  }

  // a dropped folder: walk its entries (webkitGetAsEntry), keeping each file's relative path as its name
  async function walk(entry, prefix, out) {
    if (entry.isFile) {
      out.push({ file: await new Promise((ok, no) => entry.file(ok, no)), name: prefix + entry.name });
    } else if (entry.isDirectory) {
      const reader = entry.createReader();
      for (;;) {
        const batch = await new Promise((ok, no) => reader.readEntries(ok, no));
        if (!batch.length) break;
        for (const child of batch) await walk(child, prefix + entry.name + "/", out);
      }
    }
  }

  function add(items) {
    queue = queue.concat(items);
    $("count").textContent = `${queue.length} file(s) ready to send`;
    $("send").disabled = queue.length === 0;
  }

  // the results; returns how many uploads the node is still checking (0 when none, or on an error)
  async function results() {
    const r = await fetch(API, { credentials: "same-origin" });
    if (!r.ok) {
      if (r.status === 401) $("error").textContent = "You are not signed in: open the link from your email again.";
      return 0;
    }
    const data = await r.json();
    csrf = data.csrf || csrf;
    const body = $("results");
    body.replaceChildren(...data.files.map((f) => {
      const row = document.createElement("tr");
      const words = { accepted: "Received", refused: "Refused", skipped: "Skipped" };
      for (const [text, cls] of [[f.name, ""], [words[f.outcome] || f.outcome, f.outcome], [f.reason, ""]]) {
        const cell = document.createElement("td");
        cell.textContent = text;
        if (cls) cell.className = cls;
        row.append(cell);
      }
      return row;
    }));
    return (data.uploads || []).filter((u) => u.state === "checking").length;
  }

  async function sendAll() {
    $("send").disabled = true;
    $("error").textContent = "";
    const items = queue;
    queue = [];
    const total = items.reduce((n, i) => n + i.file.size, 0) || 1;
    let done = 0;
    $("progress").max = total;
    for (const item of items) {
      $("status").textContent = `Sending ${item.name}...`;
      try {
        await send(item, (offset) => { $("progress").value = done + offset; });
      } catch (e) {
        $("error").textContent = `${item.name}: ${e.message}`;
      }
      done += item.file.size;
      $("progress").value = done;
      await results();
    }
    // a large ZIP may still be checked after its last bytes arrived (its request may have timed out)
    let checking = 0;
    for (let i = 0; i < 600; i++) {
      checking = await results();
      if (!checking) break;
      $("status").textContent = `Checking ${checking} upload(s)...`;
      await sleep(3000);
    }
    $("status").textContent = checking
      ? `${checking} upload(s) are still not checked. Come back to this page later, or contact the hospital.`
      : "Done. The results are below.";
    $("count").textContent = "";
  }

  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", async (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    const out = [];
    const entries = [...e.dataTransfer.items].map((i) => i.webkitGetAsEntry && i.webkitGetAsEntry()).filter(Boolean);
    if (entries.length) { for (const entry of entries) await walk(entry, "", out); }
    else { for (const f of e.dataTransfer.files) out.push({ file: f, name: f.name }); }
    add(out);
  });
  for (const id of ["pick-files", "pick-folder"]) {
    $(id).addEventListener("change", (e) => {
      add([...e.target.files].map((f) => ({ file: f, name: f.webkitRelativePath || f.name })));
    });
  }
  $("send").addEventListener("click", sendAll);
  results();
})();
