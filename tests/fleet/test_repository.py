"""The publishing side, in process: signed metadata that python-tuf's own client accepts."""

from __future__ import annotations

from pathlib import Path

import pytest
from tuf.api.metadata import Metadata, Root

from edgecloud.fleet.errors import KeyNotFound, ReleaseError
from edgecloud.fleet.repository import ModelRepository


def _repo(tmp_path: Path) -> tuple[ModelRepository, Path]:
    repo = ModelRepository.init(tmp_path / "repo", expiry_s={"timestamp": 3600})
    model = tmp_path / "m.gguf"
    model.write_bytes(b"model" * 500)
    return repo, model


def test_add_rollout_and_rollback(tmp_path: Path) -> None:
    repo, model = _repo(tmp_path)
    repo.add_model(model, "m", "1.0.0", stable=True)
    repo.add_model(model, "m", "1.1.0", notes="faster")
    with pytest.raises(ReleaseError, match="already published"):
        repo.add_model(model, "m", "1.1.0")
    rel = repo.start_rollout("m", "1.1.0", 5)
    assert (rel.rollout.stage, rel.rollout.percent) == ("staged", 5)
    again = ModelRepository(tmp_path / "repo").find("m", "1.1.0")
    assert again.notes == "faster" and again.sha256 == rel.sha256 and again.size == 2500
    assert repo.rollback("m").version == "1.1.0"
    assert repo.find("m", "1.1.0").rollout.stage == "aborted"
    assert repo.rollback("m").version == "1.0.0"  # then the stable one
    with pytest.raises(ReleaseError):
        repo.start_rollout("m", "1.1.0", 5)


def test_an_older_version_cannot_be_rolled_out_over_stable(tmp_path: Path) -> None:
    repo, model = _repo(tmp_path)
    repo.add_model(model, "m", "2.0.0", stable=True)
    repo.add_model(model, "m", "1.5.0")
    with pytest.raises(ReleaseError, match="not newer"):
        repo.start_rollout("m", "1.5.0", 5)


def test_root_rotation_is_signed_by_old_and_new_keys(tmp_path: Path) -> None:
    repo, _ = _repo(tmp_path)
    old = Metadata[Root].from_file(str(repo.root_file()))
    repo.rotate_key("root")
    new = Metadata[Root].from_file(str(repo.root_file()))
    assert new.signed.version == old.signed.version + 1
    old.signed.verify_delegate(Root.type, new.signed_bytes, new.signatures)
    new.signed.verify_delegate(Root.type, new.signed_bytes, new.signatures)


def test_signing_without_the_key_fails_with_a_clear_error(tmp_path: Path) -> None:
    repo, model = _repo(tmp_path)
    for p in (tmp_path / "repo" / "keys").glob("targets-*.pem"):
        p.unlink()
    bare = ModelRepository(tmp_path / "repo", env={})
    with pytest.raises(KeyNotFound, match="targets"):
        bare.add_model(model, "m", "1.0.0")


def test_keys_can_come_from_the_environment(tmp_path: Path) -> None:
    repo, model = _repo(tmp_path)
    keys = tmp_path / "repo" / "keys"
    env = {
        f"EDGECLOUD_TUF_KEY_{p.stem.upper().replace('-', '_')}": p.read_text()
        for p in keys.glob("*.pem")
    }
    other = tmp_path / "empty-keys"
    other.mkdir()
    ModelRepository(tmp_path / "repo", keys_dir=other, env=env).add_model(model, "m", "1.0.0")


def test_release_commands(tmp_path: Path) -> None:
    import subprocess

    from edgecloud.supervise import edgecloud_command

    def run(*args: str) -> str:
        p = subprocess.run(
            edgecloud_command("release", *args), capture_output=True, text=True, timeout=60
        )
        assert p.returncode == 0, p.stderr
        return p.stdout

    repo = str(tmp_path / "repo")
    model = tmp_path / "m.gguf"
    model.write_bytes(b"x" * 3000)
    assert "1.root.json" in run(
        "init", repo, "--root-keys", "2", "--root-threshold", "2", "--expires", "timestamp=6h"
    )
    run("add", repo, str(model), "--name", "m", "--version", "1.0.0", "--stable")
    run("add", repo, str(model), "--name", "m", "--version", "1.1.0", "--notes", "n")
    assert "staged at 5%" in run(
        "rollout", repo, "m", "1.1.0", "--percent", "5", "--max-p95-ms", "900"
    )
    assert "staged" in run("list", repo)
    assert "aborted" in run("rollback", repo, "m")
    assert "rotated" in run("rotate-key", repo, "root")
    bad = subprocess.run(
        edgecloud_command("release", "rollout", repo, "m", "9.9.9"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 1 and "not in the repository" in bad.stderr
