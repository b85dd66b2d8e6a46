"""Untrusted text made safe to show: short excerpts in messages, escaped control characters on terminals.

Specfiles, disk headers, guests and API callers supply names and values that
end up in messages and tables. :func:`excerpt` keeps an echoed value short (a
1 MB value must not become a 1 MB error line); :func:`printable` is the one
escaping every human-readable output path applies, so an ESC sequence in a
``displayName`` cannot retitle, recolour or rewrite the user's terminal. JSON
output needs neither: JSON escapes control characters itself.
"""

from __future__ import annotations

__all__ = ["EXCERPT_CHARS", "MESSAGE_CHARS", "excerpt", "printable", "clip"]

EXCERPT_CHARS = 40  # of a user value echoed in a message
MESSAGE_CHARS = 1000  # of a whole error message or hint: the backstop for an echo that forgot excerpt()
ELLIPSIS = "..."


def excerpt(value: object, limit: int = EXCERPT_CHARS) -> str:
    """``value`` quoted like ``repr`` (control characters escaped), cut to ``limit`` characters + "..."."""
    text = value if isinstance(value, str) else str(value)
    return repr(text[:limit]) + (ELLIPSIS if len(text) > limit else "")


def clip(text: str, limit: int = MESSAGE_CHARS) -> str:
    """``text`` cut to ``limit`` characters, ending in "..." when it was longer."""
    return text if len(text) <= limit else text[:limit - len(ELLIPSIS)] + ELLIPSIS


def printable(value: object) -> str:
    """``value`` as text a terminal only displays: every character it could act on is escaped.

    Escaped are the characters Python does not call printable: C0 and C1
    controls (ESC, CR, BEL...), DEL, line and paragraph separators, format
    characters such as the bidi overrides, surrogates (undecodable bytes) and
    unassigned code points. They become ``\\x1b``, ``\\u202e``... as in ``repr``.
    Backslashes are kept as they are, so Windows paths stay readable.
    """
    text = value if isinstance(value, str) else str(value)
    if text.isprintable():  # the common case, one C-level scan
        return text
    return "".join(ch if ch.isprintable() else _escape(ch) for ch in text)


def _escape(ch: str) -> str:
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"
