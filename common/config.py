"""Typed application arguments: what serve_config.yaml's ``args`` must look like.

Each model deployment gets its own config model, including the device it runs on. What
Serve owns stays Serve's: replicas, resources (``ray_actor_options``, e.g. a fractional
``num_gpus``), ``max_ongoing_requests`` and autoscaling go in the config file's
``deployments:`` entries, never here, so each has one source.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from common.errors import ConfigurationError

logger = logging.getLogger(__name__)

Device = Literal["cpu", "cuda"]


class _ModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    device: Device = "cpu"
    """``cuda`` needs GPUs reserved in the deployment's ``ray_actor_options`` (checked when
    the app is built and again as each replica starts)."""


class AsrConfig(_ModelConfig):
    model: str = "large-v3"
    """Hub name (``large-v3``) or a local CTranslate2 model folder; the default model."""
    models: dict[str, str] = {}
    """More models a request may pick by name (``model=``): name → hub name or folder."""
    max_loaded_models: int = Field(2, ge=1)
    """(model, compute type) pairs kept loaded per replica; least recently used unload."""
    compute_type: str = "default"
    """``float16`` on GPU, ``int8``/``float32`` on CPU; ``default`` picks by device."""
    batch_size: int = Field(8, ge=1, le=128)
    language: str | None = None
    """Fixed language for every request, or ``None`` to detect per file."""
    cpu_threads: int = Field(2, ge=1)
    download_root: Path | None = None
    local_files_only: bool = False
    vad_onset: float = 0.5
    vad_offset: float = 0.363
    vad_step_s: float | None = Field(1.67, gt=0, le=5)
    """How far whisperx's pyannote VAD slides its 5 s window per step: a third of it, so
    every sample goes through the model three times. ``None`` keeps whisperx's tenth
    (0.5 s, ten times), which on CPU took 1.5-1.75x the ASR time for no fewer errors
    (bench/vad_step.py, BENCHMARKS.md "VAD step")."""
    chunk_size: int = 30
    repetition_fallback: bool = True
    """Check each decoded window for a repetition loop (compression ratio, a phrase repeated
    to the window's end); decode a looping one again at higher temperatures, cut what still
    loops, and say so in the result (``Segment.repetition``, ``Transcript.warnings``)."""


class AlignConfig(_ModelConfig):
    models: dict[str, str] = {}
    """Language code → wav2vec2 CTC model (hub name, torchaudio bundle name or local folder)."""
    use_default_models: bool = True
    """Fall back to whisperx's default aligner per language (needs hub access or a cache)."""
    model_dir: Path | None = None
    """Cache directory for aligner downloads."""
    nltk_data: Path | None = None
    """Folder holding ``tokenizers/punkt_tab``; needed offline."""
    max_cached_models: int = Field(4, ge=1)
    cpu_threads: int = Field(2, ge=1)

    def candidate_languages(self) -> frozenset[str] | None:
        """Every language an aligner could serve with this configuration; ``None`` when
        whisperx's defaults may serve more. A language outside it is not asked about, so an
        alignment deployment scaled to zero is not woken to say no."""
        if self.use_default_models:
            return None
        return frozenset(language.lower() for language in self.models)


class DiarizationConfig(_ModelConfig):
    pipeline: str | None = "pyannote/speaker-diarization-community-1"
    """A pyannote pipeline (hub name or local folder with config.yaml). Used when set."""
    segmentation: Path | None = None
    """Offline parts: a pyannote segmentation checkpoint (folder or .bin)."""
    embedding: Path | None = None
    """Offline parts: the CAM++ speaker-embedding state_dict."""
    plda: Path | None = None
    """Offline parts: a VBx PLDA folder; used only when the embedding is 256-dimensional."""
    clustering_threshold: float = Field(0.45, gt=0, lt=2)
    """Offline parts: average-linkage cosine distance at which two speaker clusters stop
    merging. Lower finds more speakers (and splits voices sooner); see BENCHMARKS.md."""
    min_cluster_seconds: float = Field(3.0, ge=0)
    """Offline parts: a speaker cluster with less clean speech than this (seconds of audio)
    is merged into its nearest cluster, unless a speaker-count bound forbids it."""
    merge_distance: float = Field(0.3, ge=0, lt=2)
    """Offline parts: clusters whose centroids are closer than this cosine distance are
    merged (average linkage over short-window embeddings splits some voices)."""
    min_active_seconds: float = Field(2.0, ge=0)
    """Offline parts: clean speech a local speaker needs in one 10 s window for its embedding
    to shape the clusters (shorter ones are only assigned to a cluster)."""
    segmentation_step: float = Field(0.2, gt=0, le=1)
    """Offline parts: step of the 10 s segmentation window as a fraction of it (0.1 = 1 s).
    The main speed knob: embeddings and segmentation cost scale with 1 / step."""
    embedding_batch_size: int = Field(32, ge=1)
    """Offline parts: CAM++ items per forward pass (items of one length are batched)."""
    embedding_max_seconds: float | None = Field(None, gt=0.05)
    """Offline parts: embed at most this much of a local speaker's speech per window (the
    middle of it); None embeds all of it. Cuts embedding time on long turns."""
    embedding_stride: int = Field(3, ge=1, le=5)
    """Offline parts: embed the local speakers of every N-th segmentation window only (and
    the last); the others take the clusters of the embedded speakers their activity
    coincides with in the overlapping windows. Cuts embedding time by N while the turns keep
    the segmentation step's resolution. At most 5, so the embedded windows still cover every
    frame."""
    embedding_frozen: bool = True
    """Offline parts: on CPU, run CAM++ as a frozen TorchScript graph (batch norms folded
    into the convolutions, oneDNN kernels): the same embeddings, 1.3-2x faster per frame on
    fixed shapes (BENCHMARKS.md). False runs the eager network (on CUDA it always does)."""
    embedding_quantum: int = Field(50, ge=1)
    """Offline parts: a local speaker's active frames are shortened to a multiple of this
    many 10 ms frames (50: at most 0.49 s dropped), so items of nearly equal length share a
    batch without padding. Frozen CAM++ on CPU costs about 0.07 ms per frame in batches of
    4-8 items of 2-5 s, 0.10-0.14 ms one at a time; 10 gave ~1 item per batch and 1.2-1.3x
    the diarization time, 100 split a voice on one bench clip (BENCHMARKS.md). A local
    speaker with less clean speech than three quanta is embedded from all of its speech,
    overlap included."""
    min_duration_off: float = Field(0.0, ge=0)
    cpu_threads: int = Field(2, ge=1)

    @model_validator(mode="after")
    def _pipeline_or_parts(self) -> DiarizationConfig:
        if self.pipeline is None and (self.segmentation is None or self.embedding is None):
            raise ValueError(
                "diarization needs either `pipeline` or both `segmentation` and `embedding`"
            )
        return self


class RunnerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_concurrent_tasks: int = Field(2, ge=1)
    """Tasks one runner replica processes at once; the rest wait in the durable queue."""
    lease_seconds: float = Field(60.0, gt=1)
    """A claimed task whose runner stops renewing for this long is picked up again."""
    poll_interval_seconds: float = Field(2.0, gt=0)
    """Safety-net scan of the queue; new tasks wake the runner at once."""
    max_attempts: int = Field(2, ge=1)
    """Runs of one task before an interrupted task is failed instead of retried."""
    stage_retries: int = Field(2, ge=0, le=10)
    """Reruns of one model stage (ASR, alignment, diarization) whose replica died under it
    (Serve does not retry in-flight requests); input errors are never retried."""
    stage_retry_backoff_seconds: float = Field(1.0, ge=0)
    """Wait before the first rerun while Serve replaces the replica; doubles per rerun."""
    diarize_alongside_asr: bool = True
    """Diarize a task's audio while its ASR and alignment run (diarization needs the words
    only to label them), on the diarization deployment's own replica; off: after them."""
    db_mirror_interval_seconds: float = Field(1.0, ge=0)
    """Least time between two database writes of in-stage progress for one task."""
    decode_num_cpus: float = Field(1.0, gt=0)
    """CPUs of the Ray task that decodes a task's audio (on any node, not the runner's)."""
    progress_retain_seconds: float = Field(900.0, gt=0)
    """How long the tracker keeps an ended task's live state and event log in memory (the
    database has it after that)."""
    callback_max_attempts: int = Field(5, ge=1, le=20)
    """POSTs of a task's final state to its ``callback_url`` before giving up."""
    callback_backoff_seconds: float = Field(1.0, gt=0)
    """Wait before the second callback attempt; doubles per retry, plus up to 50% jitter."""
    callback_backoff_max_seconds: float = Field(30.0, gt=0)
    callback_attempt_timeout_seconds: float = Field(10.0, gt=0)
    """Connect, send and answer time of one callback attempt."""
    callback_total_seconds: float = Field(120.0, gt=0)
    """No callback attempt starts or runs past this long after the first."""


class CallerLimits(BaseModel):
    """What one API key may have in the queue; a key's own limits override these."""

    model_config = ConfigDict(extra="forbid")

    max_active_tasks: int | None = Field(None, ge=1)
    """Tasks of one key queued or running at once; ``None`` = no limit. Over it: 429."""
    max_submissions_per_minute: int | None = Field(None, ge=1)
    """Submissions of one key per minute (a bucket: a burst of this many, then one every
    60/M s); ``None`` = no limit. Over it: 429."""
    busy_retry_after_seconds: int = Field(5, ge=1, le=3600)
    """``Retry-After`` of a 429 for ``max_active_tasks`` (when a task ends is unknown)."""


class IngressConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    auth: Literal["required", "auto", "off"] = "auto"
    """API keys: ``required`` always; ``auto`` as soon as one key has been created (with
    ``whisperx-serve keys create``); ``off`` never (anyone who reaches the port can read,
    cancel and delete every task)."""
    public_docs: bool = False
    """With auth on, serve ``/docs`` and ``/openapi.json`` without a key (they hold the API's
    shape, no data). Off: only the health probes answer without a key."""
    cors_origins: list[str] = []
    """Browser origins allowed to call the API cross-origin (``https://app.example.org``);
    empty = no CORS headers at all (same-origin only)."""
    limits: CallerLimits = CallerLimits()
    max_queued_tasks: int | None = Field(10_000, ge=1)
    """Queued tasks beyond which new submissions get 503 (nothing accepted is dropped);
    ``None`` = no bound."""
    overload_retry_after_seconds: int = Field(10, ge=1, le=3600)

    max_upload_bytes: int = Field(1024**3, ge=1)
    ready_timeout_seconds: float = Field(3.0, gt=0)
    sync_timeout_seconds: float = Field(600.0, gt=0)
    """How long a synchronous request (the OpenAI-compatible routes) waits for its task."""
    max_download_bytes: int | None = Field(None, ge=1)
    """Largest file ``POST /speech-to-text-url`` downloads; unset = ``max_upload_bytes``."""
    download_connect_timeout_seconds: float = Field(10.0, gt=0)
    download_read_timeout_seconds: float = Field(30.0, gt=0)
    """Longest wait for the next bytes of a download."""
    download_timeout_seconds: float = Field(600.0, gt=0)
    """Deadline for a whole download, redirects included."""
    download_max_redirects: int = Field(5, ge=0, le=20)
    max_audio_seconds: float = Field(4 * 3600.0, gt=0)
    """Longest audio (as its container declares at upload) a task may have; longer: 422."""
    max_header_bytes: int = Field(32 * 1024, ge=1024)
    """All request headers together; more is answered 431."""
    body_idle_timeout_seconds: float = Field(30.0, gt=0)
    """Longest wait for the next bytes of a request body before answering 408."""
    body_timeout_seconds: float = Field(3600.0, gt=0)
    """Longest time a whole request body may take to arrive (408 after)."""
    finished_cache_bytes: int = Field(64 * 1024**2, ge=0)
    """Finished tasks' answers kept in each ingress replica's memory (``ingress.hot_reads``),
    so polls after the end need no database or tracker round trip; 0: off."""
    finished_cache_seconds: float = Field(5.0, ge=0)
    """How long one is kept: the longest another ingress replica may still serve a task
    deleted through this one (the replica that deletes forgets it at once); 0: off."""


class AppArgs(BaseModel):
    """The ``args`` of the whisperx-serve application in serve_config.yaml."""

    model_config = ConfigDict(extra="forbid")

    name: str = "whisperx"
    """Namespaces the app's Redis keys and channel, so two apps on one cluster never mix
    their events."""
    models_dir: Path | None = None
    """Base for relative model paths in this config (e.g. the offline bundle)."""
    asr: AsrConfig = AsrConfig()
    alignment: AlignConfig = AlignConfig()
    diarization: DiarizationConfig = DiarizationConfig()
    runner: RunnerConfig = RunnerConfig()
    ingress: IngressConfig = IngressConfig()
    allow_pending_gpus: bool = False
    """Let GPU deployments wait for GPU nodes (autoscaling clusters) instead of failing."""


def check_replica_device(device: Device, deployment: str) -> None:
    """Inside a Serve replica: ``device: cuda`` needs a GPU reserved for this replica.

    A GPU node shows CUDA to a replica that reserved none, which would then share a GPU
    nobody accounted for; fail loudly instead, naming the config entry to add. Outside a
    replica (tests, scripts) this does nothing.
    """
    import ray
    from ray import serve
    from ray.serve.exceptions import RayServeException

    try:
        serve.get_replica_context()
    except RayServeException:
        return
    gpus = ray.get_gpu_ids()
    if device == "cuda" and not gpus:
        raise ConfigurationError(
            f"The {deployment} deployment is configured for a GPU (device: cuda) but its "
            "replica has no GPU reserved. Reserve one in the config file: deployments: - "
            f"name: {deployment}, ray_actor_options: {{num_gpus: 0.25}} (a fraction shares a "
            "GPU), or set device: cpu.",
            f"device=cuda, ray.get_gpu_ids()={gpus}",
        )
    if device == "cpu" and gpus:
        logger.warning(
            "%s runs on device: cpu but reserves GPUs %s; they stay unused", deployment, gpus
        )
