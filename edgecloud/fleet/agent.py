"""The edge agent: pull signed metadata, choose, download, verify, stage, swap, check, report.

Trust comes from python-tuf's ngclient (`Updater.refresh` walks and verifies root, timestamp,
snapshot and targets; `TargetFile.verify_length_and_hashes` checks the model bytes). Every
refusal is logged with a reason and reported to the fleet server.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from tuf.api import exceptions as tuf_exc
from tuf.api.metadata import Metadata, TargetFile, Targets
from tuf.ngclient import Updater

from edgecloud import __version__
from edgecloud.fleet.download import download_resumable
from edgecloud.fleet.errors import ActivationFailed, NodeUnreachable, UpdateRefused
from edgecloud.fleet.events import log_event
from edgecloud.fleet.node_client import DEFAULT_CANARIES, CanaryPrompt, CanaryResult, NodeClient
from edgecloud.fleet.rollout import ModelRelease, choose_release, target_path
from edgecloud.fleet.slots import AgentState, Pending, SlotInfo, SlotStore
from edgecloud.fleet.state import DeviceEvent, DeviceMetrics, DeviceReport

AGENT_VERSION = __version__


@dataclass
class AgentConfig:
    server: str
    models_dir: Path
    node: str
    model: str
    root: Path | None = None  # the trusted root a new device starts from
    device_id: str | None = None
    admin_token: str | None = None
    device_token: str | None = None
    interval_s: float = 30.0
    canaries: list[CanaryPrompt] = field(default_factory=lambda: list(DEFAULT_CANARIES))
    canary_every_s: float = 300.0
    min_eval_score: float = 0.5
    ready_timeout_s: float = 120.0


def _metadata_reason(exc: Exception) -> str:
    if isinstance(exc, tuf_exc.ExpiredMetadataError):
        return "metadata_expired"
    if isinstance(exc, tuf_exc.BadVersionNumberError):
        return "metadata_version_rollback"
    if isinstance(exc, tuf_exc.UnsignedMetadataError):
        return "metadata_bad_signatures"
    if isinstance(exc, tuf_exc.LengthOrHashMismatchError):
        return "metadata_hash_mismatch"
    if isinstance(exc, tuf_exc.DownloadError):
        return "metadata_download_failed"
    return "metadata_invalid"


class Agent:
    """One edge box's updater. `cycle()` is one poll; `run()` polls until stopped."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.store = SlotStore(config.models_dir)
        self.state: AgentState = self.store.load(config.device_id)
        self.store.save(self.state)
        self.node = NodeClient(config.node, config.admin_token)
        headers = {"authorization": f"Bearer {config.device_token}"} if config.device_token else {}
        self.http = httpx.Client(timeout=httpx.Timeout(30.0, connect=5.0), headers=headers)
        self.metrics = DeviceMetrics()
        self._last_canary = 0.0
        self._said: set[tuple[str, str]] = set()  # refusals already reported this run
        self.status = "starting"

    # -- events and reports ----------------------------------------------------------------

    def _event(self, kind: str, version: str, reason: str, once: bool = False) -> None:
        if once:
            if (version, reason) in self._said:
                return
            self._said.add((version, reason))
        log_event(f"agent.{kind}", device=self.state.device_id, version=version, reason=reason)
        self.state.add_event(DeviceEvent(kind=kind, version=version, reason=reason, at=time.time()))
        self.store.save(self.state)

    def report(self) -> bool:
        info = self.state.active_info
        rep = DeviceReport(
            device_id=self.state.device_id,
            model=self.config.model,
            version=info.version if info else "",
            agent_version=AGENT_VERSION,
            status=self.status,
            metrics=self.metrics,
            failed_versions=self.state.failed_versions,
            events=self.state.events,
        )
        try:
            r = self.http.post(
                f"{self.config.server.rstrip('/')}/v1/devices/report",
                content=rep.model_dump_json(),
                headers={"content-type": "application/json"},
            )
        except httpx.HTTPError as exc:
            log_event("agent.report_failed", error=type(exc).__name__)
            return False
        if r.status_code >= 300:
            log_event("agent.report_failed", status=r.status_code)
            return False
        if self.state.events:
            self.state.events = []
            self.store.save(self.state)
        return True

    # -- crash recovery --------------------------------------------------------------------

    def recover(self) -> None:
        """After a crash mid-activation, put the node back on the last committed slot."""
        pending = self.state.pending
        info = self.state.active_info
        if pending is None or info is None or self.state.active is None:
            if pending is not None and info is None:
                self.state.pending = None
                self.store.save(self.state)
            return
        self.node.swap(self.store.model_path(self.state.active), info.version)
        self.node.wait_ready(self.config.ready_timeout_s)
        self.state.pending = None
        self._event("recovered", info.version, f"interrupted activation of {pending.version}")

    # -- TUF -------------------------------------------------------------------------------

    def _updater(self) -> Updater:
        meta = self.store.tuf_dir
        base = self.config.server.rstrip("/")
        bootstrap = None
        if not (meta / "root.json").exists():
            if self.config.root is None:
                raise UpdateRefused("no_trusted_root", "give --root for a new device")
            bootstrap = self.config.root.read_bytes()
        return Updater(
            str(meta), f"{base}/tuf/metadata/", None, f"{base}/tuf/targets/", bootstrap=bootstrap
        )

    def refresh(self) -> tuple[Updater, list[ModelRelease]]:
        """Refresh and verify TUF metadata; the releases in the trusted targets."""
        try:
            updater = self._updater()
            updater.refresh()
        except (tuf_exc.RepositoryError, tuf_exc.DownloadError) as exc:
            raise UpdateRefused(_metadata_reason(exc), str(exc)[:300]) from None
        # ngclient stores targets.json only after verifying it against the trusted chain
        md = Metadata[Targets].from_file(str(self.store.tuf_dir / "targets.json"))
        releases = []
        for tf in md.signed.targets.values():
            try:
                rel = ModelRelease.from_custom(tf.custom)
            except ValueError:
                continue
            if rel is not None:
                releases.append(rel)
        return updater, releases

    # -- one poll --------------------------------------------------------------------------

    def cycle(self) -> None:
        try:
            self._cycle()
        except UpdateRefused as r:
            self.status = "refused"
            self._event("refused", r.version, f"{r.reason}: {r.detail}"[:500], once=True)
        except NodeUnreachable as exc:
            self.status = "node_unreachable"
            log_event("agent.node_unreachable", error=str(exc)[:200])
        self.report()

    def _cycle(self) -> None:
        if self.state.pending is not None:
            self.recover()
        updater, releases = self.refresh()
        choice = choose_release(
            releases,
            self.config.model,
            self.state.device_id,
            AGENT_VERSION,
            self.state.failed_versions,
        )
        for version, why in choice.refused:
            self._event("refused", version, why, once=True)
        want = choice.release
        active = self.state.active_info
        if want is None or (active is not None and active.version == want.version):
            self.status = "ok"
            self._maybe_canary()
            return
        log_event(
            "agent.update", device=self.state.device_id, version=want.version, why=choice.reason
        )
        tf = updater.get_targetinfo(target_path(want.model, want.version))
        if tf is None:
            raise UpdateRefused("target_missing", f"{want.version} has no signed target")
        slot = self.state.slot_with(want.version)
        if slot is None or slot == self.state.active:
            slot = self.state.inactive
            try:
                self._fetch(tf, slot, want)
            except UpdateRefused as r:
                r.version = want.version
                raise
        self._activate(slot, want)

    def _fetch(self, tf: TargetFile, slot: str, want: ModelRelease) -> None:
        sha = tf.hashes["sha256"]
        part = self.store.part_path(slot, sha)
        self.store.clean_partials(keep=part)
        url = f"{self.config.server.rstrip('/')}/tuf/targets/{tf.get_prefixed_paths()[0]}"
        self.status = "downloading"
        digest = download_resumable(self.http, url, part, tf.length)
        expected = tf.hashes.get("sha256")
        try:
            if expected is None or set(tf.hashes) != {"sha256"}:
                with open(part, "rb") as f:  # other algorithms: let TUF hash the file
                    tf.verify_length_and_hashes(f)
            elif digest != expected or part.stat().st_size != tf.length:
                raise tuf_exc.LengthOrHashMismatchError(
                    f"sha256 {digest[:16]}... is not the signed {expected[:16]}..."
                )
        except tuf_exc.LengthOrHashMismatchError as exc:
            part.unlink(missing_ok=True)
            raise UpdateRefused("target_hash_mismatch", str(exc)[:200]) from None
        # the slot's old content is no longer trusted from here until the rename lands
        self.state.slots.pop(slot, None)
        self.store.save(self.state)
        self.store.install(part, slot)
        self.state.slots[slot] = SlotInfo(version=want.version, sha256=sha, size=tf.length)
        self.store.save(self.state)
        log_event("agent.staged", device=self.state.device_id, version=want.version, slot=slot)

    def _activate(self, slot: str, want: ModelRelease) -> None:
        previous = self.state.active
        self.state.pending = Pending(version=want.version, slot=slot)  # type: ignore[arg-type]
        self.store.save(self.state)
        self.status = "activating"
        try:
            self.node.swap(self.store.model_path(slot), want.version)
            self.node.wait_ready(self.config.ready_timeout_s)
            result = self._check(want)
        except ActivationFailed as failed:
            self._roll_back(previous, want.version, f"{failed.reason}: {failed.detail}")
            return
        self.state.active = slot  # type: ignore[assignment]
        self.state.pending = None
        self.metrics = DeviceMetrics(
            error_rate=result.error_rate, p95_ms=result.p95_ms, eval_score=result.eval_score
        )
        self.status = "ok"
        self._event("activated", want.version, f"slot {slot}")

    def _check(self, want: ModelRelease) -> CanaryResult:
        current = self.node.current()
        if current is not None and current.get("sha256") not in (None, want.sha256):
            raise ActivationFailed("wrong_model", "the node reports another sha256")
        result = self.node.run_canaries(self.config.canaries)
        self._last_canary = time.monotonic()
        if result.error_rate > 0:
            raise ActivationFailed("canary_errors", f"error rate {result.error_rate:.2f}")
        if result.eval_score < self.config.min_eval_score:
            raise ActivationFailed("canary_score", f"eval score {result.eval_score:.2f}")
        return result

    def _roll_back(self, previous: str | None, version: str, reason: str) -> None:
        self.state.failed_versions = [*self.state.failed_versions, version][-32:]
        self.state.pending = None
        self.store.save(self.state)
        info = self.state.slots.get(previous) if previous else None
        if previous is not None and info is not None:
            self.node.swap(self.store.model_path(previous), info.version)
            self.node.wait_ready(self.config.ready_timeout_s)
        self.status = "rolled_back"
        self._event("rolled_back", version, reason)

    def _maybe_canary(self) -> None:
        if time.monotonic() - self._last_canary < self.config.canary_every_s:
            return
        if self.state.active_info is None:
            return
        r = self.node.run_canaries(self.config.canaries)
        self._last_canary = time.monotonic()
        self.metrics = DeviceMetrics(
            error_rate=r.error_rate, p95_ms=r.p95_ms, eval_score=r.eval_score
        )

    # -- loop ------------------------------------------------------------------------------

    def run(self, once: bool = False) -> None:
        """Poll every `interval_s` until SIGINT/SIGTERM (or once)."""
        stop = threading.Event()
        if not once:
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda *_: stop.set())
        log_event(
            "agent.start", device=self.state.device_id, server=self.config.server, pid=os.getpid()
        )
        while True:
            self.cycle()
            if once or stop.wait(self.config.interval_s):
                break
        self.http.close()
        self.node.close()
