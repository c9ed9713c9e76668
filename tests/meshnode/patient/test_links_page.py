"""The staff page of patient links: server values only as text (no innerHTML anywhere), every control labelled,
linked from the portal's navigation. (axe runs on the pages in the browser tests.)"""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

import meshnode.web

STATIC = Path(meshnode.web.__file__).parent / "static"


class _Controls(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.depth_label = 0
        self.unlabelled: list[str] = []
        self.ids_for: set[str] = set()
        self.controls: list[tuple[str, str, bool]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "label":
            self.depth_label += 1
            if a.get("for"):
                self.ids_for.add(str(a["for"]))
        if tag in ("input", "select", "textarea"):
            self.controls.append((tag, str(a.get("id") or a.get("name")), self.depth_label > 0 or "aria-label" in a))

    def handle_endtag(self, tag: str) -> None:
        if tag == "label":
            self.depth_label -= 1


def test_every_control_has_a_label() -> None:
    parser = _Controls()
    parser.feed((STATIC / "patient-links.html").read_text(encoding="utf-8"))
    assert parser.controls
    assert [c for c in parser.controls if not c[2] and c[1] not in parser.ids_for] == []


def test_values_go_in_as_text_only() -> None:
    js = (STATIC / "patient-links.js").read_text(encoding="utf-8")
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in js


def test_linked_from_the_portal() -> None:
    for page in ("index.html", "send.html"):
        assert 'href="/ui/patient-links"' in (STATIC / page).read_text(encoding="utf-8")


def test_unlock_asks_a_reason_and_is_the_pacs_teams_and_the_list_pages() -> None:
    js = (STATIC / "patient-links.js").read_text(encoding="utf-8")
    html = (STATIC / "patient-links.html").read_text(encoding="utf-8")
    assert "/unlock`, { reason }" in js and "/unlock`, {})" not in js  # the API refuses an unlock without reason
    assert 'meshPortal.may("queues")' in js  # only the PACS team is offered Unlock (the API answers 403 otherwise)
    assert 'id="unlock"' in html and 'id="older"' in html and 'id="newer"' in html
    assert "offset" in js and "data.more" in js
