"""Tests for minivisor.vmx: the lossless .vmx/.vmsd document model."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from minivisor.spec import vmx as vmx
from minivisor.errors import SpecError
from minivisor.files import write_atomic
from minivisor.spec.vmx import VmxDocument, VmxProblem, lookup_charset

SEED = Path(__file__).resolve().parents[2] / "src/minivisor/cli/seed/CentOS7-Minimal64-1708.vmx"


def parse(data: bytes) -> VmxDocument:
    return VmxDocument.parse(data, source="t.vmx")


def errors(doc: VmxDocument) -> list[tuple[int, str]]:
    return [(p.line, p.message) for p in doc.problems if p.severity == "error"]


def warnings(doc: VmxDocument) -> list[tuple[int, str]]:
    return [(p.line, p.message) for p in doc.problems if p.severity == "warning"]


# -- the seed file -------------------------------------------------------------


def test_seed_round_trips_and_reads_keys() -> None:
    data = SEED.read_bytes()
    doc = VmxDocument.load(SEED)
    assert doc.to_bytes() == data
    assert doc.problems == []
    assert doc.get("memSize") == "1024"
    assert doc.get("MEMSIZE") == "1024"
    assert doc.get("ethernet0.generatedAddress") == "00:50:56:aa:aa:aa"
    assert doc.encoding == "utf-8"


# -- line ends, BOM ------------------------------------------------------------


def test_crlf_file_parses_and_round_trips() -> None:
    data = b'.encoding = "UTF-8"\r\nmemsize = "2048"\r\n# note\r\nnumvcpus = "2"\r\n'
    doc = parse(data)
    assert doc.problems == []
    assert doc.get("memsize") == "2048"
    assert doc.get("numvcpus") == "2"
    assert doc.to_bytes() == data


def test_lone_cr_and_mixed_line_ends() -> None:
    data = b'a = "1"\rb = "2"\nc = "3"\r\nd = "4"'
    doc = parse(data)
    assert [doc.get(k) for k in "abcd"] == ["1", "2", "3", "4"]
    assert doc.to_bytes() == data


def test_bom_is_skipped_and_kept() -> None:
    data = b'\xef\xbb\xbfconfig.version = "8"\nmemsize = "512"\n'
    doc = parse(data)
    assert doc.get("config.version") == "8"
    assert doc.items()[0][0] == "config.version"
    assert doc.problems == []
    assert doc.to_bytes() == data
    doc.set("memsize", "1024")
    assert doc.to_bytes() == b'\xef\xbb\xbfconfig.version = "8"\nmemsize = "1024"\n'


def test_missing_final_newline_and_empty_input() -> None:
    assert parse(b"").to_bytes() == b""
    assert parse(b"").items() == []
    doc = parse(b'a = "1"')
    assert doc.get("a") == "1"
    assert doc.to_bytes() == b'a = "1"'


# -- grammar -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "value"),
    [
        (b'guestOS = "centos-64"', "centos-64"),
        (b"ethernet0.present= \"true\"", "true"),
        (b'x   =   "spaced"  ', "spaced"),
        (b'\t x = "indented"', "indented"),
        (b"scsi0:0.virtualSSD = 1", "1"),
        (b"sata0.present = TRUE   # bare then comment", "TRUE"),
        (b"a=1#c", "1"),
        (b'name = "a # not a comment" # a comment', "a # not a comment"),
        (b'empty = ""', ""),
        (b"implied =", ""),
        (b"implied = # only a comment", ""),
        (b'path = "C:\\Users\\x\\Windows.iso"', "C:\\Users\\x\\Windows.iso"),
        (b'pct = "a%3db"', "a%3db"),
        (b'a = b"c', 'b"c'),  # dictll.c accepts '"' inside a bare value
        (b'guestOS = "darwin24-64"   # Set macOS guest version', "darwin24-64"),
    ],
)
def test_value_forms(line: bytes, value: str) -> None:
    doc = parse(line + b"\n")
    assert doc.problems == []
    (key, got), = doc.items()
    assert got == value
    assert doc.to_bytes() == line + b"\n"


def test_comment_and_blank_lines_are_not_problems() -> None:
    doc = parse(b"#!/usr/bin/vmware\n\n   \n\t# indented comment\nx = 1\n")
    assert doc.problems == []
    assert doc.items() == [("x", "1")]


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        (b'memSize = "1024', "unterminated quote in value of 'memSize'"),
        (b"THIS IS NEW INFORMATION.", "no '='"),
        (b"{% if foo %}", "no '='"),
        (b'= "x"', "without a key name"),
        (b'my key = "x"', "key name 'my key' contains whitespace"),
        (b'a#b = "x"', "contains whitespace or '#'"),
        (b'a = "x"y', "after the closing quote in value of 'a'"),
        (b'a = "x" "y"', "after the closing quote"),
        (b"a = two words", "unquoted value of 'a' is followed by more text"),
        (b'a = "x\x00y"', "NUL byte"),
        (b"# comment with \x00 NUL", "NUL byte"),
    ],
)
def test_malformed_lines_are_kept_and_reported(line: bytes, fragment: str) -> None:
    data = b'first = "1"\n# comment\n' + line + b'\nlast = "2"\n'
    doc = parse(data)
    assert len(errors(doc)) == 1
    number, message = errors(doc)[0]
    assert number == 3
    assert fragment in message
    assert doc.get("first") == "1" and doc.get("last") == "2"
    assert doc.to_bytes() == data


def test_problem_str_and_raise_for_errors() -> None:
    data = b"\n" * 11 + b'memSize = "1024\nx = a b\n'
    doc = parse(data)
    problem = doc.problems[0]
    assert isinstance(problem, VmxProblem)
    assert (problem.line, problem.severity) == (12, "error")
    assert str(problem) == "t.vmx:12: unterminated quote in value of 'memSize'"
    with pytest.raises(SpecError) as caught:
        doc.raise_for_errors()
    assert "t.vmx:12" in caught.value.message
    assert "unterminated quote" in caught.value.message
    assert "1 more" in caught.value.message
    assert caught.value.hint and "line 12" in caught.value.hint and 'key = "value"' in caught.value.hint


def test_raise_for_errors_ignores_warnings() -> None:
    doc = parse(b'a = "1"\na = "2"\nb = "x|zz"\n')
    assert len(warnings(doc)) == 2
    doc.raise_for_errors()  # must not raise
    assert errors(doc) == []


def test_nul_bytes_give_an_error_never_an_exception() -> None:
    data = b'a = "1"\n\x00\x00\x00\nb\x00 = "2"\nc = "3"'
    doc = parse(data)
    assert [n for n, _ in errors(doc)] == [2, 3]
    assert "b" not in doc and doc.get("c") == "3"
    assert doc.to_bytes() == data
    with pytest.raises(SpecError):
        doc.raise_for_errors()


# -- escapes -------------------------------------------------------------------


def test_pipe_escapes_are_decoded() -> None:
    doc = parse(b'annotation = "line1|0Aline2 |22quoted|22 pipe|7C hash|23 low|7c"\nbare = a|7Cb\n')
    assert doc.get("annotation") == 'line1\nline2 "quoted" pipe| hash# low|'
    assert doc.get("bare") == "a|b"
    assert doc.problems == []


@pytest.mark.parametrize(
    ("escaped", "value"),
    [(b"a|zzb", "a|zzb"), (b"||22", "||22"), (b"|2|22", "|2|22"), (b"end|", "end|"), (b"|4", "|4"),
     (b"|45|73c", "Esc")],
)
def test_bad_escape_is_kept_literally(escaped: bytes, value: str) -> None:
    doc = parse(b'x = "' + escaped + b'"\n')
    assert doc.get("x") == value
    bad = value != "Esc"
    assert [(n, "two hex digits" in m) for n, m in warnings(doc)] == ([(1, True)] if bad else [])
    assert errors(doc) == []


def test_backslash_is_not_an_escape() -> None:
    doc = parse(b'serial0.fileName = "\\\\.\\pipe\\Cosmos\\Serial"\n')
    assert doc.get("serial0.fileName") == "\\\\.\\pipe\\Cosmos\\Serial"


def test_writer_escapes_like_vmware() -> None:
    doc = parse(b"")
    doc.set("a", 'q"p|d\x7fn\nt\tc#e=,\x00\xe9')
    assert doc.to_bytes() == 'a = "q|22p|7Cd|7Fn|0At\tc#e=,|00\xe9"\n'.encode("utf-8")


def _escape_by_the_table(raw: bytes) -> bytes:
    """DictLL_MarshalLine's table, one byte at a time: what vmx._escape must equal."""
    return b"".join(b"|%02X" % byte if byte in b'"|\x7f' or (byte < 0x20 and byte != 0x09) else bytes((byte,))
                    for byte in raw)


def _unescape_by_the_state_machine(raw: bytes) -> tuple[bytes, bool]:
    """Escape_Undo, one byte at a time: '|' and two hex digits is a byte; a bad escape is kept with what it
    swallowed (a hex digit and the byte after it, or one other byte)."""
    out, bad, i = bytearray(), False, 0
    while i < len(raw):
        if raw[i:i + 1] != b"|":
            out += raw[i:i + 1]
            i += 1
            continue
        hexdigit = raw[i + 1:i + 2] != b"" and raw[i + 1] in b"0123456789abcdefABCDEF"
        pair = raw[i + 1:i + 3] if hexdigit else raw[i + 1:i + 2]
        if len(pair) == 2 and pair[1] in b"0123456789abcdefABCDEF":
            out.append(int(pair, 16))
        else:
            bad = True
            out += raw[i:i + 1 + len(pair)]
        i += 1 + len(pair)
    return bytes(out), bad


_ESCAPE_BYTES = st.binary(max_size=40) | st.lists(st.sampled_from([b"|", b"2", b"2A", b"g", b'"', b"\n", b"\t",
                                                                    b"\x7f", b"\xe9", b"x"]),
                                                   max_size=20).map(b"".join)


@given(_ESCAPE_BYTES)
@example(b"|g|41")
@example(b"|2|41")
@example(b"||41")
@example(b"a|")
@example(b"|4")
def test_escapes_are_written_and_undone_as_vmware_does_byte_by_byte(raw: bytes) -> None:
    assert vmx._escape(raw) == _escape_by_the_table(raw)
    assert vmx._unescape(raw) == _unescape_by_the_state_machine(raw)
    assert vmx._unescape(vmx._escape(raw)) == (raw, False)


# -- encodings -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("charset", "text"),
    [("Shift_JIS", "ポ倒"), ("shift_jis", "ソ表"), ("GBK", "亅倈億"), ("gbk", "中文")],
)
def test_double_byte_values_with_pipe_second_byte(charset: str, text: str) -> None:
    raw = text.encode(lookup_charset(charset) or "?")
    written = raw.replace(b"|", b"|7C")  # what VMware's writer produces
    data = f'.encoding = "{charset}"\ndisplayName = "'.encode() + written + b'"\n'
    doc = parse(data)
    assert doc.get("displayName") == text
    assert doc.problems == []
    assert doc.to_bytes() == data
    doc.set("annotation", text + "|" + text)
    again = parse(doc.to_bytes())
    assert again.get("annotation") == text + "|" + text
    assert again.get("displayName") == text


def test_unescaped_pipe_second_byte_still_decodes() -> None:
    # A naive writer left 0x7C raw: VMware keeps a bad escape literally.
    data = b'.encoding = "Shift_JIS"\nx = "\x83|"\n'
    doc = parse(data)
    assert doc.get("x") == "ポ"
    assert [n for n, _ in warnings(doc)] == [2]
    assert doc.to_bytes() == data


@pytest.mark.parametrize(
    ("charset", "codec"),
    [("UTF-8", "utf-8"), ("windows-1252", "cp1252"), ("WINDOWS-1251", "cp1251"), ("Shift_JIS", "shift_jis"),
     ("GBK", "gbk"), ("windows-949-2000", "cp949"), ("iso-8859-1", "iso8859_1")],
)
def test_charset_table(charset: str, codec: str) -> None:
    assert lookup_charset(charset) == codec
    assert parse(f'.encoding = "{charset}"\n'.encode()).encoding == codec


def test_windows_1252_value() -> None:
    doc = parse(b'.encoding = "windows-1252"\ndisplayName = "Caf\xe9 \x80"\n')
    assert doc.get("displayName") == "Café €"


def test_unknown_encoding_warns_and_falls_back_to_utf8() -> None:
    doc = parse(b'a = "\xc3\xa9"\n.encoding = "klingon-8"\n')
    assert doc.encoding == "utf-8"
    assert doc.get("a") == "é"
    assert [(n, "unknown encoding 'klingon-8'" in m) for n, m in warnings(doc)] == [(2, True)]
    assert lookup_charset("UTF-16") is None  # not ASCII-compatible: never a .vmx charset


def test_keys_are_decoded_with_the_file_encoding() -> None:
    data = '.encoding = "Shift_JIS"\n表示 = "x"\n'.encode("shift_jis")
    doc = parse(data)
    assert doc.get("表示") == "x"
    assert doc.items()[1] == ("表示", "x")


def test_problems_are_in_line_order() -> None:
    doc = parse(b'a = "1"\na = "2"\nnot a line\nb = "|zz"\n.encoding = "bogus"\n')
    assert [(p.line, p.severity) for p in doc.problems] == [
        (2, "warning"), (3, "error"), (4, "warning"), (5, "warning")]


def test_invalid_bytes_survive_via_surrogateescape() -> None:
    data = b'x = "\xff\xfe"\n'
    doc = parse(data)
    assert doc.get("x") == "\udcff\udcfe"
    doc.set("y", doc.get("x") or "")
    assert parse(doc.to_bytes()).get("y") == "\udcff\udcfe"


def test_set_rejects_unstorable_text_and_unknown_encoding() -> None:
    doc = parse(b'.encoding = "windows-1252"\n')
    with pytest.raises(SpecError):
        doc.set("displayName", "中文")
    with pytest.raises(SpecError):
        doc.set(".encoding", "klingon-8")
    assert doc.to_bytes() == b'.encoding = "windows-1252"\n'


def test_new_encoding_key_goes_first() -> None:
    doc = parse(b'a = "1"\n')
    doc.set(".encoding", "UTF-8")
    assert doc.to_bytes() == b'.encoding = "UTF-8"\na = "1"\n'
    doc = parse(b'#!/usr/bin/vmware\na = "1"\n')
    doc.set(".encoding", "UTF-8")
    assert doc.to_bytes() == b'#!/usr/bin/vmware\n.encoding = "UTF-8"\na = "1"\n'


def test_values_are_read_with_the_encoding_as_it_is_now() -> None:
    """The codec is looked up once, and again after every change of .encoding (set, replaced, deleted)."""
    doc = parse(b'displayName = "Caf\xc3\xa9"\n')
    assert (doc.encoding, doc.get("displayName")) == ("utf-8", "Caf\u00e9")
    doc.set(".encoding", "windows-1252")  # reinterprets the bytes, as documented
    assert (doc.encoding, doc.get("displayName")) == ("cp1252", "Caf\u00c3\u00a9")
    doc.set(".encoding", "UTF-8")
    assert (doc.encoding, doc.get("displayName")) == ("utf-8", "Caf\u00e9")
    doc.set(".encoding", "latin1")
    assert doc.delete(".encoding")
    assert (doc.encoding, doc.get("displayName")) == ("utf-8", "Caf\u00e9")


# -- keys and duplicates ---------------------------------------------------------


def test_duplicates_last_wins_and_every_line_is_kept() -> None:
    data = b'memsize = "512"\nx = "1"\nmemSize = "1024"\nMEMSIZE = "2048"\n'
    doc = parse(data)
    assert doc.get("memsize") == "2048"
    assert doc.to_bytes() == data
    assert [n for n, _ in warnings(doc)] == [3, 4]
    assert "line 1" in warnings(doc)[0][1] and "'memSize'" in warnings(doc)[0][1]
    assert "line 3" in warnings(doc)[1][1]
    assert doc.items() == [("memsize", "2048"), ("x", "1")]
    doc.set("MemSize", "4096")
    assert doc.to_bytes() == b'memsize = "512"\nx = "1"\nmemSize = "1024"\nMEMSIZE = "4096"\n'


def test_keys_are_case_insensitive() -> None:
    doc = parse(b'guestOS = "centos-64"\nguestOS.detailed.data = "x"\n')
    assert "GUESTOS" in doc and "guestos.DETAILED.data" in doc
    assert "nope" not in doc and 42 not in doc
    assert doc.get("nope") is None and doc.get("nope", "dflt") == "dflt"


def test_keys_with_prefix_and_items_order() -> None:
    doc = parse(b'ethernet0.present = "TRUE"\nmemsize = "1"\n'
                b'Ethernet0.virtualDev = "e1000"\nethernet1.x = "y"\n')
    assert doc.keys_with_prefix("ETHERNET0.") == ["ethernet0.present", "Ethernet0.virtualDev"]
    assert doc.keys_with_prefix("nomatch") == []
    keys = [k for k, _ in doc.items()]
    assert keys == ["ethernet0.present", "memsize", "Ethernet0.virtualDev", "ethernet1.x"]


# -- editing -------------------------------------------------------------------


def test_set_keeps_indent_spelling_and_trailing_comment() -> None:
    doc = parse(b'a = "1"\n  memSize = 1024   # MiB, keep me\nb = "2"\n')
    doc.set("MEMSIZE", "2048")
    assert doc.to_bytes() == b'a = "1"\n  memSize = "2048"   # MiB, keep me\nb = "2"\n'
    assert parse(doc.to_bytes()).get("memsize") == "2048"


def test_set_new_key_in_crlf_file_without_final_newline() -> None:
    doc = parse(b'a = "1"\r\nb = "2"')
    doc.set("numvcpus", "4")
    assert doc.to_bytes() == b'a = "1"\r\nb = "2"\r\nnumvcpus = "4"\r\n'
    doc = parse(b'a = "1"')
    doc.set("c", "3")
    assert doc.to_bytes() == b'a = "1"\nc = "3"\n'


def test_set_rejects_bad_keys_and_values() -> None:
    doc = parse(b"")
    for key in ["", "two words", "a=b", "a#b", "a\nb", "nul\x00"]:
        with pytest.raises(SpecError):
            doc.set(key, "x")
    with pytest.raises(TypeError):
        doc.set("a", 1)  # type: ignore[arg-type]
    assert doc.to_bytes() == b""


def test_delete_removes_every_line_of_a_key() -> None:
    doc = parse(b'a = "1"\nB = "2"\n# c\nb = "3"\nc = "4"')
    assert doc.delete("b") is True
    assert doc.delete("b") is False
    assert "b" not in doc
    assert doc.to_bytes() == b'a = "1"\n# c\nc = "4"'
    doc.delete("c")
    doc.set("d", "5")
    assert doc.to_bytes() == b'a = "1"\n# c\nd = "5"\n'


def test_values_up_to_the_line_limit_round_trip() -> None:
    limit = vmx.VMX_LIMITS.line_bytes
    big = "x" * (limit - len('a = ""'))
    data = b'a = "' + big.encode() + b'"\nb = ' + big.encode() + b"\n"
    doc = parse(data)
    assert doc.problems == []
    assert doc.get("a") == big and doc.get("b") == big
    assert doc.to_bytes() == data
    edited = parse(b"")
    edited.set("c", big[:-3] + "\n")  # the newline is written as |0A: exactly the limit
    assert parse(edited.to_bytes()).get("c") == big[:-3] + "\n"


def test_a_line_over_the_limit_is_kept_verbatim_and_reported() -> None:
    long_line = b'displayName = "' + b"x" * vmx.VMX_LIMITS.line_bytes + b'"'
    data = b'a = "1"\n' + long_line + b'\nb = "2"\n'
    doc = parse(data)
    assert [(n, "more than the" in m) for n, m in errors(doc)] == [(2, True)]
    assert "displayName" not in doc and doc.get("a") == "1" and doc.get("b") == "2"
    assert doc.to_bytes() == data
    with pytest.raises(SpecError) as caught:
        doc.raise_for_errors()
    assert len(caught.value.one_line()) < 300  # the value itself is never echoed


def test_set_refuses_a_line_over_the_limit_and_leaves_the_document_alone() -> None:
    doc = parse(b'a = "1"\n')
    with pytest.raises(SpecError, match="too long"):
        doc.set("a", "x" * (1 << 20))
    with pytest.raises(SpecError, match="too long"):
        doc.set("b", "x" * vmx.VMX_LIMITS.line_bytes)
    assert doc.to_bytes() == b'a = "1"\n'


def test_a_file_over_its_size_or_line_limit_is_not_parsed() -> None:
    small = vmx.Limits(file_bytes=100, lines=3, line_bytes=50)
    for data, words in ((b'a = "' + b"x" * 100 + b'"\n', "107 bytes, more than the 100"),
                        (b'a = "1"\nb = "2"\nc = "3"\nd = "4"', "4 lines, more than the 3"),
                        (b"\xef\xbb\xbf\n\n\n\n", "4 lines")):
        doc = VmxDocument.parse(data, source="t.vmx", limits=small)
        assert [(p.line, words in p.message) for p in doc.problems] == [(1, True)]
        assert doc.items() == [] and doc.to_bytes() == data
    assert VmxDocument.parse(b'a = "1"\nb = "2"\nc = "3"\n', limits=small).problems == []


def test_set_refuses_a_line_past_the_line_limit() -> None:
    doc = VmxDocument.parse(b'a = "1"\nb = "2"\n', limits=vmx.Limits(file_bytes=100, lines=2, line_bytes=50))
    doc.set("a", "3")  # rewriting a line adds none
    with pytest.raises(SpecError, match="already has 2 lines"):
        doc.set("c", "3")
    assert doc.to_bytes() == b'a = "3"\nb = "2"\n'


def test_load_reads_no_more_than_the_size_limit(tmp_path: Path) -> None:
    huge = tmp_path / "huge.vmx"
    with open(huge, "wb") as handle:
        handle.write(b'a = "1"\n')
        handle.truncate(16 << 30)  # sparse: 16 GiB that reading whole would exhaust memory
    with pytest.raises(SpecError, match="larger than the 256 KiB") as caught:
        VmxDocument.load(huge)
    assert len(caught.value.one_line()) < 300
    fits = tmp_path / "fits.vmx"
    fits.write_bytes(b'a = "1"\n'.ljust(vmx.VMX_LIMITS.file_bytes - 1, b" ") + b"\n")
    assert VmxDocument.load(fits).get("a") == "1"


# -- properties ----------------------------------------------------------------

# Bytes that matter to the grammar, so fuzzing reaches the interesting paths.
_TOKENS = [b"a", b"Key.x", b"=", b" ", b"\t", b'"', b"#", b"|", b"|7C", b"|2", b"\r", b"\n", b"\r\n", b"\x00",
           b"\xef\xbb\xbf", b"\x83", b"\xff", b".encoding", b'"Shift_JIS"', b'"bogus"', b"\xe9"]


def check_invariants(data: bytes) -> None:
    doc = parse(data)
    assert doc.to_bytes() == data
    lines = len(data.splitlines()) or 1
    assert [p.line for p in doc.problems] == sorted(p.line for p in doc.problems)
    for problem in doc.problems:
        assert 1 <= problem.line <= lines + 1
        assert str(problem).startswith(f"t.vmx:{problem.line}: ")
    for key, value in doc.items():
        assert doc.get(key) == value


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=500))
def test_any_bytes_round_trip(data: bytes) -> None:
    check_invariants(data)


@settings(max_examples=300)
@given(st.lists(st.sampled_from(_TOKENS), max_size=60).map(b"".join))
def test_grammar_shaped_bytes_round_trip(data: bytes) -> None:
    check_invariants(data)


_LETTERS = "abcxyzABCXYZ"
_KEYS = st.builds(str.__add__, st.sampled_from(_LETTERS + "."), st.text(_LETTERS + "0129_.:*-", max_size=12))
_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)
_COMMENT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n\x00"), max_size=15)
_WS = st.sampled_from(["", " ", "  ", "\t"])


@st.composite
def vmx_texts(draw: st.DrawFn) -> tuple[bytes, dict[str, str], list[int]]:
    """A realistic file, the effective values it must give and its bad lines."""
    expected: dict[str, str] = {}
    bad: list[int] = []
    lines: list[bytes] = []
    for n in range(1, draw(st.integers(0, 25)) + 1):
        kind = draw(st.sampled_from(["quoted", "quoted", "bare", "comment", "blank", "junk"]))
        if kind == "quoted":
            key, value = draw(_KEYS), draw(_TEXT)
            comment = draw(st.sampled_from(["", "#"])) + draw(_COMMENT) if draw(st.booleans()) else ""
            escaped = vmx._escape(value.encode())
            line = f"{draw(_WS)}{key}{draw(_WS)}={draw(_WS)}".encode() + b'"' + escaped + b'"'
            line += f"{draw(_WS)}{'#' + comment if comment else ''}".encode()
            expected[key.lower()] = value
        elif kind == "bare":
            key, value = draw(_KEYS), draw(st.text(_LETTERS + "0129._:/-", max_size=10))
            line = f"{key} = {value}".encode()
            expected[key.lower()] = value
        elif kind == "comment":
            line = f"{draw(_WS)}#{draw(_COMMENT)}".encode()
        elif kind == "blank":
            line = draw(_WS).encode()
        else:
            line = (draw(st.sampled_from(_LETTERS)) + draw(st.text(_LETTERS + " .", max_size=20))).encode()
            bad.append(n)
        if not line and lines and lines[-1].endswith(b"\r"):
            line = b" "  # else the lone CR and this line's LF would read as one CRLF
        lines.append(line + draw(st.sampled_from([b"\n", b"\r\n", b"\r"])))
    data = (b"\xef\xbb\xbf" if draw(st.booleans()) else b"") + b"".join(lines)
    if lines and draw(st.booleans()):
        data = data.rstrip(b"\r\n")  # no final line end
    return data, expected, bad


@settings(max_examples=300)
@given(vmx_texts())
def test_realistic_texts_round_trip_and_parse(case: tuple[bytes, dict[str, str], list[int]]) -> None:
    data, expected, bad = case
    doc = parse(data)
    assert doc.to_bytes() == data
    assert {k.lower(): v for k, v in doc.items()} == expected
    assert [n for n, _ in errors(doc)] == bad


@settings(max_examples=300)
@given(vmx_texts(), _KEYS, st.text(st.characters(blacklist_categories=("Cs",))))
def test_set_then_get_round_trips_through_bytes(
    case: tuple[bytes, dict[str, str], list[int]], key: str, value: str
) -> None:
    data, expected, _ = case
    doc = parse(data)
    doc.set(key, value)
    again = parse(doc.to_bytes())
    assert again.get(key) == value
    assert again.get(key.upper()) == value
    expected[key.lower()] = value
    assert {k.lower(): v for k, v in again.items()} == expected
    assert errors(again) == errors(doc)


@settings(max_examples=100)
@given(st.text(st.sampled_from('"|#,=\n\r\x00\t a\x7fé中ポ')))
def test_set_special_characters_round_trip(value: str) -> None:
    doc = parse(b'.encoding = "UTF-8"\nx = "old"  # c\n')
    doc.set("x", value)
    assert parse(doc.to_bytes()).get("x") == value
    assert doc.to_bytes().endswith(b"  # c\n")


# -- files ---------------------------------------------------------------------


def test_write_atomic_keeps_mode_and_leaves_no_temp_files(tmp_path: Path) -> None:
    target = tmp_path / "vm.vmx"
    target.write_bytes(b"old")
    target.chmod(0o750)
    write_atomic(target, b"new")
    assert target.read_bytes() == b"new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o750
    assert sorted(os.listdir(tmp_path)) == ["vm.vmx"]


def test_write_atomic_new_file_follows_umask(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        write_atomic(tmp_path / "new.vmx", b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "new.vmx").stat().st_mode) == 0o640


def test_write_atomic_failure_leaves_target_alone(tmp_path: Path) -> None:
    target = tmp_path / "vm.vmx"
    target.write_bytes(b"old")
    with pytest.raises(TypeError):
        write_atomic(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["vm.vmx"]


def test_write_atomic_never_writes_through_a_name_planted_where_its_temp_file_goes(tmp_path: Path, monkeypatch) -> None:
    """A symlink (to a host file) at the temp name write_atomic draws first is neither followed nor replaced: it
    draws another name, as tempfile.mkstemp would."""
    host_file = tmp_path / "host-secret"
    host_file.write_bytes(b"secret")
    folder = tmp_path / "vm"
    folder.mkdir()
    draws = iter([b"\x01" * 6, b"\x02" * 6])
    monkeypatch.setattr(os, "urandom", lambda count: next(draws))
    planted = folder / f".vm.vmx.{'01' * 6}.tmp"
    planted.symlink_to(host_file)
    write_atomic(folder / "vm.vmx", b"new")
    assert (folder / "vm.vmx").read_bytes() == b"new" and host_file.read_bytes() == b"secret"
    assert planted.is_symlink() and sorted(os.listdir(folder)) == [planted.name, "vm.vmx"]


def test_save_and_load(tmp_path: Path) -> None:
    doc = VmxDocument.parse(SEED.read_bytes())
    doc.set("memSize", "2048")
    doc.save(tmp_path / "copy.vmx")
    loaded = VmxDocument.load(tmp_path / "copy.vmx")
    assert loaded.get("memsize") == "2048"
    assert loaded.source == str(tmp_path / "copy.vmx")
    assert loaded.to_bytes() == doc.to_bytes()


# -- surface and speed -----------------------------------------------------------


def test_public_surface() -> None:
    assert sorted(vmx.__all__) == ["Limits", "VMX_LIMITS", "VmxDocument", "VmxProblem", "lookup_charset",
                                   "read_bounded"]
    for name in vmx.__all__:
        assert getattr(vmx, name).__module__ == "minivisor.spec.vmx"


def test_line_of_names_the_effective_line() -> None:
    doc = VmxDocument.parse(b'# c\nmemSize = "1"\n\nMEMSIZE = "2"\n')
    assert doc.line_of("memsize") == 4
    assert doc.line_of("numvcpus") is None


def _set_each(doc: VmxDocument, pairs: list[tuple[str, object]]) -> tuple[bytes, str | None]:
    try:
        for key, value in pairs:
            doc.set(key, value)  # type: ignore[arg-type]
    except (SpecError, TypeError) as exc:
        return doc.to_bytes(), f"{type(exc).__name__}: {exc}"
    return doc.to_bytes(), None


def _set_many(doc: VmxDocument, pairs: list[tuple[str, object]]) -> tuple[bytes, str | None]:
    try:
        doc.set_many(pairs)  # type: ignore[arg-type]
    except (SpecError, TypeError) as exc:
        return doc.to_bytes(), f"{type(exc).__name__}: {exc}"
    return doc.to_bytes(), None


_PAIR_KEYS = _KEYS | st.sampled_from([".encoding", "bad key", "", "x=y", "displayName", "DISPLAYNAME"])
_PAIR_VALUES = _TEXT | st.sampled_from(["UTF-8", "Shift_JIS", "no such charset", "x" * 300]) | st.just(7)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(vmx_texts(), st.sampled_from([b"\n", b"\r\n", b""]),
       st.lists(st.tuples(_PAIR_KEYS, _PAIR_VALUES), max_size=12), st.integers(1, 40))
def test_set_many_writes_and_refuses_what_set_does_key_by_key(text, ending, pairs, max_lines) -> None:
    """The same bytes (existing keys rewritten in place, new ones appended with the file's line ending, the
    encoding changed midway) and the same refusal at the same pair (a bad key, a non-str, a full file)."""
    data = text[0].replace(b"\n", ending) if ending else text[0].rstrip(b"\n")
    limits = vmx.Limits(file_bytes=1 << 20, lines=max_lines, line_bytes=200)
    one_by_one = _set_each(VmxDocument.parse(data, limits=limits), pairs)
    assert _set_many(VmxDocument.parse(data, limits=limits), pairs) == one_by_one
