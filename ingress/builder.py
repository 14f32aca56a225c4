"""``build_app``: validated application arguments in, the deployment graph out.

serve_config.yaml points ``import_path`` here and passes ``args``; the same code serves a
laptop (CPU, offline model folder) and a GPU cluster (fractional GPUs, hub models).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from ray.serve import Application

from common.asr_models import served_multilingual
from common.config import AlignConfig, AppArgs, AsrConfig, DiarizationConfig, Resources
from common.errors import ConfigurationError

logger = logging.getLogger(__name__)


def _actor_options(resources: Resources) -> dict[str, Any]:
    return {"num_cpus": resources.num_cpus, "num_gpus": resources.num_gpus}


def _model_options(cfg: AsrConfig | AlignConfig | DiarizationConfig) -> dict[str, Any]:
    """``.options(...)`` of a model deployment: its resources, and autoscaling if set."""
    options: dict[str, Any] = {"ray_actor_options": _actor_options(cfg.resources)}
    if cfg.autoscaling is not None:
        options["autoscaling_config"] = cfg.autoscaling.model_dump(exclude_none=True)
    return options


def _check_gpus(args: AppArgs) -> None:
    """Fail loudly, not hang: a GPU request on a cluster without GPUs never schedules."""
    wanted = {
        name: cfg.resources.num_gpus
        for name, cfg in (
            ("asr", args.asr),
            ("alignment", args.alignment),
            ("diarization", args.diarization),
        )
        if cfg.resources.num_gpus > 0
    }
    if not wanted or args.allow_pending_gpus:
        return
    import ray

    gpus = ray.cluster_resources().get("GPU", 0.0) if ray.is_initialized() else 0.0  # type: ignore[no-untyped-call]
    if gpus <= 0:
        raise ConfigurationError(
            "This configuration asks for GPUs but the Ray cluster has none. Use a CPU "
            "configuration (serve_config.local.yaml, or device: cpu with num_gpus: 0), or set "
            "allow_pending_gpus: true on an autoscaling cluster that will add GPU nodes.",
            f"requested GPUs {wanted}; cluster GPU resources: {gpus}",
        )


def default_language(
    asr: AsrConfig, model: str | None = None, models_dir: Path | None = None
) -> str | None:
    """The language ``model`` (unset = the default) always transcribes: ``asr.language``,
    or English for an English-only model (``*.en``, or a folder whose vocabulary says so)."""
    if asr.language:
        return asr.language
    return "en" if served_multilingual(asr, model, models_dir) is False else None


def build_app(raw_args: dict[str, Any]) -> Application:
    # @serve.deployment turns these classes into Deployment objects; mypy sees classes.
    from deployments import alignment, asr, diarization, runner
    from ingress import app
    from ingress.catalog import AsrCatalog

    AsrDeployment: Any = asr.AsrDeployment
    AlignmentDeployment: Any = alignment.AlignmentDeployment
    DiarizationDeployment: Any = diarization.DiarizationDeployment
    TaskRunner: Any = runner.TaskRunner
    Ingress: Any = app.Ingress

    args = AppArgs.model_validate(raw_args)
    models_dir = os.environ.get("WHISPERX_SERVE_MODELS_DIR") or args.models_dir
    models_path = Path(models_dir).expanduser().resolve() if models_dir else None
    if models_path is not None and not models_path.is_dir():
        raise ConfigurationError(
            f"The model directory {models_path} does not exist.", f"models_dir={models_path}"
        )
    _check_gpus(args)

    name = args.name
    asr = AsrDeployment.options(**_model_options(args.asr)).bind(args.asr, models_dir=models_path)
    alignment = AlignmentDeployment.options(**_model_options(args.alignment)).bind(
        args.alignment, models_dir=models_path
    )
    diarization = DiarizationDeployment.options(**_model_options(args.diarization)).bind(
        args.diarization, models_dir=models_path
    )
    task_runner = TaskRunner.options(ray_actor_options={"num_cpus": 0.1}).bind(
        asr,
        alignment,
        diarization,
        app_name=name,
        config=args.runner,
        default_language=default_language(args.asr, None, models_path),
        model_languages={
            name: default_language(args.asr, name, models_path) for name in args.asr.models
        },
    )
    built: Application = Ingress.bind(
        task_runner,
        app_name=name,
        config=args.ingress,
        mirror_interval_s=args.runner.db_mirror_interval_seconds,  # whoever creates the tracker
        asr_catalog=AsrCatalog.from_config(args.asr, models_path),
    )
    return built
