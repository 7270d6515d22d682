"""The package as a user gets it: ``python -m build`` and ``twine check`` pass, and the built wheel, installed into a
fresh virtual environment outside the source tree, runs ``redraft --version``, ``redraft config`` and a stub-model
``redraft run`` from its own files.

The wheel is built once per test session. The fresh venv reaches the project's already-installed dependencies
through a ``.pth`` line (installing them all from the registry would take minutes) and gets the wheel itself with
``--no-deps``; every check then asserts that ``redraft`` was imported from the fresh venv, never from the source tree.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from redraft import __version__
from tests.servers import server_env

ROOT = Path(__file__).resolve().parents[1]
NOT_SOURCES = shutil.ignore_patterns(
    ".venv",
    ".git",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    ".hypothesis",
    "*_cache",
    "*.sqlite*",
    ".env",
    ".langgraph_api",
)


def sh(*args: str | Path, cwd: Path, env: dict[str, str] | None = None, timeout: float = 300) -> str:
    proc = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert proc.returncode == 0, f"{args} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="session")
def source(tmp_path_factory) -> Path:
    """A copy of the work tree (symlinks kept), so the build's own folders never land in it."""
    src = tmp_path_factory.mktemp("src") / "redraft"
    shutil.copytree(ROOT, src, symlinks=True, ignore=NOT_SOURCES)
    return src


@pytest.fixture(scope="session")
def dist(source, tmp_path_factory) -> Path:
    """sdist and wheel, built by ``python -m build`` (the wheel from the sdist)."""
    src = source
    out = tmp_path_factory.mktemp("dist")
    sh(sys.executable, "-m", "build", "--outdir", out, src, cwd=src)
    return out


@pytest.fixture(scope="session")
def installed(dist, tmp_path_factory) -> Path:
    """A fresh venv, outside the source tree, holding the wheel; its dependencies come from this interpreter's
    site-packages through a .pth line. Returns the venv's bin folder."""
    venv = tmp_path_factory.mktemp("venv")
    sh(sys.executable, "-m", "venv", "--without-pip", venv, cwd=venv)
    python = venv / "bin" / "python"
    (wheel,) = dist.glob("*.whl")
    sh(sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", "--no-index", wheel, cwd=venv)
    site = Path(sh(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=venv).strip())
    here = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "_redraft_test_dependencies.pth").write_text("".join(f"{p}\n" for p in sorted(here)))
    return venv / "bin"


def outside_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    return {**env, "COLUMNS": "200", **extra}


def test_build_and_twine_check(dist, source):
    files = sorted(p.name for p in dist.iterdir())
    assert files == [f"redraft-{__version__}-py3-none-any.whl", f"redraft-{__version__}.tar.gz"]
    sh(sys.executable, "-m", "twine", "check", "--strict", *dist.iterdir(), cwd=dist)

    (wheel,) = dist.glob("*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        metadata = zf.read(f"redraft-{__version__}.dist-info/METADATA").decode()
    # every module of the package folders ships, a new one included, with no list to update (redraft/graph etc.
    # are symlinks to graph/, nodes/, server/)
    for folder in ("graph", "nodes", "server"):
        assert (source / "redraft" / folder).resolve() == (source / folder).resolve()
    modules = {
        f"redraft/{p.relative_to(source).as_posix()}"
        for folder in ("graph", "nodes", "server")
        for p in (source / folder).rglob("*.py")
    } | {p.relative_to(source).as_posix() for p in (source / "redraft").rglob("*.py")}
    assert "redraft/server/cli/__init__.py" in modules and modules <= names, sorted(modules - names)
    for package in ("redraft", "redraft/graph", "redraft/nodes", "redraft/server"):
        assert f"{package}/py.typed" in names, package
    assert f"redraft-{__version__}.dist-info/licenses/LICENSE" in names
    assert not any(n.startswith(("tests/", "bench/", "graph/", "nodes/", "server/")) for n in names)
    assert "License-Expression: MIT" in metadata and "Classifier: Typing :: Typed" in metadata
    assert "Project-URL: Repository, " in metadata


def test_wheel_runs_outside_the_source_tree(installed, stub, tmp_path):
    where = json.loads(
        sh(
            installed / "python",
            "-c",
            "import json, redraft, redraft.graph.runner, redraft.server.cli;"
            "print(json.dumps([redraft.__file__, redraft.graph.runner.__file__, redraft.server.cli.__file__]))",
            cwd=tmp_path,
            env=outside_env(),
        )
    )
    venv = installed.parent.resolve()
    for module_file in where:  # the installed wheel's code, not the source tree's
        assert Path(module_file).resolve().is_relative_to(venv), module_file
        assert not Path(module_file).resolve().is_relative_to(ROOT), module_file

    redraft = installed / "redraft"
    assert sh(redraft, "--version", cwd=tmp_path, env=outside_env()).strip() == f"redraft {__version__}"

    env = outside_env(**server_env(str(tmp_path / "wheel.sqlite"), stub.base_url))
    env.pop("PYTHONPATH", None)
    config = json.loads(sh(redraft, "config", "--json", cwd=tmp_path, env=env))
    assert config["model"] == "stub-model" and config["database_url"].endswith("wheel.sqlite")

    result = json.loads(sh(redraft, "run", "Explain write-ahead logs.", "--json", cwd=tmp_path, env=env))
    assert result["phase"] == "done" and result["stop_reason"] == "converged"
    assert result["final_text"] and result["session_id"]
