"""Web sessions and console tickets over time (a clock the test moves): they expire, tickets are spent once."""

from __future__ import annotations

import pytest

from minivisor.errors import AuthError, CrossSiteError
from minivisor.service.sessions import IDLE, LIFETIME, MAX_SESSIONS, TICKET_LIFETIME, Sessions


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


def test_a_session_lives_while_used_but_not_past_its_idle_time_or_lifetime(clock):
    sessions = Sessions(8700, clock)
    start = clock.now
    used, idle = sessions.open(), sessions.open()
    clock.now += IDLE - 1
    assert sessions.valid(used)
    clock.now += 2
    assert not sessions.valid(idle)  # unused for longer than IDLE
    assert sessions.valid(used)
    while clock.now + IDLE - 1 < start + LIFETIME:
        clock.now += IDLE - 1
        assert sessions.valid(used)  # each use restarts its idle time
    clock.now = start + LIFETIME + 1  # used a moment ago, but older than LIFETIME
    assert not sessions.valid(used)


def test_unknown_closed_and_empty_sessions_are_invalid(clock):
    sessions = Sessions(8700, clock)
    session = sessions.open()
    assert not sessions.valid("") and not sessions.valid(None) and not sessions.valid(session + "x")
    sessions.close(session)
    assert not sessions.valid(session)


def test_the_number_of_sessions_is_bounded_oldest_first(clock):
    sessions = Sessions(8700, clock)
    first = sessions.open()
    later = [sessions.open() for _ in range(MAX_SESSIONS)]
    assert not sessions.valid(first) and all(sessions.valid(s) for s in later)


def test_the_cookie_is_found_only_under_this_services_name_and_only_once(clock):
    sessions = Sessions(8700, clock)
    assert sessions.session_of("minivisor-8700=abc; other=1") == "abc"
    assert sessions.session_of("minivisor-8701=abc") is None
    assert sessions.session_of("minivisor-8700=abc; minivisor-8700=def") is None
    assert "HttpOnly" in sessions.set_cookie("abc") and "SameSite=Strict" in sessions.set_cookie("abc")


def test_a_ticket_opens_one_console_of_one_vm_once_within_its_lifetime(clock):
    sessions = Sessions(8700, clock)
    ticket = sessions.mint_ticket("Web", "serial")
    sessions.spend_ticket(ticket, "web", "serial")  # VM names are case-insensitive
    with pytest.raises(AuthError):
        sessions.spend_ticket(ticket, "web", "serial")  # spent
    for vm, console in (("other", "serial"), ("web", "vnc")):
        wrong = sessions.mint_ticket("web", "serial")
        with pytest.raises(AuthError):
            sessions.spend_ticket(wrong, vm, console)
        with pytest.raises(AuthError):
            sessions.spend_ticket(wrong, "web", "serial")  # a wrong try spends it too
    late = sessions.mint_ticket("web", "serial")
    clock.now += TICKET_LIFETIME + 0.1
    with pytest.raises(AuthError):
        sessions.spend_ticket(late, "web", "serial")


def test_a_change_on_the_cookie_must_come_from_the_page(clock):
    own = frozenset({"http://127.0.0.1:8700"})
    Sessions.check_same_origin("http://127.0.0.1:8700", own, "1")
    for origin, csrf in (("http://evil.example", "1"), (None, "1"), ("null", "1"), ("http://127.0.0.1:8700", None)):
        with pytest.raises(CrossSiteError):
            Sessions.check_same_origin(origin, own, csrf)
