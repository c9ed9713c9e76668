// The ask form (/p/ask): a person asks the imaging team for a link to send images. Nothing is sent to the
// addresses now: the team decides. Values from the server go into the page as text only (textContent).
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);

  function say(text, error) {
    const m = $("message-box");
    m.textContent = text;
    m.classList.toggle("error", Boolean(error));
    m.setAttribute("role", error ? "alert" : "status");
  }

  function explain(status, data) {
    if (status === 0) return "We could not reach the server. Check your internet connection and try again.";
    if (status === 429) return "Too many requests from your connection: try again in a minute.";
    if (status === 503) return (data && data.message) || "The service is busy: please try again later.";
    if (status === 400 && data && data.message) return "Please check the form: " + data.message;
    return "Something went wrong: please try again later.";
  }

  function counted() {
    const left = 500 - $("message").value.length;
    $("message-count").textContent = `${left} characters left`;
  }

  async function submit(event) {
    event.preventDefault();
    const form = $("ask-form");
    const body = { person: $("person").value, email: $("email").value, code_to: $("code-to").value,
                   message: $("message").value };
    for (const [id, value] of [["person", body.person], ["email", body.email], ["code-to", body.code_to],
                               ["message", body.message]]) {
      if (!value.trim()) {
        say("Please fill in every field.", true);
        $(id).focus();
        return;
      }
    }
    $("ask-send").disabled = true;
    let status = 0;
    let data = {};
    try {
      const response = await fetch("/p/api/upload-requests", {
        method: "POST", credentials: "same-origin", headers: { "Content-Type": "application/json" },
        body: JSON.stringify(body) });
      status = response.status;
      try { data = await response.json(); } catch (e) { data = {}; }
    } catch (e) {
      status = 0;
    }
    $("ask-send").disabled = false;
    if (status === 202) {
      form.hidden = true;
      say("Thank you: the imaging team will look at your request. If they can help, you will get an email with " +
          "a link, and a code on your phone or second email.");
      $("message-box").focus();
      return;
    }
    say(explain(status, data), true);
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("message-box").tabIndex = -1;
    $("ask-form").addEventListener("submit", submit);
    $("message").addEventListener("input", counted);
  });
})();
