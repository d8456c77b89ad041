"""The HTML shell of each UI page; static/app.js renders its content from the JSON API."""

from __future__ import annotations

from html import escape

#: page name -> title in the navigation bar ("runs" is served at /).
PAGES = {
    "runs": "Runs",
    "run": "Run",
    "compare": "Compare",
    "new": "New run",
    "registry": "Registry",
    "monitor": "Monitor",
    "playground": "Playground",
}
NAV = ("runs", "new", "compare", "registry", "monitor", "playground")


def page(name: str) -> str:
    """A page: navigation, an empty <main> that app.js fills, and the shipped assets."""
    links = "".join(
        f'<a href="{"/" if n == "runs" else "/" + n}"{" class=on" if n == name else ""}>'
        f"{escape(PAGES[n])}</a>"
        for n in NAV
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>lmtune · {escape(PAGES[name])}</title>
<link rel="stylesheet" href="/static/style.css">
</head><body>
<header><b>lmtune</b><nav>{links}</nav></header>
<main id="app" data-page="{escape(name)}"><p class="muted">loading…</p></main>
<script src="/static/chart.js"></script>
<script src="/static/app.js"></script>
</body></html>"""
