"""The container args the manifests render are flags the real commands accept."""

from __future__ import annotations

import os
import subprocess

import pytest

from edgecloud.deploy.render import kubernetes_objects
from edgecloud.deploy.values import parse_values
from edgecloud.supervise import edgecloud_command

VALUES = ("node: {admin_token_secret: node-admin}\n"
          "fleet: {keys_secret: fleet-keys, operator_token_secret: fleet-op,"
          " tls_secret: fleet-tls}")


def _args(component: str) -> list[str]:
    values = parse_values(VALUES)
    for objs in kubernetes_objects(values).values():
        for o in objs:
            if o["kind"] == "Deployment" and o["metadata"]["name"].endswith(f"-{component}"):
                (c,) = o["spec"]["template"]["spec"]["containers"]
                return list(c["args"])
    raise AssertionError(component)


@pytest.mark.parametrize("component,words", [
    ("node", ["serve"]), ("gateway", ["gateway"]), ("fleet", ["fleet", "serve"]),
])
def test_rendered_flags_exist_in_the_command(component: str, words: list[str]) -> None:
    args = _args(component)
    assert args[: len(words)] == words
    env = {**os.environ, "COLUMNS": "250", "TERM": "dumb", "NO_COLOR": "1"}
    proc = subprocess.run(edgecloud_command(*words, "--help"), capture_output=True, text=True,
                          timeout=60, env=env)
    assert proc.returncode == 0, f"`edgecloud {' '.join(words)} --help` failed: {proc.stderr}"
    flags = [a for a in args if a.startswith("--")]
    missing = [f for f in flags if f not in proc.stdout]
    assert not missing, f"{missing} not in `edgecloud {' '.join(words)} --help`"
