"""One real local Ray running the deployed app with the real bundle models, for the tiers
that need the whole service (integration, browser).

``bundle_args`` are the app's ``args`` on the offline bundle (CPU, Whisper tiny.en, the
offline diarization parts); ``local_service`` starts Ray and Serve with them, waits for
``/health/ready`` and shuts everything down afterwards, also when the start fails.
Deployment options (replicas, resources, autoscaling) are not args: pass a config file's
``deployments:`` entries, which ``with_deployment_options`` applies as Serve does.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.ports import free_port
from tests.waiting import wait_until

OFFLINE_ENV = {
    "PYANNOTE_METRICS_ENABLED": "0",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}


@dataclass
class Service:
    base_url: str
    ws_url: str
    database_url: str
    data_dir: Path
    app_args: dict[str, object]


def bundle_args(name: str, models_dir: Path, *, aligner: Path | None = None) -> dict[str, Any]:
    """App args on the offline bundle; ``aligner`` (a wav2vec2 folder) aligns English, else
    word times come from Whisper, as with ``make run``."""
    return {
        "name": name,
        "models_dir": str(models_dir),
        "asr": {
            "model": "asr/faster-whisper-tiny.en",
            "compute_type": "int8",
            "batch_size": 4,
            "local_files_only": True,
        },
        "alignment": {
            "models": {"en": str(aligner)} if aligner is not None else {},
            "use_default_models": False,
            "nltk_data": "nltk_data",
        },
        "diarization": {
            "pipeline": None,
            "segmentation": "diarization/segmentation-3.0",
            "embedding": "diarization/campplus-cn-en-common/campplus_cn_en_common.pt",
        },
        "runner": {"max_concurrent_tasks": 2, "lease_seconds": 8, "poll_interval_seconds": 1},
    }


def graph_deployments(app: Any) -> dict[str, Any]:
    """Deployment name → its bound ``Deployment``, for every deployment in ``app``'s graph."""
    from ray.serve import Application

    found: dict[str, Any] = {}

    def walk(value: Any) -> None:
        if isinstance(value, Application):
            deployment = value._bound_deployment
            found[deployment.name] = deployment
            for arg in (*deployment.init_args, *deployment.init_kwargs.values()):
                walk(arg)

    walk(app)
    return found


def with_deployment_options(app: Any, deployments: list[dict[str, Any]]) -> Any:
    """``app`` with a config file's ``deployments:`` entries applied to the deployments they
    name, as Serve applies them to an app built from ``import_path`` (``serve.run`` takes an
    already built app, so tests apply them here). An entry naming no deployment of the graph
    is an error, as in Serve."""
    from ray.serve import Application

    options = {e["name"]: {k: v for k, v in e.items() if k != "name"} for e in deployments}
    unknown = set(options) - set(graph_deployments(app))
    assert not unknown, f"deployments: entries name no deployment of the app: {unknown}"
    rebound: dict[int, Any] = {}  # one deployment bound in two places stays one

    def rebind(value: Any) -> Any:
        if not isinstance(value, Application):
            return value
        if id(value) not in rebound:
            d = value._bound_deployment
            args = tuple(rebind(a) for a in d.init_args)
            kwargs = {k: rebind(v) for k, v in d.init_kwargs.items()}
            rebound[id(value)] = d.options(**options.get(d.name, {})).bind(*args, **kwargs)
        return rebound[id(value)]

    return rebind(app)


def config_deployments(config: str) -> list[dict[str, Any]]:
    """The ``deployments:`` entries of a shipped config file (``serve_config.local.yaml``)."""
    import yaml

    from tests.conftest import REPO

    doc = yaml.safe_load((REPO / config).read_text())
    entries: list[dict[str, Any]] = doc["applications"][0].get("deployments", [])
    return entries


@contextmanager
def local_service(
    args: dict[str, Any],
    *,
    deployments: list[dict[str, Any]] | None = None,
    data_dir: Path,
    database_url: str,
    env: dict[str, str] | None = None,
    logging_config: dict[str, Any] | None = None,
) -> Iterator[Service]:
    import ray
    from ray import serve

    from ingress.builder import build_app

    worker_env = {
        "WHISPERX_SERVE_DATA_DIR": str(data_dir),
        "WHISPERX_SERVE_DATABASE_URL": database_url,
        **OFFLINE_ENV,
        **(env or {}),
    }
    # Workers get the settings through runtime_env; this process's environment stays
    # untouched so later tests (unit tier) never see the service's database.
    ray.init(num_cpus=4, include_dashboard=False, runtime_env={"env_vars": worker_env})
    try:  # a failed start must not leave a half-started Ray to the tests after it
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        app = build_app(args)
        serve.run(
            with_deployment_options(app, deployments) if deployments else app,
            name=str(args["name"]),
            route_prefix="/",
            logging_config=logging_config,
        )
        base = f"http://127.0.0.1:{port}"
        wait_until(
            lambda: httpx.get(f"{base}/health/ready", timeout=5).status_code == 200,
            timeout=300,
            what="/health/ready",
        )
        yield Service(base, f"ws://127.0.0.1:{port}", database_url, data_dir, args)
    finally:
        serve.shutdown()
        ray.shutdown()


def run_cli(service: Service, *args: str) -> str:
    """The real ``whisperx-serve`` command (``python -m ingress.cli``) in a subprocess,
    against the running service's database and data dir; returns its stdout."""
    import subprocess
    import sys

    from tests.conftest import REPO

    env = {
        **os.environ,
        "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'client'}",
        "WHISPERX_SERVE_DATABASE_URL": service.database_url,
        "WHISPERX_SERVE_DATA_DIR": str(service.data_dir),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "ingress.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout
