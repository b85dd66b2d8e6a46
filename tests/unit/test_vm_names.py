"""The VM name rule, checked character by character (no ``re`` on the client's path), is the rule's regex exactly."""

from __future__ import annotations

import re

import pytest

from minivisor.datastore.names import VM_NAME, VM_NAME_RULE, check_vm_name, is_vm_name
from minivisor.errors import SpecError

ODD = ["", "a", "A" * 63, "A" * 64, "a\n", "\na", "a b", "-a", ".a", "_a", "a-", "a.", "web.vmx", "x.tmp", "..",
       "\u00e9t\u00e9", "\u0663", "\u212a", "\uff41", "a/b", "a\\b", "a\x00", "9", "web-01.prod_2"]


@pytest.mark.parametrize("name", ODD + [chr(c) for c in range(0x180)] + [f"a{chr(c)}" for c in range(0x180)])
def test_the_check_is_the_rule(name):
    assert is_vm_name(name) == (re.match(VM_NAME_RULE, name) is not None) == (VM_NAME.match(name) is not None)


@pytest.mark.parametrize("name", ["web.vmx", "web.tmp", "a b", "", "A" * 64, "../x", "a\n"])
def test_what_the_rule_refuses_or_minivisor_reserves_is_refused(name):
    with pytest.raises(SpecError):
        check_vm_name(name)


def test_a_good_name_is_returned():
    assert check_vm_name("web-01.prod_2") == "web-01.prod_2"
