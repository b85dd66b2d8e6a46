"""Run the minivisor CLI the way a fresh machine can: this interpreter, ``-m minivisor``.

A bare ``minivisor`` from PATH exists only where someone installed it by hand.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def run_cli(*args: str, datastore: Path | None = None, env: dict[str, str] | None = None,
            cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """``minivisor [--datastore DIR] ARGS...`` with output captured as text."""
    argv = [sys.executable, "-m", "minivisor"]
    if datastore is not None:
        argv += ["--datastore", str(datastore)]
    return subprocess.run([*argv, *args], capture_output=True, text=True, cwd=cwd, timeout=timeout,
                          env=env if env is not None else os.environ.copy())


# `python -m minivisor ARGS`, then the names of every module loaded, on stderr after a marker line
RUN_AND_LIST = ("import atexit, runpy, sys\n"
                "atexit.register(lambda: sys.stderr.write('\\nmodules:\\n' + '\\n'.join(sorted(sys.modules))))\n"
                "sys.argv[0] = 'minivisor'\n"
                "runpy.run_module('minivisor', run_name='__main__', alter_sys=True)\n")


def modules_loaded_by_cli(*args: str, env: dict[str, str], script: str = RUN_AND_LIST) -> set[str]:
    """Every module ``minivisor ARGS`` loads, run by ``script`` (RUN_AND_LIST: to its end; the command must
    succeed)."""
    result = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True,
                            timeout=60, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    return set(result.stderr.rpartition("\nmodules:\n")[2].split())
