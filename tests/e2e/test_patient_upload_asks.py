"""Asking for an upload link, in a real browser against a real node process with a real SMTP server: the
landing page without a link points at /p/ask; the ask form is filled and sent by keyboard alone; nothing is
emailed; the PACS user sees the ask on /ui/uploads and sends the link; the email with the link arrives. axe
finds no serious violation on either page."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from meshnode.demo.mesh import MeshDemo
from meshnode.demo.workspace import free_tcp_port
from tests.e2e.browser import assert_accessible, screenshot, wait
from tests.e2e.web import add_user
from tests.meshnode.notify.smtp_server import SmtpServer

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _mail_text(smtp: SmtpServer, to: str) -> str:
    mails = [m for m in smtp.received if to in m.rcpt_tos]
    return mails[-1].message.get_body(("plain",)).get_content() if mails else ""  # type: ignore[union-attr]


def _tab_to(browser: webdriver.Chrome, element_id: str) -> None:
    """Press Tab until the element has the focus (bounded)."""
    for _ in range(20):
        if browser.switch_to.active_element.get_attribute("id") == element_id:
            return
        ActionChains(browser).send_keys(Keys.TAB).perform()
    raise AssertionError(f"Tab never reached #{element_id}")


def test_ask_by_keyboard_then_the_pacs_user_sends_the_link(tmp_path: Path, mesh: MeshDemo,
                                                           browser: webdriver.Chrome) -> None:
    smtp = SmtpServer(tmp_path / "smtp").start()
    try:
        a = mesh.setup([("a", "RGT", "Org A")], start=False)["a"]
        port = free_tcp_port()
        url = f"http://127.0.0.1:{port}"
        with open(a.home / "node.toml", "a", encoding="utf-8") as f:
            f.write(f'\n[http]\nlisten = "127.0.0.1:{port}"\npublic_url = "{url}"\n'
                    f'\n[notify]\nhost = "127.0.0.1"\nport = {smtp.port}\nca = "{smtp.pki.ca_cert}"\n'
                    'from_address = "imaging-mesh@rgt.nhs.uk"\norg_address = "pacs-team@rgt.nhs.uk"\n'
                    f'\n[patient_access]\nenabled = true\npublic_url = "{url}"\n')
        mesh.start(a)
        pacs = add_user(mesh, a, "pacs1", "pacs")

        # no link: the landing page says where to ask
        browser.get(url + "/p/")
        hint = wait("the no-link hint", lambda: browser.find_element(By.ID, "ask-hint") if browser.find_element(
            By.ID, "ask-hint").is_displayed() else None)
        hint.find_element(By.TAG_NAME, "a").click()
        wait("the ask page", lambda: browser.find_elements(By.ID, "ask-form") or None)
        assert_accessible(browser, "ask page")

        for field, text in (("person", "Ann Patient"), ("email", "ann@example.org"),
                            ("code-to", "ann@example.net"), ("message", "A CD of my MRI from St Elsewhere")):
            _tab_to(browser, field)
            ActionChains(browser).send_keys(text).perform()
        _tab_to(browser, "ask-send")
        ActionChains(browser).send_keys(Keys.ENTER).perform()
        wait("the thanks", lambda: "imaging team will look" in browser.find_element(By.ID, "message-box").text)
        assert not browser.find_element(By.ID, "ask-form").is_displayed()
        assert_accessible(browser, "ask page, sent")
        screenshot(browser, "patient-ask")
        assert _mail_text(smtp, "ann@example.org") == "" and _mail_text(smtp, "ann@example.net") == ""

        # the PACS user sends the link from /ui/uploads
        browser.get(url + "/ui/")
        wait("the portal", lambda: browser.find_element(By.ID, "org").text == "RGT")
        browser.find_element(By.ID, "token").send_keys(pacs + Keys.ENTER)
        wait("the login", lambda: "pacs1" in browser.find_element(By.ID, "who").text)
        browser.get(url + "/ui/uploads")
        wait("the ask", lambda: "Ann Patient asked" in browser.find_element(By.ID, "ask-list").text)
        listed = browser.find_element(By.ID, "ask-list").text
        assert "ann@example.net" in listed and "St Elsewhere" in listed
        assert_accessible(browser, "uploads page with an ask")
        screenshot(browser, "portal-upload-asks")
        [send] = [b for b in browser.find_elements(By.CSS_SELECTOR, "#ask-list button")
                  if b.text == "Send an upload link"]
        send.click()
        wait("sent", lambda: "Upload link sent" in browser.find_element(By.ID, "status").text)
        wait("the empty list", lambda: browser.find_element(By.ID, "asks-empty").is_displayed())
        mail = mesh.wait_for(lambda: _mail_text(smtp, "ann@example.org"), 30, "the link email")
        assert re.search(r"/p/#t=[A-Za-z0-9_-]{43}", mail)
    finally:
        smtp.stop()
