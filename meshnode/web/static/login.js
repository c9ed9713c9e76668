"use strict";
// The sign-in page: password + TOTP code, or an API token, or the single sign-on link (when the node offers
// it). Messages from the server go into the page as text only.
(() => {
  const error = document.getElementById("error");

  async function post(body) {
    error.textContent = "";
    const response = await fetch("/ui/login", {
      method: "POST", credentials: "same-origin", headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    if (response.ok) {
      window.location.assign("/ui/");
      return;
    }
    let message = `Sign-in failed (HTTP ${response.status})`;
    try { message = (await response.json()).message || message; } catch (e) { /* not JSON */ }
    error.textContent = message;
  }

  document.getElementById("password-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const f = ev.target;
    post({ user: f.user.value.trim(), password: f.password.value, code: f.code.value.trim() });
    f.code.value = "";
  });
  document.getElementById("token-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    post({ token: ev.target.token.value.trim() });
  });

  (async () => {
    const session = await meshPortal.session();
    document.getElementById("org").textContent = session.org || "";
    const methods = await (await fetch("/ui/api/signin", { credentials: "same-origin" })).json();
    if (methods.oidc) {
      document.getElementById("oidc-link").textContent = methods.oidc;
      document.getElementById("oidc").hidden = false;
    }
  })();
})();
