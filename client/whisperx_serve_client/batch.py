"""Many files at once: per-file outcomes that survive each other's failures, and progress bars.

The bars use ``tqdm.auto``: text bars in a terminal, widgets in Jupyter (when ipywidgets
is installed). One overall bar counts files; each file in flight has its own bar in
percent, described by its current stage.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, overload
from urllib.parse import urlsplit

from whisperx_serve_client.errors import ClientError
from whisperx_serve_client.models import (
    TRANSCRIPT_COLUMNS,
    ResultFormat,
    TaskEvent,
    Transcript,
    _pandas,
    check_format,
)

if TYPE_CHECKING:
    import pandas as pd


@dataclass(frozen=True)
class BatchItem:
    """One source of a batch and how it ended."""

    index: int
    """Position in the sources given."""
    source: str
    """The source as given (a path or URL), or ``<bytes #i>``."""
    outcome: Transcript | ClientError
    task_id: str | None = None
    """``None`` when the source was never accepted (e.g. the server answered 422)."""

    @property
    def ok(self) -> bool:
        return isinstance(self.outcome, Transcript)

    @property
    def transcript(self) -> Transcript:
        """The transcript; raises the item's error if it failed."""
        if isinstance(self.outcome, ClientError):
            raise self.outcome
        return self.outcome

    @property
    def error(self) -> ClientError | None:
        return self.outcome if isinstance(self.outcome, ClientError) else None


class BatchResult(Sequence[BatchItem]):
    """The items of a batch in the order the sources were given."""

    def __init__(self, items: Sequence[BatchItem]) -> None:
        self._items = list(items)

    def __len__(self) -> int:
        return len(self._items)

    @overload
    def __getitem__(self, index: int) -> BatchItem: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[BatchItem]: ...
    def __getitem__(self, index: int | slice) -> BatchItem | Sequence[BatchItem]:
        return self._items[index]

    def __iter__(self) -> Iterator[BatchItem]:
        return iter(self._items)

    def __repr__(self) -> str:
        return (
            f"BatchResult({len(self)} sources: {len(self.succeeded)} succeeded, "
            f"{len(self.failed)} failed)"
        )

    @property
    def succeeded(self) -> list[BatchItem]:
        return [item for item in self._items if item.ok]

    @property
    def failed(self) -> list[BatchItem]:
        return [item for item in self._items if not item.ok]

    @property
    def transcripts(self) -> list[Transcript]:
        """The transcripts of the items that succeeded, in source order."""
        return [item.transcript for item in self.succeeded]

    def outcomes(self) -> dict[str, Transcript | ClientError]:
        """Source → transcript or error (a source given twice keeps its last outcome)."""
        return {item.source: item.outcome for item in self._items}

    def to_dataframe(self, level: Literal["segment", "word"] = "segment") -> pd.DataFrame:
        """All succeeded transcripts in one frame: ``file`` first, then the transcript's
        columns (see ``Transcript.to_dataframe``), then ``task_id``."""
        if level not in TRANSCRIPT_COLUMNS:
            raise ValueError(f"level must be 'segment' or 'word', not {level!r}")
        pd = _pandas()
        columns = ["file", *TRANSCRIPT_COLUMNS[level], "task_id"]
        rows = [
            {"file": item.source, **row, "task_id": item.task_id}
            for item in self.succeeded
            for row in item.transcript.rows(level)
        ]
        return pd.DataFrame(rows, columns=columns)

    def errors_dataframe(self) -> pd.DataFrame:
        """One row per failed source: file, error_code, user_message, technical_detail."""
        pd = _pandas()
        rows = [
            {
                "file": item.source,
                "error_code": err.error_code,
                "user_message": err.user_message,
                "technical_detail": err.technical_detail,
                "task_id": item.task_id,
            }
            for item in self.failed
            if (err := item.error) is not None
        ]
        columns = ["file", "error_code", "user_message", "technical_detail", "task_id"]
        return pd.DataFrame(rows, columns=columns)

    def save_all(self, directory: str | Path, format: ResultFormat = "json") -> list[Path]:
        """Write each succeeded transcript to ``directory`` as ``<name>.<format>``.

        Formats other than json are rendered by the server (one request per file). Names
        come from the sources; clashes get the item's index appended.
        """
        check_format(format)
        target = Path(directory)
        target.mkdir(parents=True, exist_ok=True)
        written: list[Path] = []
        taken: set[str] = set()
        for item in self.succeeded:
            stem = _stem(item)
            if stem in taken:
                stem = f"{stem}-{item.index}"
            taken.add(stem)
            written.append(item.transcript.save(target / f"{stem}.{format}", format))
        return written


def _stem(item: BatchItem) -> str:
    source = item.source
    if source.startswith(("http://", "https://")):
        source = urlsplit(source).path.rstrip("/").rsplit("/", 1)[-1] or "url"
    elif source.startswith("<bytes"):
        source = f"item-{item.index}"
    stem = Path(source).stem or f"item-{item.index}"
    return re.sub(r"[^\w.-]+", "_", stem)[:100]


# ---------------------------------------------------------------- progress bars


class BatchProgress:
    """The overall bar and one bar per file in flight; does nothing when disabled."""

    def __init__(self, total: int, *, enabled: bool) -> None:
        self._tqdm: Any = None
        self._overall: Any = None
        self._ok = self._failed = 0
        if enabled:
            from tqdm.auto import tqdm

            self._tqdm = tqdm
            self._overall = tqdm(total=total, desc="Transcribing", unit="file", position=0)

    def file(self, source: str) -> FileProgress:
        return FileProgress(self._tqdm, source)

    def finished(self, ok: bool) -> None:
        if ok:
            self._ok += 1
        else:
            self._failed += 1
        if self._overall is not None:
            self._overall.set_postfix(ok=self._ok, failed=self._failed, refresh=False)
            self._overall.update(1)

    def close(self) -> None:
        if self._overall is not None:
            self._overall.close()


class FileProgress:
    def __init__(self, tqdm: Any, source: str) -> None:
        self._name = _short(source)
        self._bar: Any = None
        if tqdm is not None:
            self._bar = tqdm(
                total=100,
                desc=f"{self._name} [submitting]",
                unit="%",
                leave=False,
                bar_format="{desc}: {percentage:3.0f}%|{bar}|{postfix}",
            )

    def update(self, event: TaskEvent) -> None:
        bar = self._bar
        if bar is None:
            return
        stage = getattr(event, "stage", None) or event.status.value
        bar.set_description_str(f"{self._name} [{stage}]", refresh=False)
        eta = getattr(event, "eta_seconds", None)
        bar.set_postfix_str(f"eta {eta:.0f}s" if eta is not None else "", refresh=False)
        percentage = getattr(event, "percentage", None)
        if percentage is not None and percentage > bar.n:
            bar.update(percentage - bar.n)
        else:
            bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _short(source: str, width: int = 32) -> str:
    name = source.rstrip("/").rsplit("/", 1)[-1] or source
    return name if len(name) <= width else "…" + name[-(width - 1) :]
