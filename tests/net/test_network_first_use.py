"""The default networks (nat, hostonly) enter the catalog at their first real use, under the network lock:
reading them (``net show``, ``vm ip``) changes nothing, however many processes read at once.

Each runs minivisor inside a network namespace of its own (no VM boots).
"""

from __future__ import annotations

import subprocess
import sys


def _at_once(lab, *commands: tuple[str, ...]) -> list[subprocess.CompletedProcess]:
    """The minivisor commands run all at once in the lab; each one's result."""
    env = lab.env | {"MINIVISOR_DIRECT": "1"}
    started = [subprocess.Popen(["ip", "netns", "exec", lab.host, sys.executable, "-m", "minivisor", "-d",
                                 str(lab.datastore), *command], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=env) for command in commands]
    return [subprocess.CompletedProcess(p.args, p.wait(timeout=120), *p.communicate()) for p in started]


def test_reads_of_an_unused_default_network_at_once_all_succeed_and_define_nothing(lab):
    lab.mv("vm", "create", "web", "--network", "nat", "--disk-size", "16M")
    done = _at_once(lab, *[("net", "show", "nat", "--json")] * 3, *[("vm", "ip", "web", "--json")] * 3)
    assert [d.returncode for d in done] == [0] * 6, [d.stderr for d in done]
    nat = lab.mv_json("net", "show", "nat")
    assert nat["subnet"] is None and nat["state"] == "inactive"  # nat is defined when a VM plugs into it
    assert lab.minivisor_leftovers() == []
