"""The state table: every action in every state, and what a refusal carries."""

from __future__ import annotations

import pytest

from minivisor.errors import LockError, StateError
from minivisor.vmm.states import LEGAL, Action, VmState, legal_actions, require

OFF, STARTING, RUNNING, PAUSED = VmState.POWERED_OFF, VmState.STARTING, VmState.RUNNING, VmState.PAUSED

# What a VMware user expects of each action, written out once more by hand: the table must say the same.
EXPECTED = {
    Action.START: {OFF},
    Action.STOP: {RUNNING, PAUSED},
    Action.RESET: {RUNNING, PAUSED},
    Action.PAUSE: {RUNNING},
    Action.RESUME: {PAUSED},
    Action.CONSOLE: {RUNNING, PAUSED},
    Action.EXEC: {RUNNING},
    Action.UNREGISTER: {OFF},
    Action.DELETE: {OFF},
    Action.SNAPSHOT: {OFF, RUNNING, PAUSED},
    Action.REVERT: {OFF, RUNNING, PAUSED},
    Action.DELETE_SNAPSHOT: {OFF, RUNNING, PAUSED},
    Action.CLONE: {OFF, RUNNING, PAUSED},
    Action.RESIZE_DISK: {OFF, RUNNING, PAUSED},
    Action.RECOVER: {OFF, RUNNING, PAUSED},
    Action.NIC: {OFF, RUNNING, PAUSED},
    Action.RESET_NVRAM: {OFF},
    Action.CDROM: {OFF, RUNNING, PAUSED},
    Action.EDIT_SPECFILE: {OFF},
    Action.MIGRATE: {RUNNING, PAUSED},
    Action.REPLICATE: {OFF, RUNNING, PAUSED},
}


def test_the_table_covers_every_action():
    assert set(LEGAL) == set(Action) == set(EXPECTED)


@pytest.mark.parametrize("action", list(Action), ids=lambda a: a.name)
@pytest.mark.parametrize("state", list(VmState), ids=lambda s: s.name)
def test_each_action_in_each_state(action, state):
    if state in EXPECTED[action]:
        require("web", state, action)  # legal: no error
        assert action in legal_actions(state)
        return
    with pytest.raises(StateError) as refused:
        require("web", state, action)
    error = refused.value
    assert not isinstance(error, LockError)
    assert (error.code, error.exit_code) == ("invalid-state", 4)
    assert (error.vm, error.state, error.action) == ("web", state.value, action.value)
    assert error.legal == tuple(a.value for a in legal_actions(state))
    assert action.value not in error.legal
    assert f"it is {state.value}" in error.message and "'web'" in error.message
    assert error.hint and "\n" not in error.one_line()


def test_nothing_is_legal_while_another_operation_holds_the_vm():
    assert legal_actions(STARTING) == ()
    with pytest.raises(StateError) as refused:
        require("web", STARTING, Action.STOP)
    assert "retry when it has finished" in refused.value.hint


@pytest.mark.parametrize("state, action, hint", [
    (OFF, Action.EXEC, "minivisor vm start web"),
    (RUNNING, Action.DELETE, "minivisor vm stop web"),
    (PAUSED, Action.EXEC, "minivisor vm resume web"),
    (RUNNING, Action.RESUME, "running already"),
    (PAUSED, Action.PAUSE, "paused already"),
])
def test_the_hint_says_what_to_do_from_this_state(state, action, hint):
    with pytest.raises(StateError) as refused:
        require("web", state, action)
    assert hint in refused.value.hint
