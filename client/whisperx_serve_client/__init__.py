"""Python client for whisperx-serve: transcripts with word timings and speakers, from
scripts and notebooks, with live progress. Needs neither Ray nor torch.

    from whisperx_serve_client import Client
    client = Client("http://127.0.0.1:8000")
    transcript = client.transcribe("meeting.flac", min_speakers=2)
"""

from whisperx_serve_client._sources import Source
from whisperx_serve_client.async_client import AsyncClient, AsyncTaskHandle
from whisperx_serve_client.batch import BatchItem, BatchResult
from whisperx_serve_client.client import Client, TaskHandle
from whisperx_serve_client.errors import (
    APIError,
    ClientError,
    SourceError,
    TaskCancelled,
    TaskError,
    TaskFailed,
    TaskNotFinished,
    TaskNotFound,
    TransportError,
)
from whisperx_serve_client.models import (
    Char,
    ErrorEvent,
    ErrorInfo,
    ProgressEvent,
    Segment,
    SpeakerTurn,
    TaskAccepted,
    TaskEvent,
    TaskProgress,
    TaskPublic,
    TaskSnapshot,
    TaskStatus,
    Timings,
    Transcript,
    TranscriptWarning,
    Word,
)
from whisperx_serve_client.options import OPTION_NAMES, TranscribeOptions

__version__ = "0.1.0"

__all__ = [
    "OPTION_NAMES",
    "APIError",
    "AsyncClient",
    "AsyncTaskHandle",
    "BatchItem",
    "BatchResult",
    "Char",
    "Client",
    "ClientError",
    "ErrorEvent",
    "ErrorInfo",
    "ProgressEvent",
    "Segment",
    "Source",
    "SourceError",
    "SpeakerTurn",
    "TaskAccepted",
    "TaskCancelled",
    "TaskError",
    "TaskEvent",
    "TaskFailed",
    "TaskHandle",
    "TaskNotFinished",
    "TaskNotFound",
    "TaskProgress",
    "TaskPublic",
    "TaskSnapshot",
    "TaskStatus",
    "Timings",
    "TranscribeOptions",
    "Transcript",
    "TranscriptWarning",
    "TransportError",
    "Word",
]
