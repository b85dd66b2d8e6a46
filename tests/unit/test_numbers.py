"""Outside text read as a number (minivisor.text.is_number): what int() takes, and no more than wanted."""

from __future__ import annotations

import pytest

from minivisor.text import is_number


@pytest.mark.parametrize("text, digits, taken", [("0", 19, True), ("65535", 5, True), ("123456", 5, False),
                                                 ("", 19, False), ("²", 19, False), ("٣", 19, False),
                                                 ("1" * 5000, 19, False), ("-1", 19, False), ("+1", 19, False),
                                                 (" 1", 19, False), ("1_000", 19, False)])
def test_only_ascii_digits_within_the_bound_are_a_number(text, digits, taken):
    assert is_number(text, digits) is taken
    if taken:
        assert int(text) >= 0
