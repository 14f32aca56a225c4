"""App arguments and the builder's checks, without starting Ray."""

from __future__ import annotations

from pathlib import Path

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


def test_production_config_pins_gpu_fractions() -> None:
    args = AppArgs.model_validate(_config_args("serve_config.yaml"))
    fractions = (args.asr, args.alignment, args.diarization)
    assert [c.resources.num_gpus for c in fractions] == [0.25, 0.25, 0.5]
    assert all(c.device == "cuda" for c in fractions)


def test_production_requires_keys_and_local_runs_auto() -> None:
    production = AppArgs.model_validate(_config_args("serve_config.yaml")).ingress
    assert production.auth == "required" and production.cors_origins == []
    assert production.limits.max_active_tasks and production.max_queued_tasks
    assert AppArgs.model_validate(_config_args("serve_config.local.yaml")).ingress.auth == "auto"


def test_local_config_asks_for_no_gpu() -> None:
    args = AppArgs.model_validate(_config_args("serve_config.local.yaml"))
    fractions = (args.asr, args.alignment, args.diarization)
    assert all(c.resources.num_gpus == 0 and c.device == "cpu" for c in fractions)


def test_gpu_request_without_gpus_fails_loudly() -> None:
    args = AppArgs.model_validate(_config_args("serve_config.yaml"))
    with pytest.raises(ConfigurationError, match="asks for GPUs"):
        _check_gpus(args)  # Ray not initialised here: no GPUs known
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
        {"asr": {"device": "cuda"}},  # cuda without a GPU reservation
        {"asr": {"resources": {"num_gpus": 0.25}}},  # GPU reserved but device cpu
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
