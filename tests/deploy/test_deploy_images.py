"""Container images: built when a container engine answers, else skipped with the reason."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = sorted((ROOT / "deploy" / "docker").glob("*.Dockerfile"))


def _engine_problem() -> str | None:
    docker = shutil.which("docker")
    if docker is None:
        return "no container engine (docker) installed"
    proc = subprocess.run([docker, "info"], capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        return "docker cannot reach a daemon: " + (proc.stderr.strip().splitlines() or ["?"])[-1]
    return None


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.stem)
def test_final_stage_runs_as_a_numeric_non_root_user(dockerfile: Path) -> None:
    text = dockerfile.read_text()
    final = text.split("\nFROM ")[-1]
    users = re.findall(r"^USER\s+(\d+)(?::\d+)?\s*$", final, re.M)
    assert users and int(users[-1]) != 0
    assert re.search(r"^ENTRYPOINT \[\"edgecloud\"\]", final, re.M)
    ignore = dockerfile.with_name(dockerfile.name + ".dockerignore").read_text()
    allowed = {ln[1:].rstrip("/") for ln in ignore.splitlines() if ln.startswith("!")}
    for src in re.findall(r"^COPY (?!--from)(\S+)", text, re.M):
        assert (ROOT / src).exists(), src
        parts = Path(src.rstrip("/")).parts  # the file, or a folder above it, is let through
        assert any("/".join(parts[:i]) in allowed for i in range(1, len(parts) + 1)), src


@pytest.mark.slow
@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.stem)
def test_image_builds(dockerfile: Path) -> None:
    problem = _engine_problem()
    if problem:
        pytest.skip(problem)
    args = ["docker", "build", "-f", str(dockerfile), "-t", f"edgecloud/{dockerfile.stem}:test"]
    if dockerfile.stem == "node":
        args += ["--build-arg", "EMBED_MODEL=0"]
    proc = subprocess.run([*args, str(ROOT)], capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    tag = f"edgecloud/{dockerfile.stem}:test"
    user = subprocess.run(
        ["docker", "image", "inspect", "-f", "{{.Config.User}}", tag],
        capture_output=True, text=True, timeout=60,
    ).stdout.strip()
    assert user and not user.startswith("0")
