"""HTML: the page's main content and its title (trafilatura: boilerplate such as menus, footers and cookie notices
removed, as the readers of search engines do), else all of its visible text."""

from __future__ import annotations

import functools

from searchsvc.ingest.extract.base import Extracted, ExtractionLimits, Unit
from searchsvc.ingest.extract.plain import decode


@functools.cache
def _config():
    """trafilatura's settings, with its minimum article size lowered from 250 characters: below it, trafilatura
    falls back to a baseline that keeps menus and footers, and a short notice page is common."""
    from trafilatura.settings import use_config

    config = use_config()
    config.set("DEFAULT", "MIN_EXTRACTED_SIZE", "20")
    config.set("DEFAULT", "MIN_OUTPUT_SIZE", "1")
    return config


def read(data: bytes, limits: ExtractionLimits) -> Extracted:
    import trafilatura
    from lxml import html as lxml_html

    markup = decode(data, limits, "HTML")
    try:
        tree = lxml_html.fromstring(markup)
    except Exception:  # lxml's ParserError on an empty or non-HTML document
        tree = None
    text = trafilatura.extract(markup, include_comments=False, include_tables=True, config=_config()) or ""
    # The page's <title>, as browsers and search engines show it; trafilatura's guess (often the first <h1>) else.
    title = (tree.findtext(".//title") if tree is not None else "") or ""
    if not title.strip():
        metadata = trafilatura.extract_metadata(markup)
        title = metadata.title if metadata is not None and metadata.title else ""
    if not text.strip() and tree is not None:  # a page trafilatura finds no article in (a list, a form)
        for node in tree.xpath("//script|//style|//noscript"):
            node.drop_tree()
        text = "\n".join(line.strip() for line in tree.text_content().splitlines() if line.strip())
    return Extracted("html", [Unit(text, {"page": 1})], " ".join(title.split()))
