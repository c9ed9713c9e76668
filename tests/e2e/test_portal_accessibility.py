"""The node's existing pages in a real headless Chromium: every tab passes axe-core (no serious or critical
WCAG 2.1 A/AA violation) and works by keyboard; the arrival email of a real exchange reaches a real SMTP
server over STARTTLS and links to the inbox row, which shows the sender's `attention` and `note`.

Org A (RGT) shares a study with org B (RJ1) for the attention of a person at B, with a note. B has [notify]
pointing at an aiosmtpd server the test starts (STARTTLS required, login), its HTTP listener at a known
public_url. The email carries no patient identifiers; following its link in the browser opens B's inbox at
that row. Screenshots: test-artifacts/portal-inbox.png and one per tab.
"""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from meshnode.demo.mesh import MeshDemo
from meshnode.demo.workspace import free_tcp_port
from tests.e2e.browser import assert_accessible, screenshot, wait
from tests.e2e.web import add_user
from tests.meshnode.notify.smtp_server import SmtpServer

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ATTENTION = "k.lee@rj1.nhs.uk"
NOTE = "Compare with the CT of last week, please. Bleep 4412."
TABS = ("inbox", "outbox", "peers", "audit", "reconcile", "conflicts")


def notify_section(smtp: SmtpServer, home: Path) -> str:
    (home / "smtp.password").write_text("s3cret-password\n", encoding="utf-8")
    return (f'\n[notify]\nhost = "127.0.0.1"\nport = {smtp.port}\nca = "{smtp.pki.ca_cert}"\n'
            'username = "rj1-gw"\npassword_file = "smtp.password"\nfrom_address = "imaging-mesh@rj1.nhs.uk"\n'
            'org_address = "pacs-team@rj1.nhs.uk"\nattention_domains = ["rj1.nhs.uk"]\n')


def active_tab(driver: webdriver.Chrome) -> str | None:
    current = driver.find_elements(By.CSS_SELECTOR, 'nav a[aria-current="page"]')
    return current[0].get_attribute("data-page") if len(current) == 1 else None


def test_every_tab_is_accessible_and_the_arrival_email_links_to_the_inbox_row(
        tmp_path: Path, mesh: MeshDemo, browser: webdriver.Chrome) -> None:
    smtp = SmtpServer(tmp_path / "smtp", users={"rj1-gw": "s3cret-password"}).start()
    try:
        nodes = mesh.setup([("a", "RGT", "Org A"), ("b", "RJ1", "Org B")], start=False)
        a, b = nodes["a"], nodes["b"]
        port = free_tcp_port()
        url = f"http://127.0.0.1:{port}"
        with open(b.home / "node.toml", "a", encoding="utf-8") as f:
            f.write(f'\n[http]\nlisten = "127.0.0.1:{port}"\npublic_url = "{url}"\n' + notify_section(smtp, b.home))
        mesh.start(a)
        mesh.start(b)
        # pacs too: the Reconcile and Conflicts tabs are shown only to users with the queues permission
        token = add_user(mesh, b, "radiologist", "read", "audit", "pacs")

        study, _ = mesh.generate_and_ingest(a, 4, rows=128, columns=128)
        shared = mesh.cli(a, "share", study, "--to", "RJ1", "--priority", "urgent", "--attention", ATTENTION,
                          "--note", NOTE)
        manifest = str(shared["manifest_id"])

        # the arrival email: over STARTTLS with the login, to the allow-listed person, no patient identifiers
        mesh.wait_for(lambda: smtp.received, 120, "the arrival email")
        [mail] = smtp.received
        assert mail.tls and mail.login == "rj1-gw" and mail.rcpt_tos == (ATTENTION,)
        body = mail.message.get_content()
        link = f"{url}/ui/#inbox?manifest={manifest}"
        assert link in body and "URGENT" in mail.message["Subject"] and "RGT" in mail.message["Subject"]
        for identifier in ("SYNTHETIC", study, NOTE, "Bleep"):
            assert identifier not in mail.data.decode("utf-8", "replace")

        mesh.wait_for(lambda: 'meshnode_email_notifications{state="delivered"} 1' in urllib.request.urlopen(
            url + "/metrics", timeout=10).read().decode(), 30, "the email counted as sent in /metrics")

        browser.get(url + "/ui/")
        wait("the page", lambda: browser.find_element(By.ID, "org").text == "RJ1")
        browser.find_element(By.ID, "token").send_keys(token + Keys.ENTER)  # the login form, by keyboard
        wait("the login", lambda: "radiologist" in browser.find_element(By.ID, "who").text)

        # the email's link opens the inbox at that row, which shows who it is for and the note
        browser.get(link)
        row = wait("the linked row", lambda: browser.find_element(
            By.CSS_SELECTOR, f'#inbox-table tr.selected[data-manifest="{manifest}"]'))
        assert row.get_attribute("aria-current") == "true"
        wait("the row's attention and note", lambda: ATTENTION in row.text and NOTE in row.text)
        assert active_tab(browser) == "inbox"

        for tab in TABS:
            # keyboard: the nav link takes focus (with a visible outline) and Enter opens its page
            link_el = browser.find_element(By.CSS_SELECTOR, f'nav a[data-page="{tab}"]')
            link_el.send_keys("")  # focus it
            assert browser.switch_to.active_element == link_el
            outline = browser.execute_script(
                "const s = getComputedStyle(arguments[0]); return [s.outlineStyle, s.outlineWidth];", link_el)
            assert outline[0] != "none" and outline[1] not in ("0px", ""), outline
            link_el.send_keys(Keys.ENTER)
            wait(f"the {tab} page", lambda: active_tab(browser) == tab
                 and browser.find_element(By.ID, f"page-{tab}").is_displayed())
            wait(f"the {tab} page's content", lambda: browser.execute_script(
                "const p = document.getElementById(arguments[0]);"
                "return p.querySelector('tbody tr') !== null || !p.querySelector('.empty').hidden"
                " || !document.getElementById('notice').hidden;", f"page-{tab}"))
            if tab == "audit":
                wait("the audit chain", lambda: "Chain intact" in browser.find_element(By.ID, "chain").text)
            assert_accessible(browser, f"{tab} page")
            screenshot(browser, f"portal-{tab}")

        browser.get(link)
        wait("the linked row again", lambda: browser.find_elements(
            By.CSS_SELECTOR, f'#inbox-table tr.selected[data-manifest="{manifest}"]'))
        screenshot(browser, "portal-inbox")

        # signed out, the public status page shows the row but not the note or the person it is for
        browser.find_element(By.ID, "logout").send_keys(Keys.ENTER)
        wait("the logout", lambda: browser.find_element(By.ID, "login").is_displayed())
        wait("the inbox rendered without a login", lambda: [
            r for r in browser.find_elements(By.CSS_SELECTOR, f'#inbox-table tr[data-manifest="{manifest}"]')
            if r.find_elements(By.TAG_NAME, "td")[3].text == "\u2014"])
        source = browser.page_source
        for secret in (NOTE, ATTENTION):
            assert secret not in source, source[max(0, source.find(secret) - 600):source.find(secret) + 200]
        assert_accessible(browser, "inbox page signed out")
    finally:
        smtp.stop()
