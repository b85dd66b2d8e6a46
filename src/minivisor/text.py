"""Untrusted text made safe to show: short excerpts in messages, escaped control characters on terminals.

Specfiles, disk headers, guests and API callers supply names and values that
end up in messages and tables, and numbers: :func:`is_number` says which text int() takes as one. :func:`excerpt` keeps an echoed value short (a
1 MB value must not become a 1 MB error line); :func:`printable` is the one
escaping every human-readable output path applies, so an ESC sequence in a
``displayName`` cannot retitle, recolour or rewrite the user's terminal. JSON
output needs neither: JSON escapes control characters itself.
"""

from __future__ import annotations

__all__ = ["EXCERPT_CHARS", "MESSAGE_CHARS", "excerpt", "printable", "clip", "is_number", "READY_MAX"]

EXCERPT_CHARS = 40  # of a user value echoed in a message
MESSAGE_CHARS = 1000  # of a whole error message or hint: the backstop for an echo that forgot excerpt()
# Characters of a guest's ready line kept: the guest chooses its length, and the line travels on (the console
# relay notes it; every snapshot with memory and every migration request carries it, which the destination checks).
READY_MAX = 512
ELLIPSIS = "..."


def excerpt(value: object, limit: int = EXCERPT_CHARS) -> str:
    """``value`` quoted like ``repr`` (control characters escaped) in at most ``limit`` characters
    between the quotes, followed by "..." when that is not all of it."""
    text = value if isinstance(value, str) else str(value)
    # escapes make the quoted form longer than the text: keep as many characters as fit
    low, high = 0, min(len(text), limit)
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if len(repr(text[:middle])) <= limit + 2 else (low, middle - 1)
    return repr(text[:low]) + (ELLIPSIS if low < len(text) else "")


def clip(text: str, limit: int = MESSAGE_CHARS) -> str:
    """``text`` cut to ``limit`` characters, ending in "..." when it was longer."""
    return text if len(text) <= limit else text[:limit - len(ELLIPSIS)] + ELLIPSIS


def printable(value: object) -> str:
    """``value`` as text a terminal only displays: every character it could act on is escaped.

    Escaped are the characters Python does not call printable: C0 and C1
    controls (ESC, CR, BEL...), DEL, line and paragraph separators, format
    characters such as the bidi overrides, surrogates (undecodable bytes) and
    unassigned code points. Each becomes its ``repr`` escape (``\\x1b``, ``\\r``, ``\\u202e``), as in
    the excerpts error messages quote. Backslashes are kept as they are, so Windows paths stay readable.
    """
    text = value if isinstance(value, str) else str(value)
    if text.isprintable():  # the common case, one C-level scan
        return text
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def is_number(text: str, digits: int = 19) -> bool:
    """Whether ``text`` is 1 to ``digits`` ASCII digits: str.isdigit() also takes "²", which int() refuses, and
    int() refuses more than 4,300 digits; either was an internal error where outside text was read as a number."""
    return 0 < len(text) <= digits and text.isascii() and text.isdigit()
