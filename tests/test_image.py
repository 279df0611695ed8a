"""The image: one constraints file for CI, the README set-up and the Dockerfile, matching what the
tests run with; the Dockerfile passes hadolint; and every pinned wheel resolves for the image's
Python and platform (`pip install --dry-run --only-binary=:all: --platform …`), which is what can
be proved here without a registry to pull the base image from."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import urllib.request
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
import constraints  # noqa: E402

IMAGE_PYTHON = "3.11"
# pip takes --platform literally: a wheel tagged manylinux_2_27 (the nvidia-* ones) needs that tag named
PLATFORMS = [f"manylinux_2_{i}_x86_64" for i in range(28, 16, -1)] + ["manylinux2014_x86_64", "linux_x86_64"]
PYPI = "https://pypi.org/simple"
CPU_TORCH = "https://download.pytorch.org/whl/cpu"


def pins() -> dict[str, str]:
    out = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            out[name] = version
    return out


def test_constraints_are_the_versions_this_environment_tests_with():
    assert (REPO / "constraints.txt").read_text() == constraints.render(constraints.closure()), (
        "constraints.txt drifted from the installed packages: python tools/constraints.py > constraints.txt"
    )
    reqs = [Requirement(r) for r in metadata.requires("batchrec")]
    names = {
        canonicalize_name(r.name)
        for r in reqs
        if r.marker is None or any(r.marker.evaluate({"extra": e}) for e in constraints.EXTRAS)
    }
    assert names <= set(pins()), names - set(pins())
    assert pins()["torch"] == "2.13.0"


def test_ci_the_readme_and_the_image_install_with_the_constraints():
    readme = (REPO / "README.md").read_text()
    for command in re.findall(r"^pip install (.+?) &&", readme, re.M):
        assert "-c constraints.txt" in command, command
    ci = (REPO / ".ci" / "run").read_text()
    assert ci.count("-c constraints.txt") >= 2
    dockerfile = (REPO / "Dockerfile").read_text()
    installs = re.findall(r"pip install (.+?)(?:\\\n|\n| &&)", dockerfile)
    assert installs and all("--constraint constraints.txt" in i for i in installs), installs


def test_the_dockerfile_passes_hadolint_and_keeps_tini_and_a_non_root_user():
    res = subprocess.run(["hadolint", str(REPO / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    text = (REPO / "Dockerfile").read_text()
    froms = re.findall(r"^FROM (\S+)", text, re.M)
    assert all(":" in f and not f.endswith(":latest") for f in froms), froms
    assert any(f.startswith(f"python:{IMAGE_PYTHON}.") and "slim" in f for f in froms), froms
    (user,) = re.findall(r"^USER (\S+)", text, re.M)
    assert not user.startswith(("root", "0"))
    assert re.search(r'^ENTRYPOINT \["/usr/bin/tini", "--"\]$', text, re.M), "tini is PID 1 for every command"


def _reachable(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=10):
            return True
    except OSError:
        return False


def dry_run(requirements: list[str], index: str, extra: list[str] = ()) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull  # this machine's pip config adds local wheels and caps
    cmd = [
        sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--only-binary=:all:",
        *[a for p in PLATFORMS for a in ("--platform", p)], "--python-version", IMAGE_PYTHON,
        "--implementation", "cp", "--target", os.devnull + ".d", "--index-url", index, *extra,
        "--constraint", str(REPO / "constraints.txt"), *requirements,
    ]  # fmt: skip
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def image_requirements() -> list[str]:
    """What the image installs besides torch: batchrec[s3]'s requirements (pinned by the constraints)."""
    out = []
    for line in metadata.requires("batchrec"):
        req = Requirement(line)
        if req.name != "torch" and (req.marker is None or req.marker.evaluate({"extra": "s3"})):
            out.append(f"{req.name}{req.specifier}")
    return out


@pytest.mark.slow
@pytest.mark.network
def test_every_pinned_wheel_of_the_gpu_image_resolves_for_its_python_and_platform():
    if not _reachable(PYPI + "/pip/"):
        pytest.skip(f"{PYPI} is not reachable from here")
    res = dry_run(["torch==2.13.0", *image_requirements()], PYPI)
    assert res.returncode == 0, res.stderr[-3000:]
    would = res.stdout.strip().splitlines()[-1]
    assert would.startswith("Would install")
    chosen = dict(p.rsplit("-", 1) for p in would.removeprefix("Would install ").split())
    assert chosen["torch"] == "2.13.0" and "nvidia-cudnn-cu13" in chosen, "PyPI's torch is the CUDA build"
    for name, version in chosen.items():
        pinned = pins().get(name.lower().replace("_", "-"))
        assert pinned in (None, version), f"{name} resolved to {version}, pinned {pinned}"


@pytest.mark.slow
@pytest.mark.network
def test_the_cpu_image_resolves_torch_from_the_cpu_index():
    if not _reachable(CPU_TORCH + "/torch/"):
        pytest.skip(f"{CPU_TORCH} (torch's CPU wheel index) is not reachable from here")
    res = dry_run(["torch==2.13.0", *image_requirements()], CPU_TORCH, ["--extra-index-url", PYPI])
    assert res.returncode == 0, res.stderr[-3000:]
    assert "torch-2.13.0+cpu" in res.stdout and "nvidia" not in res.stdout


def test_the_rayjob_asks_for_the_ray_the_image_ships():
    import yaml

    spec = yaml.safe_load((REPO / "k8s" / "workloads" / "rayjob-nightly.yaml").read_text())["spec"]
    assert spec["rayClusterSpec"]["rayVersion"] == pins()["ray"], "rayVersion must match constraints.txt"
