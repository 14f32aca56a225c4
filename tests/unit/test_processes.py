"""Test plumbing for servers in other processes: ``start_group`` hands its child a working
SIGINT even when this process ignores it; ``free_port`` stays clear of ephemeral ports."""

from __future__ import annotations

import signal
import socket
import sys
from pathlib import Path

from tests.ports import free_port
from tests.processes import interrupt_group, start_group
from tests.waiting import wait_until

WAITS_FOR_CTRL_C = """
import signal, sys, time
print(signal.getsignal(signal.SIGINT) is signal.SIG_IGN, flush=True)
time.sleep(60)
"""


def test_child_hears_sigint_although_the_parent_ignores_it(tmp_path: Path) -> None:
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as in a background job
    try:
        with (tmp_path / "child.log").open("wb") as log:
            proc = start_group(
                [sys.executable, "-c", WAITS_FOR_CTRL_C], cwd=tmp_path, env={}, log=log
            )
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN  # ours is put back
    finally:
        signal.signal(signal.SIGINT, previous)
    log_path = tmp_path / "child.log"
    wait_until(lambda: log_path.read_text(), timeout=30, interval=0.05, what="the child started")
    assert log_path.read_text().startswith("False"), "the child inherited SIG_IGN"
    assert interrupt_group(proc, timeout=20), "the child ignored SIGINT and was killed"


def test_free_port_is_outside_the_range_outgoing_connections_use() -> None:
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    port = free_port()
    assert 20_000 <= port < low
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))  # free, as promised
