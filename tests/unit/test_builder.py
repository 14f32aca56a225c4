"""App arguments and the builder's checks, without starting Ray."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from common.config import AppArgs, AsrConfig
from common.errors import ConfigurationError
from ingress.builder import _check_gpus, build_app, default_language

REPO = Path(__file__).resolve().parents[2]


def _config_args(name: str) -> dict[str, object]:
    doc = yaml.safe_load((REPO / name).read_text())
    args: dict[str, object] = doc["applications"][0]["args"]
    return args


@pytest.mark.parametrize("name", ["serve_config.yaml", "serve_config.local.yaml"])
def test_shipped_configs_validate(name: str) -> None:
    AppArgs.model_validate(_config_args(name))


def _deployment_options(name: str) -> dict[str, dict[str, Any]]:
    doc = yaml.safe_load((REPO / name).read_text())
    return {e["name"]: e for e in doc["applications"][0]["deployments"]}


def test_production_config_pins_gpu_fractions() -> None:
    """GPU fractions live in the config's ``deployments:`` (Serve's), the device in args."""
    args = AppArgs.model_validate(_config_args("serve_config.yaml"))
    assert all(c.device == "cuda" for c in (args.asr, args.alignment, args.diarization))
    options = _deployment_options("serve_config.yaml")
    gpus = [
        options[name]["ray_actor_options"]["num_gpus"]
        for name in ("AsrDeployment", "AlignmentDeployment", "DiarizationDeployment")
    ]
    assert gpus == [0.25, 0.25, 0.5]


def test_production_requires_keys_and_local_runs_auto() -> None:
    production = AppArgs.model_validate(_config_args("serve_config.yaml")).ingress
    assert production.auth == "required" and production.cors_origins == []
    assert production.limits.max_active_tasks and production.max_queued_tasks
    assert AppArgs.model_validate(_config_args("serve_config.local.yaml")).ingress.auth == "auto"


def test_local_config_asks_for_no_gpu_and_fits_two_cores() -> None:
    args = AppArgs.model_validate(_config_args("serve_config.local.yaml"))
    assert all(c.device == "cpu" for c in (args.asr, args.alignment, args.diarization))
    options = _deployment_options("serve_config.local.yaml").values()
    assert not any(e["ray_actor_options"].get("num_gpus") for e in options)
    assert sum(e["ray_actor_options"]["num_cpus"] for e in options) <= 1.5


def test_gpu_request_without_gpus_fails_loudly() -> None:
    args = AppArgs.model_validate(_config_args("serve_config.yaml"))
    with pytest.raises(ConfigurationError, match="asks for GPUs") as raised:
        _check_gpus(args)  # Ray not initialised here: no GPUs known
    assert "['asr', 'alignment', 'diarization']" in raised.value.technical_detail
    _check_gpus(args.model_copy(update={"allow_pending_gpus": True}))


def test_build_app_rejects_missing_model_dir(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="does not exist"):
        build_app({"models_dir": str(tmp_path / "nope"), **_local_cpu()})


def _local_cpu() -> dict[str, object]:
    args = _config_args("serve_config.local.yaml")
    args.pop("models_dir")
    return args


@pytest.mark.parametrize(
    "bad",
    [
        # Serve's options are not args: they belong in the config's deployments:
        {"asr": {"resources": {"num_gpus": 0.25}}},
        {"alignment": {"autoscaling": {"max_replicas": 2}}},
        {"diarization": {"pipeline": None}},  # neither a pipeline nor parts
        {"unknown_key": 1},
    ],
)
def test_inconsistent_args_are_rejected(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        AppArgs.model_validate(bad)


def test_english_only_models_imply_english() -> None:
    assert default_language(AsrConfig(model="asr/faster-whisper-tiny.en")) == "en"
    assert default_language(AsrConfig(model="large-v3")) is None
    assert default_language(AsrConfig(model="large-v3", language="de")) == "de"


def test_default_language_per_served_model(tmp_path: Path) -> None:
    """A multilingual model served next to an English-only default detects its language."""
    import json

    english, multi = tmp_path / "tiny.en-folder", tmp_path / "base-folder"
    for folder, size in ((english, 51864), (multi, 51865)):
        folder.mkdir()
        (folder / "vocabulary.json").write_text(json.dumps(["t"] * size))
    config = AsrConfig(model=str(english), models={"base": str(multi), "hub": "large-v3"})
    assert default_language(config) == "en"  # the folder's vocabulary, not its name
    assert default_language(config, "base") is None
    assert default_language(config, "hub") is None
    assert default_language(config.model_copy(update={"language": "de"}), "base") == "de"


def test_a_cuda_replica_without_a_reserved_gpu_refuses_to_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``device: cuda`` with no ``num_gpus`` in the replica's options: a clear error naming
    the config entry, not a model silently sharing an unaccounted GPU."""
    import ray
    from ray import serve

    from common.config import check_replica_device

    check_replica_device("cuda", "AsrDeployment")  # outside a replica: nothing to check
    monkeypatch.setattr(serve, "get_replica_context", lambda: object())
    monkeypatch.setattr(ray, "get_gpu_ids", lambda: [])
    with pytest.raises(ConfigurationError, match="name: AsrDeployment, ray_actor_options"):
        check_replica_device("cuda", "AsrDeployment")
    check_replica_device("cpu", "AsrDeployment")
    monkeypatch.setattr(ray, "get_gpu_ids", lambda: [0])
    check_replica_device("cuda", "AsrDeployment")
