"""The client's wire models against the server's: same fields, types the client can read.

The client package keeps its own copies (it installs without the server), so this test is
what keeps the two in step: a field gained, lost or renamed on either side fails it, and so
does a type the server may send that the client would refuse.
"""

from __future__ import annotations

from typing import Any, Literal

import pytest
import whisperx_serve_client.models as client
from pydantic import BaseModel, create_model

import common.schemas as server

PAIRS: list[tuple[type[BaseModel], type[BaseModel]]] = [
    (server.TaskError, client.ErrorInfo),
    (server.ErrorEvent, client.ErrorEvent),
    (server.ProgressEvent, client.ProgressEvent),
    (server.TaskSnapshot, client.TaskSnapshot),
    (server.TaskProgress, client.TaskProgress),
    (server.TaskPublic, client.TaskPublic),
    (server.TaskAccepted, client.TaskAccepted),
    (server.Timings, client.Timings),
    (server.Transcript, client.Transcript),
    (server.Segment, client.Segment),
    (server.Word, client.Word),
    (server.Char, client.Char),
    (server.SpeakerTurn, client.SpeakerTurn),
    (server.TranscriptWarning, client.TranscriptWarning),
]


def _kinds(schema: dict[str, Any], defs: dict[str, Any]) -> set[str]:
    """The JSON types a (sub)schema allows: string, number, integer, boolean, array,
    object, null, or ``any``."""
    if "$ref" in schema:
        return _kinds(defs[schema["$ref"].rsplit("/", 1)[-1]], defs)
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return set().union(*(_kinds(s, defs) for s in schema[key]))
    values = schema.get("enum", [schema["const"]] if "const" in schema else None)
    if values is not None:
        return {_json_type(v) for v in values}
    kind = schema.get("type")
    if kind is None:
        return {"any"}
    return set(kind) if isinstance(kind, list) else {kind}


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    return "string"


def _accepts(client_kinds: set[str], server_kinds: set[str]) -> bool:
    if "any" in client_kinds:
        return True
    widened = client_kinds | ({"integer"} if "number" in client_kinds else set())
    return server_kinds <= widened


def _fields(
    model: type[BaseModel], mode: Literal["validation", "serialization"]
) -> tuple[dict[str, Any], dict[str, Any]]:
    schema = model.model_json_schema(mode=mode)
    return schema.get("properties", {}), schema.get("$defs", {})


def mismatches(server_model: type[BaseModel], client_model: type[BaseModel]) -> list[str]:
    """What differs between what the server sends and what the client reads."""
    sent, sent_defs = _fields(server_model, "serialization")
    read, read_defs = _fields(client_model, "validation")
    problems = [f"server only: {name}" for name in sent.keys() - read.keys()]
    problems += [f"client only: {name}" for name in read.keys() - sent.keys()]
    for name in sent.keys() & read.keys():
        server_kinds = _kinds(sent[name], sent_defs)
        client_kinds = _kinds(read[name], read_defs)
        if not _accepts(client_kinds, server_kinds):
            problems.append(
                f"{name}: server sends {sorted(server_kinds)}, client reads {sorted(client_kinds)}"
            )
    return sorted(problems)


@pytest.mark.parametrize(
    ("server_model", "client_model"), PAIRS, ids=[s.__name__ for s, _ in PAIRS]
)
def test_client_model_matches_the_server_model(
    server_model: type[BaseModel], client_model: type[BaseModel]
) -> None:
    assert mismatches(server_model, client_model) == []


def test_the_comparison_sees_a_gained_a_renamed_and_a_retyped_field() -> None:
    gained = create_model("Gained", __base__=server.TaskError, retry_after=(int, 1))
    assert mismatches(gained, client.ErrorInfo) == ["server only: retry_after"]
    renamed = create_model(
        "Renamed", code=(str, ...), user_message=(str, ...), technical_detail=(str, "")
    )
    assert mismatches(renamed, client.ErrorInfo) == ["client only: error_code", "server only: code"]
    retyped = create_model("Retyped", __base__=server.Timings, total=(str | None, None))
    assert mismatches(retyped, client.Timings) == [
        "total: server sends ['null', 'string'], client reads ['null', 'number']"
    ]


def test_every_server_error_shape_reads_as_the_clients_error() -> None:
    """One TaskError on the server: the task's error, the snapshot's, the event's fields and
    an HTTP error body all read into the client's ``ErrorInfo`` alike."""
    error = server.TaskError(
        error_code="invalid_audio", user_message="Bad file.", technical_detail="av: 1"
    )
    event = server.ErrorEvent.of(error, task_id="t", seq=3)
    snapshot = server.TaskSnapshot(
        task_id="t",
        seq=3,
        status=server.TaskStatus.failed,
        stage=server.TaskProgressStage.transcribing,
        percentage=20.0,
        error=error,
    )
    expected = client.ErrorInfo.model_validate(error.model_dump(mode="json"))
    assert client.ErrorEvent.model_validate_json(event.model_dump_json()).error_code == (
        "invalid_audio"
    )
    parsed = client.parse_frame(snapshot.model_dump_json())
    assert isinstance(parsed, client.TaskSnapshot) and parsed.error == expected
    polled = client.TaskProgress.model_validate_json(
        server.TaskProgress.from_snapshot(snapshot).model_dump_json()
    )
    assert (polled.error_code, polled.error, polled.technical_detail) == (
        "invalid_audio",
        "Bad file.",
        "av: 1",
    )
    assert expected.code == "invalid_audio"  # the former attribute name still reads


def test_an_older_servers_code_spelling_still_reads() -> None:
    old = {"code": "processing_failed", "user_message": "Failed.", "technical_detail": ""}
    assert client.ErrorInfo.model_validate(old).error_code == "processing_failed"
