"""Text shown through Markdown, escaped so that what a user typed shows as typed."""

from __future__ import annotations

import re

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~:$&=^\"'/])")


def md_escape(text: object) -> str:
    """``text`` as plain text inside Markdown (st.markdown, captions, headings): every character
    Markdown or Streamlit would read as syntax is escaped, so a run name like ``![i](http://x)``
    shows as typed and makes the browser fetch nothing. Control characters become spaces."""
    cleaned = " ".join("".join(ch if ch.isprintable() else " " for ch in str(text)).split())
    return _MD_SPECIAL.sub(r"\\\1", cleaned)
