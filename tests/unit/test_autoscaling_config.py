"""Deployment options: the shipped configs' ``deployments:`` entries are valid Serve config
(autoscaling that can actually scale), name every deployment of the graph, and reach the
deployments they name; the typed args carry none of them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError
from ray.serve.config import AutoscalingConfig
from ray.serve.schema import ServeDeploySchema

from common.config import AppArgs
from ingress.builder import build_app
from tests.serving import config_deployments, graph_deployments, with_deployment_options

REPO = Path(__file__).resolve().parents[2]
CONFIGS = ["serve_config.yaml", "serve_config.local.yaml"]
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


def _local_app(models_dir: Path) -> Any:
    args = _app("serve_config.local.yaml")["args"]
    args["models_dir"] = str(models_dir)
    return build_app(args)


@pytest.mark.parametrize("name", CONFIGS)
def test_shipped_configs_are_valid_serve_configs(name: str) -> None:
    ServeDeploySchema.model_validate(yaml.safe_load((REPO / name).read_text()))


@pytest.mark.parametrize("name", CONFIGS)
def test_config_options_cover_every_deployment_of_the_graph(name: str, models_dir: Path) -> None:
    graph = set(graph_deployments(_local_app(models_dir)))
    assert graph == MODEL_DEPLOYMENTS | {"Ingress", "TaskRunner", "ProgressTracker"}
    assert {e["name"] for e in config_deployments(name)} == graph


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


def test_the_graph_has_one_tracker_bound_once(models_dir: Path) -> None:
    """Ingress and TaskRunner get the same tracker deployment, one replica of it."""
    graph = graph_deployments(_local_app(models_dir))
    ingress, runner = graph["Ingress"], graph["TaskRunner"]
    shared = ingress.init_kwargs["tracker"]
    assert shared is runner.init_kwargs["tracker"]
    assert shared._bound_deployment.num_replicas == 1


def test_config_entries_reach_the_deployments(models_dir: Path) -> None:
    """The decorators' small CPU defaults hold without a config; the entries override them."""
    app = _local_app(models_dir)
    plain = graph_deployments(app)
    assert plain["AsrDeployment"]._deployment_config.autoscaling_config is None
    assert plain["AsrDeployment"].ray_actor_options["num_cpus"] == 0.5
    assert plain["ProgressTracker"].ray_actor_options["num_cpus"] == 0
    entries = config_deployments("serve_config.local.yaml")
    deployments = graph_deployments(with_deployment_options(app, entries))
    asr = deployments["AsrDeployment"]._deployment_config.autoscaling_config
    assert (asr.min_replicas, asr.max_replicas, asr.upscale_delay_s) == (1, 2, 5)
    assert deployments["AsrDeployment"].ray_actor_options["num_cpus"] == 0.25
    for unused_by_asr_only in ("AlignmentDeployment", "DiarizationDeployment"):
        scaling = deployments[unused_by_asr_only]._deployment_config.autoscaling_config
        assert (scaling.min_replicas, scaling.initial_replicas, scaling.max_replicas) == (0, 0, 1)
    with pytest.raises(AssertionError, match="name no deployment"):
        with_deployment_options(app, [{"name": "Asr", "num_replicas": 2}])


def test_args_carry_no_deployment_options() -> None:
    for key in ("resources", "autoscaling"):
        with pytest.raises(ValidationError):
            AppArgs.model_validate({"asr": {key: {}}})
