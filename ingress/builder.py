"""``build_app``: validated application arguments in, the deployment graph out.

serve_config.yaml points ``import_path`` here and passes ``args``; the same code serves a
laptop (CPU, offline model folder) and a GPU cluster (fractional GPUs, hub models).

``args`` hold model and app settings only. Replicas, resources (``ray_actor_options``),
``max_ongoing_requests`` and autoscaling are Serve's own: the decorators carry small CPU
defaults and the config's ``deployments:`` entries override them.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from ray.serve import Application

from common.asr_models import served_multilingual
from common.config import AppArgs, AsrConfig
from common.errors import ConfigurationError

logger = logging.getLogger(__name__)


def _check_gpus(args: AppArgs) -> None:
    """Fail loudly, not hang: a deployment on ``device: cuda`` needs GPUs reserved for it
    (``ray_actor_options.num_gpus`` in the config's ``deployments:``), and a GPU request on a
    cluster without GPUs never schedules. Each replica checks its own reservation as it
    starts (``common.config.check_replica_device``)."""
    wanted = [
        name
        for name, cfg in (
            ("asr", args.asr),
            ("alignment", args.alignment),
            ("diarization", args.diarization),
        )
        if cfg.device == "cuda"
    ]
    if not wanted or args.allow_pending_gpus:
        return
    import ray

    gpus = ray.cluster_resources().get("GPU", 0.0) if ray.is_initialized() else 0.0  # type: ignore[no-untyped-call]
    if gpus <= 0:
        raise ConfigurationError(
            "This configuration asks for GPUs but the Ray cluster has none. Use a CPU "
            "configuration (serve_config.local.yaml, or device: cpu without num_gpus), or set "
            "allow_pending_gpus: true on an autoscaling cluster that will add GPU nodes.",
            f"device: cuda for {wanted}; cluster GPU resources: {gpus}",
        )


def default_language(
    asr: AsrConfig, model: str | None = None, models_dir: Path | None = None
) -> str | None:
    """The language ``model`` (unset = the default) always transcribes: ``asr.language``,
    or English for an English-only model (``*.en``, or a folder whose vocabulary says so)."""
    if asr.language:
        return asr.language
    return "en" if served_multilingual(asr, model, models_dir) is False else None


def build_app(args: AppArgs | dict[str, Any]) -> Application:
    """The app's graph from its ``args``: typed, or the plain dict Serve passes from a config
    file (validated here, the one place that does it)."""
    # @serve.deployment turns these classes into Deployment objects; mypy sees classes.
    from deployments import alignment, asr, diarization, progress, runner
    from ingress import app
    from ingress.catalog import AsrCatalog

    AsrDeployment: Any = asr.AsrDeployment
    AlignmentDeployment: Any = alignment.AlignmentDeployment
    DiarizationDeployment: Any = diarization.DiarizationDeployment
    TaskRunner: Any = runner.TaskRunner
    Ingress: Any = app.Ingress
    ProgressTracker: Any = progress.TrackerDeployment

    args = AppArgs.model_validate(args)
    models_dir = os.environ.get("WHISPERX_SERVE_MODELS_DIR") or args.models_dir
    models_path = Path(models_dir).expanduser().resolve() if models_dir else None
    if models_path is not None and not models_path.is_dir():
        raise ConfigurationError(
            f"The model directory {models_path} does not exist.", f"models_dir={models_path}"
        )
    _check_gpus(args)

    name = args.name
    asr = AsrDeployment.bind(args.asr, models_dir=models_path)
    alignment = AlignmentDeployment.bind(args.alignment, models_dir=models_path)
    diarization = DiarizationDeployment.bind(args.diarization, models_dir=models_path)
    tracker = ProgressTracker.bind(
        app_name=name,
        mirror_interval_s=args.runner.db_mirror_interval_seconds,
        retain_terminal_s=args.runner.progress_retain_seconds,
    )
    task_runner = TaskRunner.bind(
        asr,
        alignment,
        diarization,
        tracker=tracker,
        config=args.runner,
        default_language=default_language(args.asr, None, models_path),
        model_languages={
            name: default_language(args.asr, name, models_path) for name in args.asr.models
        },
        align_languages=args.alignment.candidate_languages(),
    )
    built: Application = Ingress.bind(
        task_runner,
        tracker=tracker,
        app_name=name,
        config=args.ingress,
        asr_catalog=AsrCatalog.from_config(args.asr, models_path),
    )
    return built
