"""The client installs and imports without Ray, torch or the server's packages."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SERVER_SIDE = {"ray", "torch", "torchaudio", "whisperx", "pyannote-audio", "whisperx-serve"}


@pytest.mark.timeout(300)
def test_install_resolves_without_ray_or_torch(tmp_path: Path) -> None:
    """What ``pip install ./client[pandas]`` would install into an empty environment.

    Resolves against the configured package index (about 15–70 s, network bound).
    """
    report = tmp_path / "report.json"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--ignore-installed",
            "--quiet",
            "--report",
            str(report),
            f"{REPO / 'client'}[pandas]",
        ],
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    names = {
        item["metadata"]["name"].lower().replace("_", "-")
        for item in json.loads(report.read_text())["install"]
    }
    assert "whisperx-serve-client" in names and {"httpx", "websockets", "pandas"} <= names
    assert not names & SERVER_SIDE, names & SERVER_SIDE
    assert not any(n.startswith(("nvidia-", "torch")) for n in names), names


def test_import_pulls_in_nothing_from_the_server() -> None:
    code = (
        "import sys, whisperx_serve_client as c; c.Client('http://127.0.0.1:1'); "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'ray','torch','whisperx','pyannote','common','ingress','deployments','storage'}); "
        "print(bad)"
    )
    run = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO / "client",
        check=True,
    )
    assert run.stdout.strip() == "[]"
