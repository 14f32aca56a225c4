"""Client tests run against a real HTTP + WebSocket server without Ray (see harness.py).

They belong to the unit tier: marked ``unit`` here, by folder, like tests/conftest.py
marks the other tiers.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from whisperx_serve_client import Client

from tests.client.harness import Live, live_server

HERE = Path(__file__).resolve().parent
BAD_AUDIO = b"this is not audio at all" * 100


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).resolve().is_relative_to(HERE):
            item.add_marker(pytest.mark.unit)


@pytest.fixture
def live(tmp_path: Path) -> Iterator[Live]:
    with live_server(tmp_path / "server") as server:
        yield server


@pytest.fixture
def client(live: Live) -> Iterator[Client]:
    with Client(live.base_url, retries=3, backoff=0.02, poll_interval=0.05, timeout=30) as c:
        yield c


@pytest.fixture(scope="session")
def jfk_bytes(jfk_path: Path) -> bytes:
    return jfk_path.read_bytes()
