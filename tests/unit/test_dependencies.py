"""Every third-party module the code imports is declared in a pyproject.toml, so
``make install`` (``pip install -e ".[test,dev]" -e ./client``) gives a checkout
everything it runs, and nothing works here only because something else pulled it in.

- the server packages import only from ``[project].dependencies``;
- the client package only from its own ``dependencies`` (and its optional extras);
- tests/, bench/ and scripts/ from those plus the ``test``, ``dev`` and ``bench`` extras.
"""

from __future__ import annotations

import ast
import sys
import tomllib
from collections.abc import Iterable, Iterator
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
SERVER_PACKAGES = ("common", "deployments", "ingress", "storage")
CLIENT_PACKAGE = "whisperx_serve_client"
NOT_INSTALLED_HERE = {
    "senko": "bench/diarization_speed.py runs it in its own virtualenv (see pyproject's bench)",
}


def _declared(pyproject: Path, *, extras: bool) -> set[str]:
    """The distributions a pyproject.toml names: its dependencies, with every extra or not."""
    project = tomllib.loads(pyproject.read_text())["project"]
    specs = list(project["dependencies"])
    if extras:
        specs += [s for group in project.get("optional-dependencies", {}).values() for s in group]
    return {canonicalize_name(Requirement(spec).name) for spec in specs}


SERVER_DEPS = _declared(REPO / "pyproject.toml", extras=False)
ALL_SERVER_DEPS = _declared(REPO / "pyproject.toml", extras=True)
CLIENT_DEPS = _declared(REPO / "client" / "pyproject.toml", extras=True)


def _imports(path: Path) -> Iterator[tuple[str, int]]:
    """Top-level names of the absolute imports in one file, with their line."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name.partition(".")[0], node.lineno
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module.partition(".")[0], node.lineno


def _local(path: Path) -> set[str]:
    """Modules that resolve inside the repository: the packages and sibling scripts."""
    siblings = {p.stem for p in path.parent.glob("*.py")}
    return {*SERVER_PACKAGES, CLIENT_PACKAGE, "tests", "bench", *siblings}


def _undeclared(files: Iterable[Path], allowed: set[str]) -> list[str]:
    owners = packages_distributions()
    found = []
    for path in files:
        local = _local(path)
        for name, line in _imports(path):
            if name in sys.stdlib_module_names or name in local or name in NOT_INSTALLED_HERE:
                continue
            # A module of a package not installed here (a bench extra): its own name.
            dists = {canonicalize_name(d) for d in owners.get(name, [name])}
            if not dists & allowed:
                where = f"{path.relative_to(REPO)}:{line}"
                found.append(f"{where} imports {name} (from {', '.join(sorted(dists))})")
    return found


def _files(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (REPO / folder).rglob("*.py"))


def test_the_server_imports_only_its_dependencies() -> None:
    assert _undeclared(_files(*SERVER_PACKAGES), SERVER_DEPS) == []


def test_the_client_imports_only_its_dependencies() -> None:
    assert _undeclared(_files(f"client/{CLIENT_PACKAGE}"), CLIENT_DEPS) == []


@pytest.mark.parametrize("folder", ["tests", "bench", "scripts"])
def test_tests_and_tools_import_only_declared_packages(folder: str) -> None:
    assert _undeclared(_files(folder), ALL_SERVER_DEPS | CLIENT_DEPS) == []


def test_make_install_installs_the_test_extras() -> None:
    makefile = (REPO / "Makefile").read_text()
    assert '-e ".[test,dev]" -e ./client' in makefile
    assert "test: install" in makefile
