"""A free TCP port on 127.0.0.1 for a server that some other process will bind later.

Asking the kernel for port 0 hands out one from the ephemeral range, the range it also
gives every outgoing connection: between choosing the port and a Serve proxy binding it, a
freshly started Ray worker connecting somewhere can take it (CI once lost a whole test tier
to "Address already in use"). So the port comes from below that range, where only explicit
binds land, and is checked to be free.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

_FLOOR = 20_000  # clear of the 10002-19999 range Ray documents for worker ports


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768  # Linux's default


def free_port() -> int:
    low = _ephemeral_low()
    candidates = list(range(_FLOOR, low)) if low > _FLOOR + 100 else []
    random.shuffle(candidates)
    for port in candidates[:200]:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:  # an unusual port range: fall back to the kernel's choice
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
