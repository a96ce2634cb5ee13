"""The compiled request path (edgecloud/compiled.py): used while it matches the sources, never
after one of them changed."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgecloud import compiled

CHECK = ("import edgecloud.gateway.forward as f, edgecloud.gateway.app as a;"
         "print(f.__file__, a.__file__)")


def _imported_from(root: Path) -> list[str]:
    """Where a fresh interpreter, with `root` first on its path, loads two compiled modules."""
    out = subprocess.run([sys.executable, "-c", CHECK], cwd=root, env={"PYTHONPATH": str(root)},
                         capture_output=True, text=True, timeout=60, check=True).stdout
    return out.split()


def test_the_build_is_used_exactly_when_it_matches_the_sources() -> None:
    assert compiled.in_use() == (bool(compiled.built_extensions()) and compiled.fresh())


def test_a_changed_source_runs_as_python_until_rebuilt(tmp_path: Path) -> None:
    if not compiled.built_extensions():
        pytest.skip("no compiled build here (`make native` makes one)")
    shutil.copytree(compiled.PACKAGE, tmp_path / "edgecloud",
                    ignore=shutil.ignore_patterns("__pycache__"))
    copy = tmp_path / "edgecloud"
    assert all(p.endswith(".so") for p in _imported_from(tmp_path)), "the build is not used"

    # One source edited: the whole group runs from source (its modules call each other
    # natively, so a fresh module beside a stale one is not safe either).
    policy = copy / "gateway" / "policy.py"
    policy.write_text(policy.read_text() + "\n# edited\n")
    assert all(p.endswith(".py") for p in _imported_from(tmp_path))

    # A build cut short leaves no record: not used either.
    policy.write_text(policy.read_text().removesuffix("\n# edited\n"))
    assert all(p.endswith(".so") for p in _imported_from(tmp_path))
    record = (copy / "compiled.json").read_text()
    (copy / "compiled.json").unlink()
    assert all(p.endswith(".py") for p in _imported_from(tmp_path))

    # Nor a build with a piece missing (or built for another Python or CPU).
    (copy / "compiled.json").write_text(record)
    for group in copy.glob("compiled__mypyc.*.so"):
        group.unlink()
    assert all(p.endswith(".py") for p in _imported_from(tmp_path))
