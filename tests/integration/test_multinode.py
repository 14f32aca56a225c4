"""The service across a real three-node Ray cluster (the scenario is tests/multinode.py).

It runs in a child process: one process holds one Ray session, and this tier's shared
cluster (tests/integration/conftest.py) may be up in this one. The child starts its own
cluster, and stops it, whatever happens.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.postgres


def test_upload_completes_across_three_nodes_and_a_node_local_store_is_refused() -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "client")]),
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "tests.multinode"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    report = "\n".join(line for line in proc.stdout.splitlines() if "[multinode" in line)
    print(report)
    assert proc.returncode == 0, (
        f"{report}\n--- output ---\n{proc.stdout[-6000:]}\n{proc.stderr[-12000:]}"
    )
