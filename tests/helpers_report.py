"""The report tests' reading of a page: `Elements`, every start tag of a document. Fabricated job outputs are
`ttsvar.testing.fabricate_run`; the headless browser is `ttsvar.report.browser`."""

from __future__ import annotations

from html.parser import HTMLParser


class Elements(HTMLParser):
    """Every start tag of a document as (tag, attributes, classes), in document order."""

    def __init__(self, html: str):
        super().__init__()
        self.items: list[tuple[str, dict[str, str], set[str]]] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        a = {k: v or "" for k, v in attrs}
        self.items.append((tag, a, set(a.get("class", "").split())))

    def having(self, cls: str, tag: str | None = None) -> list[dict[str, str]]:
        return [a for t, a, c in self.items if cls in c and (tag is None or t == tag)]
