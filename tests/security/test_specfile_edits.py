"""A specfile edited as text through the core API (``get_specfile`` / ``put_specfile``, what the web page's
Specfile tab calls): written exactly as given once it checks out as power-on would, else refused with the
line it is about and nothing written. The attacker sends the text."""

from __future__ import annotations

import pytest
from attacks import plant_secret
from refusals import datastore_state

from minivisor.errors import ArgumentError, ConflictError, PathError, SpecError, StateError


@pytest.fixture
def web(hv):
    hv.create_vm("web", memory_mib=64, disk_size="16M", network="none")
    return hv


def edited(text: str, old: str, new: str) -> str:
    assert old in text
    return text.replace(old, new)


def test_an_edit_is_written_byte_for_byte_and_the_inventory_sees_it(web):
    seen = []
    web.on_event = seen.append
    read = web.get_specfile("web")
    vmx = web.datastore.root / "web" / "web.vmx"
    assert read["text"] == vmx.read_text()
    text = edited(read["text"], 'memSize = "64"', 'memSize = "96"   # more, for the installer')
    text += "# kept\nsomething.minivisorDoesNotKnow = \"x\"\r\n"
    result = web.put_specfile("web", text, read["stamp"])
    assert vmx.read_bytes() == text.encode()
    assert web.get_vm("web").memory_mib == 96  # the summary cache follows
    assert result["stamp"] == web.get_specfile("web")["stamp"] != read["stamp"]
    assert result["powers_on"] is True
    assert seen[-1]["type"] == "specfileChanged" and seen[-1]["stamp"] == result["stamp"]


def refused(hv, error: type, text: str, stamp: str | None = None, *, running: bool = False):
    """The put's error, with the datastore (the specfile first) exactly as before it (but for the logs of a
    ``running`` VM)."""
    before = datastore_state(hv.datastore.root, running=running)
    with pytest.raises(error) as caught:
        hv.put_specfile("web", text, stamp or hv.get_specfile("web")["stamp"])
    assert datastore_state(hv.datastore.root, running=running) == before
    return caught.value


def test_a_malformed_line_is_refused_with_its_line_number(web):
    text = web.get_specfile("web")["text"]
    lines = text.splitlines(keepends=True)
    lines.insert(2, 'displayName = "x" -drive file=/etc/shadow"\n')  # a quote injection
    error = refused(web, SpecError, "".join(lines))
    assert error.line == 3 and error.details() == {"line": 3}
    assert "line" in error.message.lower() or ":3:" in error.message


def test_a_value_out_of_range_names_its_line(web):
    text = web.get_specfile("web")["text"]
    error = refused(web, SpecError, edited(text, 'memSize = "64"', 'memSize = "lots"'))
    assert error.line == text.splitlines().index('memSize = "lots"'.replace("lots", "64")) + 1


def test_more_memory_than_the_host_has_is_refused_on_the_memsize_line(web):
    text = web.get_specfile("web")["text"]
    error = refused(web, SpecError, edited(text, 'memSize = "64"', 'memSize = "16777216"'))
    assert "host's memory" in error.message
    assert error.line == text.splitlines().index('memSize = "64"') + 1


@pytest.mark.parametrize("target", ["/etc/shadow", "{secret}", "../../../../etc/shadow"])
def test_a_disk_outside_the_datastore_is_refused_on_its_line(web, tmp_path, target):
    secret = plant_secret(tmp_path / "host")
    text = web.get_specfile("web")["text"]
    disk_line = next(line for line in text.splitlines() if line.startswith("scsi0:0.fileName"))
    bad = edited(text, disk_line, f'scsi0:0.fileName = "{target.format(secret=secret.path)}"')
    error = refused(web, PathError, bad)
    assert error.line == text.splitlines().index(disk_line) + 1


def test_a_key_smuggled_in_after_a_carriage_return_is_read_as_its_own_line(web, tmp_path):
    """VMware's reader ends a line at a lone CR too: what hides behind one is checked like any other key."""
    secret = plant_secret(tmp_path / "host")
    text = web.get_specfile("web")["text"]
    bad = edited(text, 'memSize = "64"', f'memSize = "64"\rscsi0:1.present = "TRUE"\rscsi0:1.fileName = "{secret.path}"')
    error = refused(web, PathError, bad)
    assert error.line == text.splitlines().index('memSize = "64"') + 3


def test_a_nul_byte_is_refused_on_its_line(web):
    text = web.get_specfile("web")["text"]
    error = refused(web, SpecError, edited(text, 'memSize = "64"', 'memSize = "64\x00"'))
    assert error.line == text.splitlines().index('memSize = "64"') + 1


def test_a_huge_body_is_refused_before_it_is_parsed(web):
    text = web.get_specfile("web")["text"]
    error = refused(web, ArgumentError, text + "# " + "x" * (300 * 1024) + "\n")
    assert "more than" in error.message


def test_a_stale_stamp_is_refused_and_the_other_edit_kept(web):
    first = web.get_specfile("web")
    web.put_specfile("web", edited(first["text"], 'memSize = "64"', 'memSize = "80"'), first["stamp"])
    error = refused(web, ConflictError, edited(first["text"], 'memSize = "64"', 'memSize = "72"'), first["stamp"])
    assert "reload" in error.hint
    assert web.get_vm("web").memory_mib == 80


@pytest.mark.qemu
def test_a_running_vms_specfile_is_not_edited(web):
    read = web.get_specfile("web")
    web.start_vm("web")
    try:
        error = refused(web, StateError, edited(read["text"], 'memSize = "64"', 'memSize = "80"'), read["stamp"],
                        running=True)
        assert error.state == "running" and "power it off" in error.hint
    finally:
        web.stop_vm("web", hard=True)


def test_a_lone_surrogate_or_a_character_the_charset_lacks_is_refused_on_its_line(web):
    text = web.get_specfile("web")["text"]
    line = text.splitlines().index('memSize = "64"') + 1
    error = refused(web, SpecError, edited(text, 'memSize = "64"', 'memSize = "64"\nannotation = "\udcff"'))
    assert error.line == line + 1
    latin = edited(text, '.encoding = "UTF-8"', '.encoding = "ISO-8859-1"')
    error = refused(web, SpecError, edited(latin, 'memSize = "64"', 'memSize = "64"\nannotation = "\u4e2d"'))
    assert error.line == line + 1 and "ISO-8859-1".lower().replace("-", "") in error.message.replace("_", "")


def test_a_specfile_in_another_charset_is_shown_and_saved_in_it(web):
    vmx = web.datastore.root / "web" / "web.vmx"
    vmx.write_bytes(vmx.read_bytes().replace(b'.encoding = "UTF-8"', b'.encoding = "windows-1252"')
                    + b'annotation = "caf\xe9"\n')
    read = web.get_specfile("web")
    assert 'annotation = "café"' in read["text"]
    web.put_specfile("web", read["text"].replace("café", "cafés"), read["stamp"])
    assert vmx.read_bytes().endswith(b'annotation = "caf\xe9s"\n')


def test_a_specfile_that_is_not_text_in_its_charset_is_not_shown(web):
    vmx = web.datastore.root / "web" / "web.vmx"
    vmx.write_bytes(vmx.read_bytes() + b'annotation = "\xff\xfe"\n')
    with pytest.raises(SpecError) as caught:
        web.get_specfile("web")
    assert caught.value.line == vmx.read_bytes().count(b"\n")
