"""Start ``serve run`` in a process group of its own and stop it as Ctrl-C would.

A shell starts a background job with SIGINT ignored, and an ignored signal stays ignored
across ``exec``: a test run or bench started with ``&`` would hand that to ``serve run``,
which then never hears the SIGINT meant to stop it gracefully. The child gets the default
disposition here, so SIGINT works however the parent was started.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import IO


def start_group(
    args: Sequence[str], *, cwd: Path, env: dict[str, str], log: IO[bytes]
) -> subprocess.Popen[bytes]:
    """``args`` in a new session (so its whole group can be signalled), SIGINT at default."""
    ignored = signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    if ignored:  # only the main thread may do this; it is undone before returning
        signal.signal(signal.SIGINT, signal.SIG_DFL)
    try:
        return subprocess.Popen(
            list(args), cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    finally:
        if ignored:
            signal.signal(signal.SIGINT, signal.SIG_IGN)


def interrupt_group(proc: subprocess.Popen[bytes], timeout: float) -> bool:
    """SIGINT to the group, as Ctrl-C; SIGKILL after ``timeout``. True if SIGINT sufficed."""
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=timeout)
        return True
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return False
