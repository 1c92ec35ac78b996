"""Start a test worker module as 2 processes on this machine, as torchrun would set them up (gloo)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: what a rank prints when gloo's threads are torn down while it exits (std::terminate, exit -6); seen about
#: once in 30 full-suite runs on this 2-core machine under load, after the worker's work was done
TEARDOWN_ABORT = "terminate called without an active exception"


def run_two_processes(module: str, *args: str, timeout: float = 300) -> list[str]:
    """Run `python -m module args...` as ranks 0 and 1; asserts both exit 0 and returns their output.

    A launch whose only failure is the teardown abort above is run once more (the test then checks
    the second launch's outputs); any other failure, or the abort twice, fails."""
    try:
        return _launch(module, args, timeout)
    except AssertionError as error:
        if TEARDOWN_ABORT not in str(error):
            raise
        return _launch(module, args, timeout)


def _launch(module: str, args: tuple[str, ...], timeout: float) -> list[str]:
    port = str(free_port())
    procs = []
    for rank in range(2):
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "WORLD_SIZE": "2", "RANK": str(rank),
               "LOCAL_RANK": str(rank), "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
        procs.append(subprocess.Popen([sys.executable, "-m", module, *args], env=env, cwd=ROOT,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=timeout)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(outputs)[-4000:]
    return outputs
