"""Autoscaling settings: the shipped configs are valid Serve autoscaling configs that can
actually scale, and the typed ``autoscaling`` args reach the model deployments."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError
from ray.serve.config import AutoscalingConfig

from common.config import AppArgs, Autoscaling
from ingress.builder import build_app

REPO = Path(__file__).resolve().parents[2]
MODEL_DEPLOYMENTS = {"AsrDeployment", "AlignmentDeployment", "DiarizationDeployment"}


def _app(name: str) -> dict[str, Any]:
    app: dict[str, Any] = yaml.safe_load((REPO / name).read_text())["applications"][0]
    return app


def _scaling(name: str) -> dict[str, AutoscalingConfig]:
    return {
        entry["name"]: AutoscalingConfig(**entry["autoscaling_config"])
        for entry in _app(name).get("deployments", [])
        if "autoscaling_config" in entry
    }


def test_production_config_autoscales_every_model_deployment() -> None:
    scaling = _scaling("serve_config.yaml")
    assert set(scaling) == MODEL_DEPLOYMENTS
    assert all(s.min_replicas >= 1 and s.max_replicas > s.min_replicas for s in scaling.values())
    # The runner bounds the requests that reach the models: it must let enough through
    # for ASR to reach its maximum (ongoing requests = replicas x target).
    runner = AppArgs.model_validate(_app("serve_config.yaml")["args"]).runner
    asr = scaling["AsrDeployment"]
    assert asr.target_ongoing_requests is not None
    assert runner.max_concurrent_tasks >= asr.max_replicas * asr.target_ongoing_requests


def test_local_config_scales_asr_within_a_small_box() -> None:
    scaling = _scaling("serve_config.local.yaml")
    asr = scaling["AsrDeployment"]
    assert asr.min_replicas == 1 and 1 < asr.max_replicas <= 2
    runner = AppArgs.model_validate(_app("serve_config.local.yaml")["args"]).runner
    assert asr.target_ongoing_requests is not None
    assert runner.max_concurrent_tasks > asr.target_ongoing_requests  # can exceed the target


def _bound(app: Any) -> dict[str, Any]:
    """Deployment name → bound deployment, walking Ingress → TaskRunner → models."""
    ingress = app._bound_deployment
    runner = ingress.init_args[0]._bound_deployment
    found = {d.name: d for d in (ingress, runner)}
    found.update({a._bound_deployment.name: a._bound_deployment for a in runner.init_args[:3]})
    return found


def test_typed_autoscaling_args_reach_the_deployment(models_dir: Path) -> None:
    args = _app("serve_config.local.yaml")["args"]
    args["models_dir"] = str(models_dir)
    args["asr"]["autoscaling"] = {"min_replicas": 1, "max_replicas": 3, "upscale_delay_s": 2}
    deployments = _bound(build_app(args))
    asr = deployments["AsrDeployment"]._deployment_config.autoscaling_config
    assert (asr.min_replicas, asr.max_replicas, asr.upscale_delay_s) == (1, 3, 2)
    assert asr.target_ongoing_requests == 1
    assert deployments["AsrDeployment"].ray_actor_options["num_cpus"] == 0.25  # kept
    assert deployments["DiarizationDeployment"]._deployment_config.autoscaling_config is None


def test_autoscaling_bounds_are_checked() -> None:
    with pytest.raises(ValidationError, match="max_replicas"):
        Autoscaling(min_replicas=3, max_replicas=2)
    with pytest.raises(ValidationError):
        Autoscaling.model_validate({"max_replica": 2})  # a typo is an error, not ignored
