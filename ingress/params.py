"""Task options as query parameters, shared by every submitting route.

The names and meanings follow whisperx and whisperX-FastAPI, so users of that service can
switch without renaming anything. Unset options use the deployment's configured default.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import Depends, Query
from pydantic import ValidationError

from common.errors import validation_error_from
from common.netguard.policy import check_url
from common.schemas import AlignOptions, AsrOptions, ComputeType, InterpolateMethod, TaskParams


async def asr_options(
    model: Annotated[
        str | None,
        Query(max_length=200, description="Whisper model; one the ASR deployment serves."),
    ] = None,
    language: Annotated[
        str | None,
        Query(
            min_length=2,
            max_length=8,
            pattern=r"^[a-zA-Z-]+$",
            description="Language code (`en`, `de`, …); unset = detect.",
        ),
    ] = None,
    task: Annotated[
        Literal["transcribe", "translate"],
        Query(description="`transcribe`, or `translate` to English."),
    ] = "transcribe",
    batch_size: Annotated[int | None, Query(ge=1, le=128, description="ASR batch size.")] = None,
    compute_type: Annotated[
        ComputeType | None, Query(description="CTranslate2 compute type; unset = configured.")
    ] = None,
    beam_size: Annotated[int | None, Query(ge=1, le=20, description="Beam size.")] = None,
    best_of: Annotated[
        int | None, Query(ge=1, le=20, description="Candidates when sampling.")
    ] = None,
    patience: Annotated[float | None, Query(gt=0, le=10, description="Beam patience.")] = None,
    length_penalty: Annotated[
        float | None, Query(ge=0, le=10, description="Length penalty.")
    ] = None,
    temperatures: Annotated[
        list[float] | None,
        Query(description="Fallback temperatures (repeat the parameter), each 0–1."),
    ] = None,
    compression_ratio_threshold: Annotated[
        float | None, Query(gt=0, le=100, description="Fallback when gzip ratio is above.")
    ] = None,
    log_prob_threshold: Annotated[
        float | None, Query(ge=-100, le=0, description="Fallback when avg log prob is below.")
    ] = None,
    no_speech_threshold: Annotated[
        float | None, Query(ge=0, le=1, description="Silence when no-speech prob is above.")
    ] = None,
    condition_on_previous_text: Annotated[
        bool | None, Query(description="Prompt each window with the previous text.")
    ] = None,
    initial_prompt: Annotated[
        str | None, Query(max_length=2000, description="Prompt for the first window.")
    ] = None,
    hotwords: Annotated[
        str | None, Query(max_length=2000, description="Hotwords to bias decoding towards.")
    ] = None,
    suppress_numerals: Annotated[
        bool | None, Query(description="Spell numbers out instead of writing digits.")
    ] = None,
    vad_onset: Annotated[
        float | None, Query(gt=0, lt=1, description="VAD onset threshold.")
    ] = None,
    vad_offset: Annotated[
        float | None, Query(gt=0, lt=1, description="VAD offset threshold.")
    ] = None,
    chunk_size: Annotated[
        int | None, Query(ge=1, le=30, description="VAD chunk size in seconds.")
    ] = None,
) -> AsrOptions:
    try:
        return AsrOptions(
            model=model,
            language=language,
            task=task,
            batch_size=batch_size,
            compute_type=compute_type,
            beam_size=beam_size,
            best_of=best_of,
            patience=patience,
            length_penalty=length_penalty,
            temperatures=temperatures,
            compression_ratio_threshold=compression_ratio_threshold,
            log_prob_threshold=log_prob_threshold,
            no_speech_threshold=no_speech_threshold,
            condition_on_previous_text=condition_on_previous_text,
            initial_prompt=initial_prompt,
            hotwords=hotwords,
            suppress_numerals=suppress_numerals,
            vad_onset=vad_onset,
            vad_offset=vad_offset,
            chunk_size=chunk_size,
        )
    except ValidationError as exc:
        raise validation_error_from(exc) from None


async def align_options(
    align_model: Annotated[
        str | None,
        Query(max_length=200, description="wav2vec2 aligner; one the alignment deployment serves."),
    ] = None,
    interpolate_method: Annotated[
        InterpolateMethod, Query(description="How words without a timing get one.")
    ] = "nearest",
    return_char_alignments: Annotated[
        bool, Query(description="Also return per-character timings.")
    ] = False,
) -> AlignOptions:
    return AlignOptions(
        align_model=align_model,
        interpolate_method=interpolate_method,
        return_char_alignments=return_char_alignments,
    )


class SpeakerOptions:
    def __init__(
        self,
        num_speakers: Annotated[
            int | None, Query(ge=1, le=50, description="Exact number of speakers.")
        ] = None,
        min_speakers: Annotated[
            int | None, Query(ge=1, le=50, description="Least number of speakers.")
        ] = None,
        max_speakers: Annotated[
            int | None, Query(ge=1, le=50, description="Most number of speakers.")
        ] = None,
    ) -> None:
        self.num_speakers, self.min_speakers, self.max_speakers = (
            num_speakers,
            min_speakers,
            max_speakers,
        )


CallbackUrl = Annotated[
    str | None,
    Query(
        max_length=2048,
        description="http(s) URL that receives the final task as JSON (POST) when it ends.",
    ),
]


def build_params(**fields: object) -> TaskParams:
    """``TaskParams`` or a 422 ``invalid_request`` naming what is wrong."""
    if isinstance(callback_url := fields.get("callback_url"), str):
        check_url(callback_url)  # bad scheme, credentials, metadata host: 422 now, not later
    try:
        return TaskParams.model_validate(fields)
    except ValidationError as exc:
        raise validation_error_from(exc) from None


async def speech_params(
    asr: Annotated[AsrOptions, Depends(asr_options)],
    alignment: Annotated[AlignOptions, Depends(align_options)],
    speakers: Annotated[SpeakerOptions, Depends()],
    align: Annotated[bool, Query(description="Produce word-level timestamps.")] = True,
    diarize: Annotated[bool, Query(description="Label speakers.")] = True,
    callback_url: CallbackUrl = None,
) -> TaskParams:
    return build_params(
        asr=asr,
        alignment=alignment,
        align=align,
        diarize=diarize,
        num_speakers=speakers.num_speakers,
        min_speakers=speakers.min_speakers,
        max_speakers=speakers.max_speakers,
        callback_url=callback_url,
    )


SpeechParams = Annotated[TaskParams, Depends(speech_params)]
"""Every option of a full speech-to-text task, as query parameters."""
