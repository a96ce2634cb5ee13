"""The attacks TUF exists for: each one refused by a real agent, reported, and the node keeps
serving its verified version. Each runs twice: with the fleet server serving the repository,
and with a mirror behind a real nginx caching proxy serving it (a CDN is not trusted either)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Metadata

from edgecloud.fleet.keys import load_signers
from edgecloud.fleet.repository import ModelRepository, repo_lock
from tests.fleet.conftest import Device, Rig, wait_for

pytestmark = pytest.mark.parametrize("rig_factory", ["server", "mirror"], indirect=True)


def _target_file(rig: Rig, version: str) -> Path:
    return next((rig.repo_path / "targets/models/tiny" / version).glob("*.gguf"))


def _latest(rig: Rig, role: str) -> Path:
    files = (rig.repo_path / "metadata").glob(f"*.{role}.json")
    return max(files, key=lambda p: int(p.name.split(".")[0]))


def _update_refused(rig: Rig, d: Device, reason: str, kept: str = "1.0.0") -> None:
    """One agent pass: the device keeps `kept` (model and node) and reports the refusal."""
    d.run_once()
    _still_old(d, kept)
    ev = wait_for(
        lambda: [e for e in rig.events(d.id, "refused") if reason in e["reason"]],
        what=f"refusal {reason}",
    )
    assert ev


def _installed(rig: Rig) -> Device:
    d = rig.device("dev-a")
    d.run_once()
    assert d.active_version() == "1.0.0"
    return d


def _still_old(d: Device, version: str = "1.0.0") -> None:
    assert d.active_version() == version
    assert d.node_model()["version"] == version


def test_tampered_target_bytes_are_refused(rig: Rig) -> None:
    d = _installed(rig)
    body = rig.publish("1.1.0", stable=True)
    f = _target_file(rig, "1.1.0")
    f.write_bytes(body[:-5] + b"EVIL!")
    _update_refused(rig, d, "target_hash_mismatch")


def test_a_swapped_target_is_refused(rig: Rig) -> None:
    d = _installed(rig)
    rig.publish("1.1.0", stable=True)
    # the mirror answers the new version's path with the old, genuine, signed model
    _target_file(rig, "1.1.0").write_bytes(_target_file(rig, "1.0.0").read_bytes())
    _update_refused(rig, d, "target_hash_mismatch")


def test_a_target_longer_than_signed_is_cut_off(rig: Rig) -> None:
    d = _installed(rig)
    body = rig.publish("1.1.0", stable=True)
    _target_file(rig, "1.1.0").write_bytes(body + b"\0" * (1 << 20))
    _update_refused(rig, d, "target_too_long")


def test_replayed_older_metadata_is_refused(rig: Rig) -> None:
    d = _installed(rig)
    old_ts = (rig.repo_path / "metadata/timestamp.json").read_bytes()
    rig.publish("1.1.0", stable=True)
    d.run_once()
    _still_old(d, "1.1.0")
    (rig.repo_path / "metadata/timestamp.json").write_bytes(old_ts)
    _update_refused(rig, d, "metadata_version_rollback", "1.1.0")


def test_frozen_expired_timestamp_is_refused(rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory(server_args=("--no-controller",))
    d = _installed(rig)
    rig.publish("1.1.0", stable=True)
    with repo_lock(rig.repo_path):
        repo = ModelRepository(rig.repo_path)
        repo.config.expiry_s["timestamp"] = -60  # what a frozen mirror serves after a while
        repo.do_timestamp(force=True)
    _update_refused(rig, d, "metadata_expired")


def test_mix_and_match_metadata_is_refused(rig: Rig) -> None:
    d = _installed(rig)
    before = _latest(rig, "targets").read_bytes()
    rig.publish("1.1.0", stable=True)
    _latest(rig, "targets").write_bytes(before)  # an old targets under the new snapshot
    _update_refused(rig, d, "metadata_version_rollback")


def _resign(path: Path, keep: int, extra: CryptoSigner | None = None) -> None:
    md = Metadata.from_file(str(path))
    sigs = dict(list(md.signatures.items())[:keep])
    md.signatures.clear()
    md.signatures.update(sigs)
    if extra is not None:
        md.sign(extra, append=True)
    md.to_file(str(path))


def test_signatures_below_threshold_are_refused(rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory(init={"key_counts": {"targets": 2}, "thresholds": {"targets": 2}})
    d = _installed(rig)
    rig.publish("1.1.0", stable=True)
    target = _latest(rig, "targets")
    assert len(json.loads(target.read_text())["signatures"]) == 2
    _resign(target, keep=1)
    _update_refused(rig, d, "metadata_bad_signatures")


def test_a_key_the_root_does_not_trust_is_refused(rig: Rig) -> None:
    d = _installed(rig)
    rig.publish("1.1.0", stable=True)
    _resign(_latest(rig, "targets"), keep=0, extra=CryptoSigner.generate_ed25519())
    _update_refused(rig, d, "metadata_bad_signatures")


def test_key_rotation_reaches_a_device_that_was_offline(rig: Rig) -> None:
    d = _installed(rig)
    retired = rig.repo_path / "keys"
    old_targets_keys = list(retired.glob("targets-*.pem"))
    with repo_lock(rig.repo_path):
        repo = ModelRepository(rig.repo_path)
        for role in ("root", "targets", "snapshot", "timestamp"):
            repo.rotate_key(role)
        repo.rotate_key("root")  # two root rotations while the device sleeps
    rig.publish("1.1.0", stable=True)
    d.run_once()
    _still_old(d, "1.1.0")
    # the retired targets key can no longer sign for this fleet
    old = retired / "retired" / old_targets_keys[0].name
    tmp = rig.tmp / "old-key"
    tmp.mkdir()
    shutil.copy(old, tmp / old.name)
    (signer,) = load_signers(tmp, env={}).values()
    rig.publish("1.2.0", stable=True)
    _resign(_latest(rig, "targets"), keep=0, extra=signer)
    _update_refused(rig, d, "metadata_bad_signatures", "1.1.0")
