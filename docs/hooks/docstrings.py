"""An MkDocs hook for the API reference: the docstrings are written in reStructuredText's
inline markup (``:class:`Machine```, a paragraph ending in ``::`` before a literal block),
which Markdown renders as it is. This turns the roles into plain code and the ``::`` into ``:``
in the rendered pages, so the docstrings stay as the code has them."""

from __future__ import annotations

import re
from typing import Any

_ROLE = re.compile(r":(?:class|func|meth|mod|data|attr|exc|obj|py:\w+):(<code>)~?(?:[\w.]+\.)?([^<]*</code>)")
_LITERAL = re.compile(r"::(</p>)")


def on_page_content(html: str, **kwargs: Any) -> str:
    """Plain code for each role, and one colon before a literal block."""
    return _LITERAL.sub(r":\1", _ROLE.sub(r"\1\2", html))
