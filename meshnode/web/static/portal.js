"use strict";
// What every portal page shares: the session (who, permissions, the anti-CSRF token) and a fetch wrapper
// that sends the token on every state-changing request. Values from the server go into pages as text only.
//   const s = await meshPortal.session();          // {user, roles, permissions, csrf, org, ...}
//   const data = await meshPortal.api("POST", "/ui/api/...", {key: "value"});  // throws meshPortal.ApiError
window.meshPortal = (() => {
  let current = null;

  class ApiError extends Error {
    constructor(status, message, code) { super(message); this.status = status; this.code = code || ""; }
  }

  async function session(refresh) {
    if (current && !refresh) return current;
    const response = await fetch("/ui/api/session", { credentials: "same-origin" });
    current = await response.json();
    return current;
  }

  // options.background: an automatic refresh, not the person's action (X-Meshnode-Background: the server does
  // not count it as activity, so an unattended page does not keep its session alive past the idle limit)
  async function api(method, url, body, options) {
    const headers = {};
    if (options && options.background) headers["X-Meshnode-Background"] = "1";
    if (method !== "GET" && method !== "HEAD") {
      headers["X-CSRF-Token"] = (await session()).csrf || "";
    }
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(url, {
      method, credentials: "same-origin", headers, body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await response.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch (e) { data = text; }
    if (!response.ok) {
      const message = data && data.message ? data.message : `HTTP ${response.status}`;
      throw new ApiError(response.status, message, data && data.error);
    }
    return data;
  }

  function may(permission) { return !!current && (current.permissions || []).includes(permission); }

  return { session, api, may, ApiError };
})();
