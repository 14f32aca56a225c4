"""Schemathesis with every check on, against the deployed graph (real Ray, real proxy).

``--checks all`` and the coverage, fuzzing and stateful phases, as an attacker's tool would
run them; the run must report no failure. ``schemathesis.toml`` at the repository root
says which answers the document cannot express (a file that must be audio gets a 422).
Kept short (``-n``): the unit tier fuzzes the same document at length through ASGI.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.integration.conftest import Service

EXAMPLES = 8


def test_schemathesis_all_checks_against_the_live_service(service: Service, tmp_path: Path) -> None:
    if not service.database_url.startswith("sqlite"):
        pytest.skip("database-independent: runs on the sqlite pass of the tier")
    cli = Path(sys.executable).with_name("schemathesis")
    run = subprocess.run(
        [
            str(cli),
            "run",
            f"{service.base_url}/openapi.json",
            "--checks",
            "all",
            "--phases",
            "examples,coverage,fuzzing,stateful",
            "--max-examples",
            str(EXAMPLES),
            "--generation-deterministic",
            "--request-timeout",
            "60",
            "--workers",
            "2",
            "--report",
            "junit",
            "--report-dir",
            str(tmp_path),
        ],
        cwd=REPO,  # picks up schemathesis.toml
        capture_output=True,
        text=True,
        timeout=600,
    )
    tail = (run.stdout + run.stderr)[-6000:]
    assert run.returncode == 0, tail
    assert " passed" in tail and "failures" not in tail.split("SUMMARY")[-1], tail
