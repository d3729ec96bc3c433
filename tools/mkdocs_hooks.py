"""MkDocs hook: fill the protocol reference page from the pydantic models."""

from __future__ import annotations

MARKER = "<!-- protocol-reference -->"


def on_page_markdown(markdown: str, **kwargs: object) -> str:
    if MARKER not in markdown:
        return markdown
    from clln.reference import protocol_reference

    return markdown.replace(MARKER, protocol_reference())
