"""The gateway's glibc malloc tuning: applied by default, left alone when the operator set it."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

CODE = "from edgecloud.gateway.server import tune_malloc; print(tune_malloc())"


def _run(env: dict[str, str]) -> str:
    out = subprocess.run([sys.executable, "-c", CODE], env={**os.environ, **env},
                         capture_output=True, text=True, timeout=60, check=True)
    return out.stdout.strip()


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt tuning is glibc only")
def test_malloc_tuning_applies_unless_the_environment_sets_it() -> None:
    assert _run({}) == "True"
    assert _run({"MALLOC_TRIM_THRESHOLD_": "1048576"}) == "False"
