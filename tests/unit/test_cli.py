"""``whisperx-serve`` (ingress.cli) run as a real command in a subprocess."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from ingress.auth import hash_key
from ingress.cli import main
from storage import api_keys
from storage.db import Database, migrate

REPO = Path(__file__).resolve().parents[2]


def run(data_dir: Path, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'client'}",
        "WHISPERX_SERVE_DATA_DIR": str(data_dir),
    }
    env.pop("WHISPERX_SERVE_DATABASE_URL", None)
    proc = subprocess.run(
        [sys.executable, "-m", "ingress.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (proc.returncode == 0) is ok, proc.stdout + proc.stderr
    return proc


def test_the_console_script_points_at_the_cli() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert project["project"]["scripts"]["whisperx-serve"] == "ingress.cli:main"
    from ingress import cli

    assert callable(cli.main)


def _sqlite_version(path: Path) -> list[str]:
    with sqlite3.connect(path) as conn:
        return [r[0] for r in conn.execute("SELECT version_num FROM alembic_version")]


def test_the_installed_command_helps_and_migrates(tmp_path: Path) -> None:
    """The ``whisperx-serve`` executable that ``pip install`` put next to this Python (what
    an operator types), not ``python -m``: its help, then ``migrate`` on a fresh SQLite."""
    command = Path(sys.executable).parent / "whisperx-serve"
    assert command.is_file(), f"{command} missing: install the project (make install)"
    env = {
        **os.environ,
        "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'client'}",
        "WHISPERX_SERVE_DATA_DIR": str(tmp_path / "data"),
    }
    env.pop("WHISPERX_SERVE_DATABASE_URL", None)

    def invoke(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(command), *args], env=env, capture_output=True, text=True, timeout=120
        )

    shown = invoke("--help")
    assert shown.returncode == 0, shown.stderr
    assert "usage: whisperx-serve" in shown.stdout
    assert "migrate" in shown.stdout and "keys" in shown.stdout
    assert not (tmp_path / "data").exists()  # help touches no database

    db_file = tmp_path / "data" / "whisperx-serve.db"
    for _ in range(2):  # a fresh database, then one already at the latest schema
        done = invoke("migrate")
        assert done.returncode == 0, done.stdout + done.stderr
        assert "latest schema" in done.stdout
    reference = tmp_path / "reference.db"
    migrate(f"sqlite:///{reference}")
    assert _sqlite_version(db_file) == _sqlite_version(reference) != []

    wrong = invoke("no-such-command")
    assert wrong.returncode == 2 and "invalid choice" in wrong.stderr


def cli(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[int, str]:
    """The same command in this process (fast); ``run`` is the real subprocess."""
    monkeypatch.setenv("WHISPERX_SERVE_DATA_DIR", str(data_dir))
    monkeypatch.delenv("WHISPERX_SERVE_DATABASE_URL", raising=False)
    try:
        code = main(list(args))
    except SystemExit as exc:
        code = 1 if exc.code else 0
    return code, capsys.readouterr().out


def test_create_list_revoke(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    created = run(tmp_path, "keys", "create", "--name", "alice", "--per-minute", "5").stdout
    key = re.search(r"api key:\s+(wxs_[A-Za-z0-9_-]{43})\n", created)
    secret = re.search(r"signing secret:\s+(whsec_\S+)\n", created)
    assert key and secret, created
    assert cli(tmp_path, monkeypatch, capsys, "keys", "create", "--name", "root", "--admin")[0] == 0
    # An active key already has the name.
    assert cli(tmp_path, monkeypatch, capsys, "keys", "create", "--name", "alice")[0] == 1

    listed = run(tmp_path, "keys", "list", "--json").stdout
    rows = [json.loads(line) for line in listed.splitlines()]
    assert [(r["name"], r["admin"], r["per_minute"]) for r in rows] == [
        ("alice", False, 5),
        ("root", True, None),
    ]
    table = cli(tmp_path, monkeypatch, capsys, "keys", "list")[1]
    for shown in (listed, table):  # the prefix only, never the key or the signing secret
        assert key.group(1) not in shown and secret.group(1) not in shown
        assert key.group(1)[:12] in shown
    code, out = cli(tmp_path, monkeypatch, capsys, "keys", "signing-secret", "alice")
    assert code == 0 and out.strip() == secret.group(1)

    db_file = tmp_path / "whisperx-serve.db"
    with sqlite3.connect(db_file) as conn:
        dump = "\n".join(conn.iterdump())
    assert key.group(1) not in dump and hash_key(key.group(1)) in dump

    assert "revoked" in run(tmp_path, "keys", "revoke", "alice").stdout
    # No active key of that name now.
    assert cli(tmp_path, monkeypatch, capsys, "keys", "revoke", "alice")[0] == 1
    db = Database(f"sqlite:///{db_file}")
    try:
        assert api_keys.find_active_key(db, key_hash=hash_key(key.group(1))) is None
        assert api_keys.count_api_keys(db) == api_keys.KeyCounts(total=2, active=1)
    finally:
        db.dispose()
    # The name is free again.
    assert cli(tmp_path, monkeypatch, capsys, "keys", "create", "--name", "alice")[0] == 0


def test_migrate_and_bad_limits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert "latest schema" in cli(tmp_path, monkeypatch, capsys, "migrate")[1]
    args = ("keys", "create", "--name", "x", "--max-active", "0")
    assert cli(tmp_path, monkeypatch, capsys, *args)[0] == 1
