"use strict";
// The users page (permission admin): type-ahead search, add, roles, disable/enable, reset password + TOTP.
// A user without the admin permission sees no controls (and the API answers 403 anyway). Server values go
// into the page as text only.
(() => {
  let roles = [];
  const $ = (id) => document.getElementById(id);

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k.startsWith("on")) e.addEventListener(k.slice(2), v); else e.setAttribute(k, v);
    }
    for (const c of children) e.append(c);
    return e;
  }

  function showError(e) { $("error").textContent = e.message || String(e); }

  function showSecret(data) {
    const box = $("secret");
    box.replaceChildren(
      el("p", {}, el("b", {}, `Give these to ${data.user} once (they are not shown again):`)),
      data.password ? el("p", {}, "Password: ", el("code", { "data-field": "password" }, data.password)) : "",
      el("p", {}, "TOTP secret: ", el("code", { "data-field": "totp_secret" }, data.totp_secret)),
      el("p", {}, "Authenticator URI: ", el("code", { "data-field": "totp_uri" }, data.totp_uri)));
    box.hidden = false;
  }

  async function act(method, url, body, after) {
    $("error").textContent = "";
    try {
      const data = await meshPortal.api(method, url, body);
      if (after) after(data);
      await search();
    } catch (e) { showError(e); }
  }

  let editing = null;
  function edit(u) {
    editing = u;
    $("edit-name").textContent = u.name;
    $("edit-display").value = u.display_name;
    $("edit-email").value = u.email;
    const box = $("edit-roles");
    box.replaceChildren(el("legend", {}, "Roles"), ...roles.map((r) => {
      const input = el("input", { type: "checkbox", id: `role-${r}`, value: r });
      input.checked = u.roles.includes(r);
      return el("label", { for: `role-${r}` }, input, ` ${r}`);
    }));
    $("edit-form").hidden = false;
    $("edit-display").focus();
  }

  function row(u) {
    const enc = encodeURIComponent(u.name);
    const actions = el("td", {},
      el("button", { type: "button", class: "secondary", "aria-label": `Edit ${u.name}`, onclick: () => edit(u) },
        "Edit"), " ",
      u.disabled
        ? el("button", { type: "button", class: "secondary", "aria-label": `Enable ${u.name}`,
          onclick: () => act("POST", `/ui/api/users/${enc}/enable`) }, "Enable")
        : el("button", { type: "button", class: "secondary", "aria-label": `Disable ${u.name}`,
          onclick: () => act("POST", `/ui/api/users/${enc}/disable`) }, "Disable"), " ",
      u.source === "local" ? el("button", { type: "button", class: "secondary", "aria-label": `Reset password of ${u.name}`,
        onclick: () => act("POST", `/ui/api/users/${enc}/reset`, undefined, showSecret) }, "Reset password") : "");
    return el("tr", { "data-user": u.name },
      el("td", { class: "mono" }, u.name), el("td", {}, u.display_name), el("td", {}, u.email),
      el("td", {}, u.roles.join(", ")),
      el("td", {}, u.source === "oidc" ? "single sign-on" : "password"),
      el("td", { class: u.disabled ? "bad" : "ok" }, u.disabled ? "disabled" : "active"), actions);
  }

  let pending = null;
  async function search() {
    const q = $("search").value.trim();
    try {
      const data = await meshPortal.api("GET", `/ui/api/users?q=${encodeURIComponent(q)}`);
      roles = data.roles;
      $("users-table").querySelector("tbody").replaceChildren(...data.users.map(row));
    } catch (e) { showError(e); }
  }

  $("edit-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    if (!editing) return;
    const enc = encodeURIComponent(editing.name);
    const chosen = [...$("edit-roles").querySelectorAll("input:checked")].map((i) => i.value);
    $("error").textContent = "";
    try {
      await meshPortal.api("POST", `/ui/api/users/${enc}/profile`,
        { display_name: $("edit-display").value, email: $("edit-email").value.trim() });
      if (chosen.slice().sort().join(",") !== editing.roles.slice().sort().join(",")) {
        await meshPortal.api("POST", `/ui/api/users/${enc}/roles`, { roles: chosen });
      }
      $("edit-form").hidden = true;
      editing = null;
      await search();
    } catch (e) { showError(e); }
  });
  $("edit-cancel").addEventListener("click", () => { $("edit-form").hidden = true; editing = null; });
  $("search").addEventListener("input", () => { clearTimeout(pending); pending = setTimeout(search, 150); });
  $("add-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    act("POST", "/ui/api/users", { name: $("new-name").value.trim(), display_name: $("new-display").value,
      email: $("new-email").value.trim(), roles: [$("new-role").value] }, (data) => {
      showSecret(data);
      ev.target.reset();
    });
  });
  $("logout").addEventListener("click", async () => {
    await meshPortal.api("POST", "/ui/logout");
    window.location.assign("/ui/login");
  });

  (async () => {
    const session = await meshPortal.session();
    $("org").textContent = session.org || "";
    $("who").textContent = session.user ? `${session.user} (${session.roles.join(", ")})` : "";
    if (!session.user) { window.location.assign("/ui/login"); return; }
    if (!meshPortal.may("admin")) { $("denied").hidden = false; return; }
    $("admin").hidden = false;
    await search();
  })();
})();
