"""Test-side helpers that talk to a running service over real HTTP and WebSocket."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import websockets


@dataclass
class Stream:
    frames: list[dict[str, Any]] = field(default_factory=list)
    close_code: int | None = None
    close_reason: str = ""

    @property
    def snapshot(self) -> dict[str, Any]:
        return self.frames[0]

    @property
    def events(self) -> list[dict[str, Any]]:
        return self.frames[1:]


async def collect(
    ws_base: str, task_id: str, *, after_seq: int | None = None, timeout: float = 300
) -> Stream:
    """Read one task's WebSocket from the snapshot to the server's close."""
    url = f"{ws_base}/ws/tasks/{task_id}" + (
        f"?after_seq={after_seq}" if after_seq is not None else ""
    )
    stream = Stream()
    async with asyncio.timeout(timeout), websockets.connect(url, max_size=None) as ws:
        try:
            async for message in ws:
                stream.frames.append(json.loads(message))
        except websockets.ConnectionClosed:
            pass
        stream.close_code, stream.close_reason = ws.close_code, ws.close_reason or ""
    return stream


def submit(base_url: str, path: Path, **params: Any) -> str:
    with path.open("rb") as f:
        r = httpx.post(
            f"{base_url}/speech-to-text", params=params, files={"file": (path.name, f)}, timeout=60
        )
    assert r.status_code == 200, r.text
    return str(r.json()["identifier"])


def assert_well_ordered(stream: Stream) -> None:
    """Gapless seq after the snapshot, monotonic percentage, exactly one terminal event, last."""
    events = stream.events
    assert events, "no events after the snapshot"
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), f"seq gaps: {seqs}"
    pcts = [e["percentage"] for e in events if e["type"] == "progress"]
    assert pcts == sorted(pcts), f"percentage went backwards: {pcts}"
    terminal = [e for e in events if e["status"] in ("completed", "failed", "cancelled")]
    assert len(terminal) == 1 and terminal[0] is events[-1]
    assert stream.close_code == 1000, (stream.close_code, stream.close_reason)
