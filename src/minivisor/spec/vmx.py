"""Lossless reading and editing of VMware dictionary files (``.vmx``, ``.vmsd``).

Syntax only: lines, keys, quoting, ``|XX`` escapes and charsets, nothing about
hardware. The grammar is VMware's own (open-vm-tools ``lib/dict/dictll.c``)::

    <ws> <name> <ws> = <ws> <value> <ws> <comment>
    <ws> <name> <ws> = <ws> " <quoted-value> " <ws> <comment>
    <ws> <comment>

A document keeps every line as the bytes it was read from, so an unchanged
document writes back byte for byte, and an edit touches only the lines of the
key it changes. Parsing never raises: lines that do not fit the grammar are
kept verbatim and reported in ``problems``, and so is whatever goes past the
document's :class:`Limits` (file size, line count, line length), which is
checked before the work it bounds.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable
from pathlib import Path

from ..errors import SpecError, host_refused
from ..files import write_atomic
from ..records import Record
from ..text import excerpt

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing
if TYPE_CHECKING:
    from typing import Literal

__all__ = ["Limits", "VMX_LIMITS", "VmxDocument", "VmxProblem", "lookup_charset", "read_bounded"]


class Limits(Record, frozen=True):
    """How much of a dictionary file minivisor reads; anything larger is refused, not parsed."""

    file_bytes: int
    lines: int  # also bounds the number of keys
    line_bytes: int


# VMware's own .vmx files are a few KB: a few hundred lines, values under the
# 64 KB a guest may set (guestinfo), which |XX escaping can make longer.
VMX_LIMITS = Limits(file_bytes=256 * 1024, lines=10_000, line_bytes=128 * 1024)

_BOM = b"\xef\xbb\xbf"
# VMware's reader accepts LF, CRLF and a lone CR on every platform (vmstdio.c).
_LINE_END = re.compile(rb"(\r\n|\r|\n)")
# One well-formed key line. A bare value may not start with '"', so that an
# unterminated quoted value cannot be re-read as a bare one.
_ENTRY = re.compile(
    rb'(?P<indent>[ \t]*)(?P<key>[^\x00 \t#=]+)[ \t]*=[ \t]*'
    rb'(?:"(?P<quoted>[^"\x00]*)"|(?P<bare>(?:[^\x00 \t#"][^\x00 \t#]*)?))'
    rb"(?P<tail>[ \t]*(?:#.*)?)\Z",
    re.S,
)
_TRIVIA = re.compile(rb"[ \t]*(?:#.*)?\Z", re.S)  # blank or comment line
_VALID_KEY = re.compile(rb"[^\x00 \t#=\r\n]+\Z")
# Escape_Undo's state machine: '|' swallows up to two following bytes and
# decodes them only if both are hex digits, so '||22' and '|2|22' stay literal.
_ESCAPE = re.compile(rb"\|(?:(?P<hex>[0-9A-Fa-f]{2})|[0-9A-Fa-f].?|.?)", re.S)
_HEX_BYTE = {f"{a}{b}".encode(): bytes([int(a + b, 16)]) for a in "0123456789abcdefABCDEF"
             for b in "0123456789abcdefABCDEF"}
# DictLL_MarshalLine's table: control bytes but TAB, '"', '|' and 0x7F.
_TO_ESCAPE = frozenset(b'"|\x7f' + bytes(range(0x09)) + bytes(range(0x0A, 0x20)))

_TOO_BIG_HINT = "this is not a file VMware writes: remove what does not belong in it"
_EDIT_HINT = 'edit line {n} so it reads key = "value", or start it with # to make it a comment'


def _charset_table() -> dict[str, str]:
    """Charset names seen in ``.encoding`` (normalised) -> Python codec."""
    table = {
        "utf-8": "utf-8", "utf8": "utf-8", "us-ascii": "ascii", "ascii": "ascii",
        "shift-jis": "shift_jis", "sjis": "shift_jis", "windows-31j": "cp932",
        "cp932": "cp932", "euc-jp": "euc_jp", "gbk": "gbk", "gb2312": "gb2312",
        "gb18030": "gb18030", "windows-936": "gbk", "cp936": "gbk", "big5": "big5",
        "big5-hkscs": "big5hkscs", "windows-950": "cp950", "cp950": "cp950",
        "euc-kr": "euc_kr", "windows-949": "cp949", "windows-949-2000": "cp949",
        "cp949": "cp949", "ks-c-5601-1987": "cp949", "koi8-r": "koi8_r",
        "koi8-u": "koi8_u", "latin1": "latin-1",
    }
    table.update({f"windows-{n}": f"cp{n}" for n in range(1250, 1259)})
    table.update({f"cp{n}": f"cp{n}" for n in range(1250, 1259)})
    table.update({f"iso-8859-{n}": f"iso8859_{n}" for n in range(1, 17) if n != 12})
    return table


# Only ASCII-compatible charsets belong here: the grammar itself is read as
# ASCII bytes, so UTF-16 and friends can never describe a .vmx file.
_CHARSETS = _charset_table()


def lookup_charset(name: str) -> str | None:
    """The Python codec for a VMware charset name (any case), or None if unknown."""
    return _CHARSETS.get(name.strip().lower().replace("_", "-"))


def _show(raw: bytes) -> str:
    """A short, printable, quoted rendering of raw bytes for messages."""
    # 4 bytes per character at most: enough bytes to fill the excerpt and to tell it was cut
    return excerpt(raw[:4 * 64].decode("utf-8", "backslashreplace"))


def read_bounded(path: Path, limit: int) -> bytes:
    """The bytes of ``path`` if it holds at most ``limit``; reads no more than ``limit`` + 1.

    Raises ``OSError`` if it cannot be read, ``SpecError`` if it is larger or no regular file (a FIFO would block
    the read for ever: it is opened without waiting for a writer).
    """
    with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC), "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise SpecError(f"{excerpt(str(path), 200)} is not a regular file", hint="a specfile is one: restore it")
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise SpecError(f"{excerpt(str(path), 200)} is larger than the {limit // 1024} KiB minivisor reads",
                        hint=_TOO_BIG_HINT)
    return data


def _unescape(raw: bytes) -> tuple[bytes, bool]:
    """Undo ``|XX`` escapes like VMware's Escape_Undo; also say if a bad one was kept."""
    if b"|" not in raw:  # the common case, and fast for 1 MB values
        return raw, False
    # Every '|' followed by two hex digits (a snapshot's specfile, with its quotes and line ends): then no
    # escape swallows another's '|', and each piece after one starts with its two digits. Without a
    # callback per escape: a .vmsd holds thousands.
    pieces = raw.split(b"|")
    try:
        return pieces[0] + b"".join([_HEX_BYTE[piece[:2]] + piece[2:] for piece in pieces[1:]]), False
    except KeyError:
        pass  # a bad escape somewhere: Escape_Undo's state machine decides what is kept
    bad = False

    def replace(match: re.Match[bytes]) -> bytes:
        nonlocal bad
        if digits := match["hex"]:
            return _HEX_BYTE[digits]
        bad = True
        return match[0]

    return _ESCAPE.sub(replace, raw), bad


def _escape(raw: bytes) -> bytes:
    """Escape value bytes the way VMware's writer does (uppercase ``|XX``)."""
    present = _TO_ESCAPE.intersection(raw)
    if not present:
        return raw
    if ord("|") in present:  # first: the escapes written next start with one
        raw = raw.replace(b"|", b"|7C")
    for byte in present - {ord("|")}:
        raw = raw.replace(bytes((byte,)), b"|%02X" % byte)
    return raw


def _encode(text: str, codec: str, what: str, key: str) -> bytes:
    """``text`` in the file's encoding; the SpecError if it cannot be says "the {what} {key}" ("value of", "key")."""
    try:
        return text.encode(codec, "surrogateescape")
    except UnicodeEncodeError as exc:
        raise SpecError(
            f"the {what} {excerpt(key)} cannot be written in the file's encoding {codec}",
            hint=f"use only characters that {codec} can store, or a file with .encoding = \"UTF-8\"",
        ) from exc


def _diagnose(text: bytes) -> tuple[str, str]:
    """Why a line does not fit the grammar: (message, hint template)."""
    if b"\x00" in text:
        return "NUL byte in line", "remove the NUL bytes from line {n}; " + _EDIT_HINT
    name, eq, rest = text.lstrip(b" \t").partition(b"=")
    name = name.rstrip(b" \t")
    if not eq:
        return "not a key = value line (no '=')", _EDIT_HINT
    if not name:
        return "'=' without a key name", _EDIT_HINT
    if re.search(rb"[ \t#]", name):
        return f"key name {_show(name)} contains whitespace or '#'", _EDIT_HINT
    value = rest.lstrip(b" \t")
    if not value.startswith(b'"'):
        return (f"unquoted value of {_show(name)} is followed by more text",
                "put the value on line {n} in double quotes: key = \"value\"")
    if b'"' not in value[1:]:
        return (f"unterminated quote in value of {_show(name)}",
                'edit line {n} so it reads key = "value", with a closing double quote')
    return (f"unexpected text after the closing quote in value of {_show(name)}",
            "edit line {n} so it reads key = \"value\"; write a '\"' inside a value as |22")


class VmxProblem(Record, frozen=True):
    """Something found while parsing: ``error`` for a line that does not fit the
    grammar (it is kept verbatim), ``warning`` for something suspicious."""

    line: int
    severity: Literal["warning", "error"]
    message: str
    source: str = "<vmx>"
    hint: str = ""

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: {self.message}"


class _Line:
    """One physical line: its bytes, its line end, and for key lines the key
    (original spelling, "" for other lines) and the unescaped, not yet decoded
    value bytes."""

    __slots__ = ("text", "end", "key", "raw")

    def __init__(self, text: bytes, end: bytes, key: str = "", raw: bytes = b"") -> None:
        self.text, self.end, self.key, self.raw = text, end, key, raw


class VmxDocument:
    """A ``.vmx``/``.vmsd`` file as an editable, byte-preserving list of lines.

    Keys are case-insensitive; the last occurrence of a key wins. ``problems``
    holds what ``parse`` found; it is not updated by later edits.
    """

    def __init__(self, *, source: str = "<vmx>", limits: Limits = VMX_LIMITS) -> None:
        """An empty document; ``source`` names it in messages."""
        self.source = source
        self.limits = limits
        self.problems: list[VmxProblem] = []
        self._bom = b""
        self._lines: list[_Line] = []
        self._index: dict[str, list[_Line]] = {}  # lower-cased key -> its lines
        self._codec: str | None = None  # ``encoding``, once asked for (every get and set asks); None after a change

    @classmethod
    def parse(cls, data: bytes, *, source: str = "<vmx>", limits: Limits = VMX_LIMITS) -> VmxDocument:
        """Parse the bytes of a file. Never raises; see ``problems``."""
        doc = cls(source=source, limits=limits)
        doc._load(bytes(data))
        return doc

    @classmethod
    def load(cls, path: Path, limits: Limits = VMX_LIMITS) -> VmxDocument:
        """Read and parse a file (``OSError`` if it cannot be read, ``SpecError`` if it is too large)."""
        return cls.parse(read_bounded(Path(path), limits.file_bytes), source=str(path), limits=limits)

    def _load(self, data: bytes) -> None:
        if len(data) > self.limits.file_bytes:
            self._refuse(data, f"the file is {len(data)} bytes, more than the {self.limits.file_bytes} minivisor reads")
            return
        bom = _BOM if data.startswith(_BOM) else b""
        parts = _LINE_END.split(data[len(bom):])  # text, end, text, end, ..., text after the last end
        lines = len(parts) // 2 + bool(parts[-1])
        if lines > self.limits.lines:
            self._refuse(data, f"the file has {lines} lines, more than the {self.limits.lines} minivisor reads")
            return
        self._bom = bom
        entries: list[tuple[int, _Line, bytes]] = []
        for i in range(0, len(parts), 2):
            text, end = parts[i], (parts[i + 1] if i + 1 < len(parts) else b"")
            if not text and not end:
                break  # nothing after the last line end
            line = _Line(text, end)
            self._lines.append(line)
            key = self._tokenise(line, i // 2 + 1)
            if key is not None:
                entries.append((i // 2 + 1, line, key))
        self._index_entries(entries, self._charset_codec(entries))
        self.problems.sort(key=lambda p: p.line)

    def _refuse(self, data: bytes, why: str) -> None:
        """Keep ``data`` as one verbatim line, unparsed, with an error saying why."""
        self._lines.append(_Line(data, b""))
        self._report(1, "error", why, _TOO_BIG_HINT)

    def _tokenise(self, line: _Line, n: int) -> bytes | None:
        """Fill in the value of a key line and return its key bytes; report bad lines."""
        if len(line.text) > self.limits.line_bytes:
            self._report(n, "error", f"line is {len(line.text)} bytes long, more than the "
                                     f"{self.limits.line_bytes} minivisor reads",
                         f"shorten line {n} (VMware's own values are at most a few KB)")
            return None
        # A NUL would end the line early for VMware's C reader: never valid.
        match = _ENTRY.match(line.text) if b"\x00" not in line.text else None
        if match is None:
            if b"\x00" in line.text or not _TRIVIA.match(line.text):
                message, hint = _diagnose(line.text)
                self._report(n, "error", message, hint.format(n=n))
            return None
        quoted = match["quoted"]
        line.raw, bad = _unescape(match["bare"] if quoted is None else quoted)
        if bad:
            self._report(n, "warning",
                         f"'|' not followed by two hex digits in value of {_show(match['key'])}; kept as is",
                         f"write a literal '|' as |7C on line {n}")
        return match["key"]

    def _charset_codec(self, entries: list[tuple[int, _Line, bytes]]) -> str:
        """The codec named by the last ``.encoding`` line (warn if unknown)."""
        for n, line, key in reversed(entries):
            if key.lower() == b".encoding":
                codec = lookup_charset(line.raw.decode("latin-1"))
                if codec is None:
                    self._report(n, "warning",
                                 f"unknown encoding {_show(line.raw)}; reading values as UTF-8",
                                 f'set line {n} to a known charset such as .encoding = "UTF-8"')
                return codec or "utf-8"
        return "utf-8"

    def _index_entries(self, entries: list[tuple[int, _Line, bytes]], codec: str) -> None:
        first_line: dict[str, int] = {}
        for n, line, key in entries:
            line.key = key.decode(codec, "surrogateescape")
            lkey = line.key.lower()
            if lkey in self._index:
                self._report(n, "warning",
                             f"key {_show(key)} is also set on line {first_line[lkey]}; the later line wins",
                             f"delete one of lines {first_line[lkey]} and {n}")
            self._index.setdefault(lkey, []).append(line)
            first_line[lkey] = n

    def _report(self, n: int, severity: Literal["warning", "error"], message: str, hint: str) -> None:
        self.problems.append(VmxProblem(n, severity, message, self.source, hint))

    def raise_for_errors(self) -> None:
        """Raise ``SpecError`` for the first malformed line, if there is one."""
        errors = [p for p in self.problems if p.severity == "error"]
        if errors:
            more = f" (and {len(errors) - 1} more malformed lines)" if len(errors) > 1 else ""
            raise SpecError(f"{errors[0]}{more}", hint=errors[0].hint, line=errors[0].line)

    @property
    def encoding(self) -> str:
        """The Python codec for values: from ``.encoding``, else UTF-8."""
        if self._codec is None:
            lines = self._index.get(".encoding")
            self._codec = (lines and lookup_charset(lines[-1].raw.decode("latin-1"))) or "utf-8"
        return self._codec

    def get(self, key: str, default: str | None = None) -> str | None:
        """The effective (last) value of ``key``, any case, or ``default``."""
        lines = self._index.get(key.lower())
        return lines[-1].raw.decode(self.encoding, "surrogateescape") if lines else default

    def line_of(self, key: str) -> int | None:
        """The 1-based line number of the effective (last) line of ``key``."""
        lines = self._index.get(key.lower())
        if not lines:
            return None
        return next(n for n, line in enumerate(self._lines, 1) if line is lines[-1])

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key.lower() in self._index

    def items(self) -> list[tuple[str, str]]:
        """Effective (key, value) pairs, in order and spelling of first appearance."""
        codec = self.encoding
        return [(ls[0].key, ls[-1].raw.decode(codec, "surrogateescape"))
                for ls in self._index.values()]

    def keys_with_prefix(self, prefix: str) -> list[str]:
        """Keys that start with ``prefix`` (any case), in file order."""
        lower = prefix.lower()
        return [ls[0].key for k, ls in self._index.items() if k.startswith(lower)]

    def set(self, key: str, value: str) -> None:
        """Set ``key`` to ``value``.

        An existing key gets only its last line rewritten (indent, spelling and
        trailing comment kept); a new key is appended as ``key = "value"``.
        Values are stored in the file's encoding; setting ``.encoding``
        reinterprets the existing bytes, it does not transcode them.
        """
        if not isinstance(value, str):
            raise TypeError(f"value must be str, not {type(value).__name__}")
        lkey = key.lower()
        if lkey == ".encoding" and lookup_charset(value) is None:
            raise SpecError(f"unknown encoding {excerpt(value)}", hint='use a charset such as "UTF-8"')
        codec = self.encoding
        raw = _encode(value, codec, "value of", key)  # the message is made only if it is needed
        if lines := self._index.get(lkey):
            line = lines[-1]
            match = _ENTRY.match(line.text)
            assert match is not None  # key lines always match
            text = match["indent"] + match["key"] + b' = "' + _escape(raw) + b'"' + match["tail"]
            self._check_room(key, len(text), new=False)
            line.text, line.raw = text, raw
            self._codec = None if lkey == ".encoding" else self._codec
            return
        self._add(self._new_line(key, raw, codec), first=lkey == ".encoding")
        self._codec = None if lkey == ".encoding" else self._codec

    def set_many(self, pairs: Iterable[tuple[str, str]]) -> None:
        """:meth:`set` each (key, value) in order, with the same lines and refusals; a key the document does
        not have yet is appended with the codec and the line end looked up once (a ``.vmsd`` written whole
        is hundreds of new keys)."""
        codec, end = self.encoding, self._line_end()
        for key, value in pairs:
            lkey = key.lower()
            if lkey in self._index or lkey == ".encoding" or not isinstance(value, str):
                self.set(key, value)  # an existing line, the encoding, or set's own refusal
                codec, end = self.encoding, self._line_end()
                continue
            self._append(self._new_line(key, _encode(value, codec, "value of", key), codec), end)

    def _new_line(self, key: str, raw: bytes, codec: str) -> _Line:
        """The line ``key = "value"`` of a new key (``raw``: the value's bytes), or the SpecError set gives."""
        name = _encode(key, codec, "key", key)
        if not _VALID_KEY.match(name):
            raise SpecError(f"invalid key {excerpt(key)}",
                            hint="a key must be non-empty, without whitespace, '=', '#' or NUL")
        text = name + b' = "' + _escape(raw) + b'"'
        self._check_room(key, len(text), new=True)
        return _Line(text, b"", key, raw)

    def _check_room(self, key: str, line_bytes: int, *, new: bool) -> None:
        """Refuse an edit that would make a file this document's limits refuse to read."""
        if line_bytes > self.limits.line_bytes:
            raise SpecError(f"the value of {excerpt(key)} is too long: its line would be {line_bytes} bytes",
                            hint=f"a line may be at most {self.limits.line_bytes} bytes")
        if new and len(self._lines) >= self.limits.lines:
            raise SpecError(f"cannot add {excerpt(key)}: the file already has {len(self._lines)} lines",
                            hint=f"a file may have at most {self.limits.lines} lines")

    def _line_end(self) -> bytes:
        """The file's own line ending (for a line added to it)."""
        return next((b"\r\n" if x.end == b"\r\n" else b"\n" for x in self._lines if x.end), b"\n")

    def _add(self, line: _Line, *, first: bool) -> None:
        if first:  # VMware writes .encoding first (after a #! line); readers may expect it there
            line.end = self._line_end()
            self._lines.insert(int(bool(self._lines) and self._lines[0].text.startswith(b"#!")), line)
            self._index[line.key.lower()] = [line]
        else:
            self._append(line, self._line_end())

    def _append(self, line: _Line, end: bytes) -> None:
        """``line`` at the end, with the file's line ending ``end``; a missing final one is added."""
        line.end = end
        if self._lines and not self._lines[-1].end:
            self._lines[-1].end = end
        self._lines.append(line)
        self._index[line.key.lower()] = [line]

    def delete(self, key: str) -> bool:
        """Remove every line of ``key`` (any case); return whether there was one."""
        lines = self._index.pop(key.lower(), None)
        if not lines:
            return False
        self._codec = None if key.lower() == ".encoding" else self._codec
        doomed = {id(line) for line in lines}
        self._lines = [line for line in self._lines if id(line) not in doomed]
        return True

    def copy(self) -> VmxDocument:
        """An independent copy (an edit of either leaves the other as it was), without parsing again."""
        other = VmxDocument(source=self.source, limits=self.limits)
        other.problems, other._bom, other._codec = list(self.problems), self._bom, self._codec
        copies = {id(line): _Line(line.text, line.end, line.key, line.raw) for line in self._lines}
        other._lines = [copies[id(line)] for line in self._lines]
        other._index = {key: [copies[id(line)] for line in lines] for key, lines in self._index.items()}
        return other

    def to_bytes(self) -> bytes:
        """The file's bytes: exactly the input if nothing was changed."""
        return self._bom + b"".join([part for line in self._lines for part in (line.text, line.end)])

    def save(self, path: Path) -> None:
        """Write the document to ``path`` atomically (see ``write_atomic``); a new specfile is owner-only. A file
        or folder that may not be written (immutable, read-only) is one HostError; the old file stays."""
        try:
            write_atomic(Path(path), self.to_bytes(), mode=0o600)
        except OSError as exc:
            raise host_refused(f"write {path}", exc) from exc
