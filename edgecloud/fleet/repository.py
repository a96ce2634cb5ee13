"""The publishing side: a TUF repository of model versions on disk (python-tuf metadata API).

Layout of a repository folder:
  metadata/   N.root.json, timestamp.json, N.snapshot.json, N.targets.json (served)
  targets/    models/NAME/VERSION/<sha256>.NAME-VERSION.gguf               (served)
  keys/       private keys, PEM, mode 0600                               (never served)
  config.json expiry per role
Every change takes a file lock, so `edgecloud release` and the fleet server's controller can
edit the same repository safely.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from copy import deepcopy
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pydantic import BaseModel, Field
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import (
    Metadata,
    MetaFile,
    Role,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.repository import Repository

from edgecloud.fleet.errors import KeyNotFound, ReleaseError
from edgecloud.fleet.keys import generate_key, load_signers, write_key
from edgecloud.fleet.rollout import (
    ModelRelease,
    RolloutPlan,
    RolloutState,
    Stage,
    Step,
    parse_version,
    stable_release,
    staged_release,
    target_path,
)

ROLES = (Root.type, Targets.type, Snapshot.type, Timestamp.type)
DEFAULT_EXPIRY_S = {
    Root.type: 365 * 86400.0,
    Targets.type: 90 * 86400.0,
    Snapshot.type: 7 * 86400.0,
    Timestamp.type: 86400.0,
}


class RepoConfig(BaseModel):
    """Per-repository settings kept in config.json."""

    expiry_s: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_EXPIRY_S))


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@contextmanager
def repo_lock(path: Path) -> Iterator[None]:
    """Hold the repository's edit lock (a flock on REPO/.lock)."""
    with open(path / ".lock", "a+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class ModelRepository(Repository):
    """A TUF repository of model versions, edited with python-tuf's Repository workflow."""

    def __init__(
        self,
        path: str | Path,
        keys_dir: str | Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.path = Path(path)
        self.metadata_dir = self.path / "metadata"
        self.targets_dir = self.path / "targets"
        self.keys_dir = Path(keys_dir) if keys_dir else self.path / "keys"
        if not self.metadata_dir.is_dir():
            raise ReleaseError(f"{self.path} is not a release repository; run `release init`")
        config_file = self.path / "config.json"
        self.config = (
            RepoConfig.model_validate_json(config_file.read_bytes())
            if config_file.exists()
            else RepoConfig()
        )
        self.signers: dict[str, CryptoSigner] = load_signers(self.keys_dir, env)
        self._cache: dict[str, Metadata] = {}

    # -- storage (the two methods python-tuf's Repository asks for) --------------------------

    def _latest_file(self, role: str) -> Path | None:
        if role == Timestamp.type:
            p = self.metadata_dir / "timestamp.json"
            return p if p.exists() else None
        best: tuple[int, Path] | None = None
        for p in self.metadata_dir.glob(f"*.{role}.json"):
            head = p.name.split(".", 1)[0]
            if head.isdigit() and (best is None or int(head) > best[0]):
                best = (int(head), p)
        return best[1] if best else None

    def open(self, role: str) -> Metadata:
        if role not in self._cache:
            path = self._latest_file(role)
            if path is not None:
                self._cache[role] = Metadata.from_file(str(path))
            else:
                signed = {
                    Root.type: Root,
                    Targets.type: Targets,
                    Snapshot.type: Snapshot,
                    Timestamp.type: Timestamp,
                }[role]()
                signed.version = 0  # close() makes it 1
                return Metadata(signed)
        return deepcopy(self._cache[role])

    def close(self, role: str, md: Metadata) -> None:
        md.signed.version += 1
        md.signed.expires = datetime.now(UTC).replace(microsecond=0) + timedelta(
            seconds=self.config.expiry_s.get(role, DEFAULT_EXPIRY_S[role])
        )
        self._sign(role, md)
        self._write(role, md)

    def _sign(self, role: str, md: Metadata) -> None:
        md.signatures.clear()
        if role == Root.type:
            assert isinstance(md.signed, Root)
            roots = [md.signed]
            if Root.type in self._cache:  # a new root is signed by the old root keys too
                old = self._cache[Root.type].signed
                assert isinstance(old, Root)
                roots.append(old)
            groups = [r.get_delegated_role(Root.type) for r in roots]
        else:
            groups = [self.root().get_delegated_role(role)]
        keyids: list[str] = []
        for group in groups:
            have = [k for k in group.keyids if k in self.signers]
            if len(have) < group.threshold:
                raise KeyNotFound(
                    f"signing {role} needs {group.threshold} of its keys, {len(have)} found "
                    f"in {self.keys_dir} or env EDGECLOUD_TUF_KEY_*"
                )
            keyids.extend(k for k in have if k not in keyids)
        for keyid in keyids:
            md.sign(self.signers[keyid], append=True)

    def _write(self, role: str, md: Metadata) -> None:
        data = md.to_bytes()
        if role == Timestamp.type:
            _atomic_write(self.metadata_dir / "timestamp.json", data)
        else:
            _atomic_write(self.metadata_dir / f"{md.signed.version}.{role}.json", data)
        self._cache[role] = Metadata.from_bytes(data)

    @property
    def targets_infos(self) -> dict[str, MetaFile]:
        return {"targets.json": MetaFile(self.targets().version)}

    @property
    def snapshot_info(self) -> MetaFile:
        return MetaFile(self.snapshot().version)

    def publish(self) -> None:
        """New snapshot and timestamp for the current targets."""
        self.do_snapshot()
        self.do_timestamp()

    # -- creating a repository -----------------------------------------------------------------

    @classmethod
    def init(
        cls,
        path: str | Path,
        *,
        keys_dir: str | Path | None = None,
        key_counts: Mapping[str, int] | None = None,
        thresholds: Mapping[str, int] | None = None,
        expiry_s: Mapping[str, float] | None = None,
    ) -> ModelRepository:
        """Create an empty repository with fresh keys for root, targets, snapshot, timestamp."""
        path = Path(path)
        if (path / "metadata").exists() and any((path / "metadata").iterdir()):
            raise ReleaseError(f"{path} already holds a repository")
        (path / "metadata").mkdir(parents=True, exist_ok=True)
        (path / "targets").mkdir(exist_ok=True)
        config = RepoConfig()
        config.expiry_s.update(expiry_s or {})
        _atomic_write(path / "config.json", config.model_dump_json(indent=2).encode())
        kdir = Path(keys_dir) if keys_dir else path / "keys"
        root = Root(consistent_snapshot=True)
        for role in ROLES:
            count = (key_counts or {}).get(role, 1)
            threshold = (thresholds or {}).get(role, 1)
            if not 1 <= threshold <= count:
                raise ReleaseError(f"{role}: threshold {threshold} needs 1..{count} keys")
            root.roles[role] = Role([], threshold)
            for _ in range(count):
                signer = generate_key()
                write_key(signer, kdir, role)
                root.add_key(signer.public_key, role)
        repo = cls(path, kdir)
        with repo_lock(path):
            md = Metadata(root)
            md.signed.version = 0
            repo.close(Root.type, md)
            with repo.edit_targets():
                pass
            repo.publish()
        return repo

    # -- reading -------------------------------------------------------------------------------

    def releases(self) -> list[ModelRelease]:
        """Every model release in the current targets metadata."""
        out = []
        for tf in self.targets().targets.values():
            release = ModelRelease.from_custom(tf.custom)
            if release is not None:
                out.append(release)
        return out

    def find(self, model: str, version: str) -> ModelRelease:
        for r in self.releases():
            if r.model == model and r.version == version:
                return r
        raise ReleaseError(f"{model} {version} is not in the repository; `release add` it first")

    # -- changing ------------------------------------------------------------------------------

    def _set_release(self, release: ModelRelease) -> None:
        path = target_path(release.model, release.version)
        with self.edit_targets() as targets:
            old = targets.targets[path]
            targets.targets[path] = TargetFile(
                old.length, old.hashes, path, {"custom": release.to_custom()}
            )
        self.publish()

    def add_model(
        self,
        file: str | Path,
        model: str,
        version: str,
        *,
        notes: str = "",
        min_agent_version: str = "0.0.0",
        stable: bool = False,
        link: bool = False,
    ) -> ModelRelease:
        """Copy (or hard-link) a model file into the repository and sign it as a target."""
        parse_version(version)
        if any(r.model == model and r.version == version for r in self.releases()):
            raise ReleaseError(f"{model} {version} is already published; use a new version")
        path = target_path(model, version)
        tf = TargetFile.from_file(path, str(file), ["sha256"])
        sha = tf.hashes["sha256"]
        dest = self.targets_dir / f"models/{model}/{version}/{sha}.{model}-{version}.gguf"
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".tmp")
        tmp.unlink(missing_ok=True)
        try:
            if not link:
                raise OSError("copy requested")
            os.link(file, tmp)
        except OSError:  # another filesystem, or a copy was asked for
            shutil.copyfile(file, tmp)
        os.replace(tmp, dest)
        release = ModelRelease(
            model=model,
            version=version,
            size=tf.length,
            sha256=sha,
            min_agent_version=min_agent_version,
            notes=notes,
            published_at=time.time(),
            rollout=RolloutState(stage="stable", percent=100.0) if stable else RolloutState(),
        )
        tf.unrecognized_fields["custom"] = release.to_custom()
        with self.edit_targets() as targets:
            targets.targets[path] = tf
        self.publish()
        return release

    def start_rollout(
        self, model: str, version: str, percent: float, plan: RolloutPlan | None = None
    ) -> ModelRelease:
        """Stage a version for `percent` of the fleet (the controller takes it further)."""
        release = self.find(model, version)
        if release.rollout.stage in ("aborted", "stable"):
            raise ReleaseError(f"{model} {version} is {release.rollout.stage}; publish a new one")
        other = staged_release(self.releases(), model)
        if other is not None and other.version != version:
            raise ReleaseError(
                f"{model} {other.version} is being rolled out; `release rollback` it first"
            )
        stable = stable_release(self.releases(), model)
        if stable is not None and parse_version(stable.version) >= parse_version(version):
            raise ReleaseError(f"{version} is not newer than the stable {stable.version}")
        plan = plan or RolloutPlan()
        stage: Stage = "stable" if percent >= 100 and not plan.auto else "staged"
        release.rollout = RolloutState(
            stage=stage, percent=percent, plan=plan, stage_started_at=time.time()
        )
        self._set_release(release)
        return release

    def apply_step(self, model: str, version: str, step: Step) -> ModelRelease:
        """Apply a controller step (advance, complete, abort) to a staged release."""
        release = self.find(model, version)
        state = release.rollout
        if step.action == "advance":
            state.percent, state.stage_started_at = step.percent, time.time()
        elif step.action == "complete":
            state.stage, state.percent = "stable", 100.0
        elif step.action == "abort":
            state.stage, state.percent = "aborted", 0.0
        else:
            return release
        state.reason = step.reason
        self._set_release(release)
        return release

    def rollback(self, model: str, reason: str = "rolled back by the operator") -> ModelRelease:
        """Abort the staged release of `model`, or else its newest stable one."""
        releases = self.releases()
        target = staged_release(releases, model) or stable_release(releases, model)
        if target is None:
            raise ReleaseError(f"{model} has no staged or stable release to roll back")
        return self.apply_step(model, target.version, Step("abort", 0.0, reason))

    def rotate_key(self, role: str) -> str:
        """Replace every key of `role` with a new one; returns the new key id.

        The new root is signed by the old and the new root keys, so devices that were offline
        walk the chain of root versions and trust the new key.
        """
        if role not in ROLES:
            raise ReleaseError(f"unknown role {role!r}; one of {', '.join(ROLES)}")
        signer = generate_key()
        old_ids: list[str] = []
        with self.edit_root() as root:
            old_ids = list(root.get_delegated_role(role).keyids)
            root.add_key(signer.public_key, role)
            for keyid in old_ids:
                root.revoke_key(keyid, role)
            root.get_delegated_role(role).threshold = 1
            # the old root keys still sign this root version (see _sign)
            self.signers[signer.public_key.keyid] = signer
        write_key(signer, self.keys_dir, role)
        retired = self.keys_dir / "retired"
        for keyid in old_ids:
            self.signers.pop(keyid, None)
            for p in self.keys_dir.glob(f"{role}-{keyid[:12]}.pem"):
                retired.mkdir(exist_ok=True)
                os.replace(p, retired / p.name)
        if role == Targets.type:
            with self.edit_targets():
                pass
        if role in (Targets.type, Snapshot.type):
            self.do_snapshot(force=True)
        self.do_timestamp(force=True)
        return signer.public_key.keyid

    def refresh_timestamp(self, fraction_left: float = 0.5) -> bool:
        """Re-sign the timestamp when less than `fraction_left` of its lifetime remains."""
        ts = self.timestamp()
        life = self.config.expiry_s.get(Timestamp.type, DEFAULT_EXPIRY_S[Timestamp.type])
        left = (ts.expires - datetime.now(UTC)).total_seconds()
        if left > life * fraction_left:
            return False
        self.do_timestamp(force=True)
        return True

    def root_file(self) -> Path:
        """The newest root metadata (what a new device is provisioned with)."""
        path = self._latest_file(Root.type)
        assert path is not None
        return path
