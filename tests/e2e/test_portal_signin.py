"""Signing in to the portal in a real headless Chromium, against a real node process: password + TOTP (the
code computed with pyotp), the users page for an admin (type-ahead, add, role, reset), a clinician kept out
of it, CSRF enforced from the page's own origin, sign-out; then single sign-on through a real OpenID Connect
provider's pages (node-oidc-provider) and a session that ends when idle. Both pages pass axe-core and are
kept as screenshots (portal-signin, portal-users)."""

from __future__ import annotations

import time
from typing import Any

import pyotp
import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By

from meshnode.demo.mesh import MeshDemo
from meshnode.demo.workspace import free_tcp_port
from tests.e2e.browser import assert_accessible, screenshot, wait
from tests.e2e.oidc import SECRET, oidc_provider
from tests.e2e.web import http_url

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def configure(node: Any, port: int, extra: str = "") -> None:
    with open(node.home / "node.toml", "a", encoding="utf-8") as f:
        f.write(f'\n[http]\nlisten = "127.0.0.1:{port}"\n{extra}\n')


def fresh_code(secret: str) -> str:
    """A code of a time step not used yet by this test's sign-ins (each step is good once)."""
    step = int(time.time()) // 30
    while int(time.time()) // 30 == step and time.time() % 30 > 27:
        time.sleep(0.2)  # too close to the step's end: the node may see the next step; wait for it
    return pyotp.TOTP(secret).now()


def sign_in(browser: webdriver.Chrome, url: str, user: str, password: str, secret: str) -> None:
    browser.get(url + "/ui/login")
    wait("the sign-in form", lambda: browser.find_element(By.ID, "user"))
    browser.find_element(By.ID, "user").send_keys(user)
    browser.find_element(By.ID, "password").send_keys(password)
    browser.find_element(By.ID, "code").send_keys(fresh_code(secret))
    browser.find_element(By.CSS_SELECTOR, "#password-form button").click()
    wait(f"{user} signed in", lambda: user in browser.find_element(By.ID, "who").text
         if browser.current_url.rstrip("/").endswith("/ui") else None)


def fetch_status(browser: webdriver.Chrome, method: str, path: str, csrf: bool) -> int:
    """A request from the page itself (same origin, the session cookie), with or without the CSRF header."""
    return int(browser.execute_async_script(
        "const [method, path, csrf, done] = arguments;"
        "const s = await (await fetch('/ui/api/session')).json();"
        "const headers = {'Content-Type': 'application/json'}; if (csrf) headers['X-CSRF-Token'] = s.csrf;"
        "const r = await fetch(path, {method, headers, credentials: 'same-origin',"
        " body: method === 'GET' ? undefined : JSON.stringify({name: 'mallory', roles: ['admin']})});"
        "done(r.status);", method, path, csrf))


def session_user(browser: webdriver.Chrome) -> object:
    return browser.execute_async_script(
        "const done = arguments[0]; fetch('/ui/api/session').then(r => r.json()).then(s => done(s.user));")


def audit_text(mesh: MeshDemo, node: Any) -> str:
    return mesh.ws.run("meshnode", "audit", "export", "--home", str(node.home), "--json").stdout


def test_password_totp_users_page_and_clinician(mesh: MeshDemo, browser: webdriver.Chrome) -> None:
    a = mesh.setup([("a", "RGT", "Org A")], start=False)["a"]
    configure(a, free_tcp_port())
    mesh.start(a)
    url = http_url(a)
    mesh.cli(a, "users", "add", "root", "--role", "admin", "--display-name", "Ada Admin")
    root = mesh.cli(a, "users", "password", "root", "--generate")
    mesh.cli(a, "users", "add", "carol", "--role", "clinician", "--display-name", "Carol Clinician",
             "--email", "carol@example.nhs.uk")
    carol = mesh.cli(a, "users", "password", "carol", "--generate")

    browser.get(url + "/ui/login")
    wait("the sign-in page", lambda: browser.find_element(By.ID, "org").text == "RGT")
    assert_accessible(browser, "sign-in page")
    # a wrong code is refused, with the message on the page
    browser.find_element(By.ID, "user").send_keys("root")
    browser.find_element(By.ID, "password").send_keys(root["password"])
    browser.find_element(By.ID, "code").send_keys("000000" if pyotp.TOTP(root["totp_secret"]).now() != "000000"
                                                  else "111111")
    browser.find_element(By.CSS_SELECTOR, "#password-form button").click()
    wait("the refusal", lambda: "wrong user name, password or code" in browser.find_element(By.ID, "error").text)
    assert session_user(browser) is None

    sign_in(browser, url, "root", root["password"], root["totp_secret"])
    assert "meshnode_session" not in str(browser.execute_script("return document.cookie"))  # HttpOnly
    wait("the users link for an admin", lambda: browser.find_element(By.ID, "users-link").is_displayed())
    browser.get(url + "/ui/users")
    wait("the users table", lambda: browser.find_elements(By.CSS_SELECTOR, '#users-table tr[data-user="carol"]'))
    search = browser.find_element(By.ID, "search")
    search.send_keys("clinic")
    wait("type-ahead narrowing to carol", lambda: [r.get_attribute("data-user") for r in browser.find_elements(
        By.CSS_SELECTOR, "#users-table tbody tr")] == ["carol"])
    browser.find_element(By.ID, "new-name").send_keys("dave")
    browser.find_element(By.ID, "new-display").send_keys("Dave PACS")
    browser.find_element(By.ID, "new-role").send_keys("pacs")
    browser.find_element(By.CSS_SELECTOR, "#add-form button").click()
    wait("the new user's one-time secrets", lambda: browser.find_element(By.ID, "secret").is_displayed())
    assert browser.find_element(By.CSS_SELECTOR, '#secret [data-field="totp_uri"]').text.startswith("otpauth://")
    search.clear()
    search.send_keys("da")
    wait("dave in the table", lambda: browser.find_elements(By.CSS_SELECTOR, '#users-table tr[data-user="dave"]'))
    # edit carol: another role and an email address (the panel's form)
    search.clear()
    search.send_keys("carol")
    wait("carol alone", lambda: [r.get_attribute("data-user") for r in browser.find_elements(
        By.CSS_SELECTOR, "#users-table tbody tr")] == ["carol"])
    browser.find_element(By.CSS_SELECTOR, 'button[aria-label="Edit carol"]').click()
    wait("the edit form", lambda: browser.find_element(By.ID, "edit-form").is_displayed())
    assert_accessible(browser, "users page")
    screenshot(browser, "portal-users")
    browser.find_element(By.ID, "role-auditor").click()
    email = browser.find_element(By.ID, "edit-email")
    email.clear()
    email.send_keys("c.clinician@example.nhs.uk")
    browser.find_element(By.CSS_SELECTOR, "#edit-form button[type=submit]").click()
    wait("the edit saved", lambda: not browser.find_element(By.ID, "edit-form").is_displayed())
    carol_now = next(u for u in mesh.cli(a, "users", "list") if u["name"] == "carol")
    assert carol_now["roles"] == ["clinician", "auditor"] and carol_now["email"] == "c.clinician@example.nhs.uk"
    listed = {u["name"]: u for u in mesh.cli(a, "users", "list")}
    assert listed["dave"]["roles"] == ["pacs"] and listed["dave"]["display_name"] == "Dave PACS"
    # CSRF: the page's own origin, the session cookie, but no token: refused; with it: accepted
    assert fetch_status(browser, "POST", "/ui/api/users", csrf=False) == 403
    assert "mallory" not in {u["name"] for u in mesh.cli(a, "users", "list")}
    assert fetch_status(browser, "POST", "/ui/api/users", csrf=True) == 200
    browser.find_element(By.ID, "logout").click()
    wait("the sign-in page after sign-out", lambda: browser.current_url.endswith("/ui/login"))
    assert session_user(browser) is None

    sign_in(browser, url, "carol", carol["password"], carol["totp_secret"])
    assert not browser.find_element(By.ID, "users-link").is_displayed()
    browser.get(url + "/ui/users")
    wait("the refusal on the users page", lambda: browser.find_element(By.ID, "denied").is_displayed())
    assert not browser.find_element(By.ID, "admin").is_displayed()
    assert not browser.find_elements(By.CSS_SELECTOR, "#users-table tbody tr")
    assert fetch_status(browser, "GET", "/ui/api/users", csrf=True) == 403
    assert fetch_status(browser, "POST", "/ui/api/users", csrf=True) == 403
    text = audit_text(mesh, a)
    assert "user:root" in text and "user:carol" in text and "password+totp" in text


def test_single_sign_on_and_idle_expiry(mesh: MeshDemo, browser: webdriver.Chrome) -> None:
    a = mesh.setup([("a", "RGT", "Org A")], start=False)["a"]
    port = free_tcp_port()
    redirect = f"http://127.0.0.1:{port}/ui/oidc/callback"
    with oidc_provider(redirect) as provider:
        (a.home / "oidc.secret").write_text(SECRET)
        configure(a, port, "session_idle_seconds = 6\n[http.oidc]\n"
                  f'issuer = "{provider.issuer}"\nclient_id = "meshnode"\nclient_secret_file = "oidc.secret"\n'
                  f'redirect_url = "{redirect}"\nrole_claim = "roles"\nlabel = "Trust single sign-on"\n'
                  'scopes = ["openid", "profile", "email", "roles"]\n'
                  '[http.oidc.roles]\n"imaging-clinicians" = "clinician"\n"mesh-admins" = "admin"\n')
        mesh.start(a)
        url = http_url(a)
        browser.get(url + "/ui/login")
        link = wait("the single sign-on link", lambda: browser.find_element(By.ID, "oidc-link")
                    if browser.find_element(By.ID, "oidc-link").is_displayed() else None)
        assert link.text == "Trust single sign-on"
        assert_accessible(browser, "sign-in page with single sign-on")
        screenshot(browser, "portal-signin")
        link.click()
        # the provider's own sign-in page (its development interactions: any password)
        wait("the provider's login form", lambda: browser.find_element(By.NAME, "login"))
        assert browser.current_url.startswith(provider.issuer)
        browser.find_element(By.NAME, "login").send_keys("dr.jones")
        browser.find_element(By.NAME, "password").send_keys("anything")
        browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        wait("back at the portal, signed in", lambda: "dr.jones" in browser.find_element(By.ID, "who").text
             if browser.current_url.rstrip("/").endswith("/ui") else None)
        user = next(u for u in mesh.cli(a, "users", "list") if u["name"] == "dr.jones")
        assert user["source"] == "oidc" and user["roles"] == ["clinician"] and user["display_name"] == "Dr Alex Jones"
        assert fetch_status(browser, "GET", "/ui/api/users", csrf=True) == 403
        # idle for longer than session_idle_seconds (the live inbox stream does not count as activity)
        time.sleep(8)  # the idle timeout itself is what is tested: real time has to pass
        assert session_user(browser) is None
        audit = audit_text(mesh, a)
        assert "user:dr.jones" in audit and "oidc" in audit
