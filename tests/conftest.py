"""Suite-wide setup: offline, no telemetry, tests marked by folder, shared paths."""

from __future__ import annotations

import os

os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODELS_DIR = Path(
    os.environ.get("WHISPERX_SERVE_MODELS_DIR", REPO.parent / "shared" / "models")
).resolve()
JFK = MODELS_DIR / "audio" / "jfk.flac"

_TIERS = ("unit", "integration", "e2e", "browser")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).relative_to(REPO / "tests").parts
        if parts and parts[0] in _TIERS:
            item.add_marker(getattr(pytest.mark, parts[0]))


@pytest.fixture(scope="session")
def models_dir() -> Path:
    assert MODELS_DIR.is_dir(), f"offline model bundle not found at {MODELS_DIR}"
    return MODELS_DIR


@pytest.fixture(scope="session")
def jfk_path(models_dir: Path) -> Path:
    return models_dir / "audio" / "jfk.flac"


def normalise(text: str) -> str:
    return " ".join("".join(c.lower() if c.isalnum() else " " for c in text).split())
