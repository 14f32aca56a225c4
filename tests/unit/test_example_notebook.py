"""The example notebook is committed executed, with the outputs a reader should see."""

from __future__ import annotations

import json
from pathlib import Path

NOTEBOOK = Path(__file__).resolve().parents[2] / "examples" / "batch_transcription.ipynb"


def test_notebook_was_executed_with_bars_and_dataframes() -> None:
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    counts = [c["execution_count"] for c in code]
    assert code and counts == list(range(1, len(code) + 1)), f"not run top to bottom: {counts}"
    assert not [o for c in code for o in c["outputs"] if o["output_type"] == "error"]
    streams = "".join(
        "".join(o.get("text", ""))
        for c in code
        for o in c["outputs"]
        if o["output_type"] == "stream"
    )
    assert "Transcribing: 100%" in streams and "[diarizing]" in streams  # overall + per file
    html = [
        "".join(o["data"]["text/html"])
        for c in code
        for o in c["outputs"]
        if "text/html" in o.get("data", {})
    ]
    assert any("SPEAKER_00" in h and "SPEAKER_01" in h for h in html)  # two-speaker words
    assert any("invalid_audio" in h for h in html)  # the bad file, kept apart
