"""The edge agent: pull signed metadata, choose, download, verify, stage, swap, check, report.

Trust comes from python-tuf's ngclient (`Updater.refresh` walks and verifies root, timestamp,
snapshot and targets; `TargetFile.verify_length_and_hashes` checks the model bytes), which
fetches over the agent's own HTTP client (`HttpxFetcher`). Every refusal and every failed poll
(a dropped link, a node that does not answer) is logged with a reason and reported to the
fleet server; the agent then keeps polling, backing off while polls fail. The node must serve
the committed slot's verified sha256: anything else is swapped back.
"""

from __future__ import annotations

import logging
import os
import signal
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import httpx
from tuf.api import exceptions as tuf_exc
from tuf.api.metadata import Metadata, TargetFile, Targets
from tuf.ngclient import Updater

from edgecloud import __version__
from edgecloud.fleet.credentials import is_loopback
from edgecloud.fleet.download import download_resumable
from edgecloud.fleet.errors import (
    ActivationFailed,
    FleetError,
    NodeAdminRefused,
    NodeBusy,
    NodeUnreachable,
    TransferTooSlow,
    UpdateRefused,
)
from edgecloud.fleet.fetcher import HttpxFetcher
from edgecloud.fleet.node_client import DEFAULT_CANARIES, CanaryPrompt, CanaryResult, NodeClient
from edgecloud.fleet.polling import (
    DEFAULT_JITTER,
    DEFAULT_POLL_S,
    NEXT_POLL_HEADER,
    accept_hint,
    jittered,
)
from edgecloud.fleet.rollout import ModelRelease, choose_release, target_path
from edgecloud.fleet.slots import MAX_INTERRUPTED, AgentState, Pending, SlotInfo, SlotStore
from edgecloud.fleet.state import DeviceEvent, DeviceMetrics, DeviceReport
from edgecloud.fleet.transport import TransferLimits, agent_client, within
from edgecloud.logs import log_event
from edgecloud.retry import backoff_s

log = logging.getLogger("edgecloud.fleet")

AGENT_VERSION = __version__
T = TypeVar("T")


@dataclass
class AgentConfig:
    server: str
    models_dir: Path
    node: str
    model: str
    root: Path | None = None  # the trusted root a new device starts from
    device_id: str | None = None
    admin_token: str | None = field(default=None, repr=False)
    enrol_token: str | None = field(default=None, repr=False)  # spent once, on enrolment
    ca_file: Path | None = None  # the CA of an https fleet server with its own certificates
    # where TUF metadata and model files come from: a mirror or CDN (default: the server)
    metadata_url: str | None = None
    targets_url: str | None = None
    allow_plain_http: bool = False  # http to a remote server (behind a trusted proxy only)
    interval_s: float = DEFAULT_POLL_S
    jitter: float = DEFAULT_JITTER
    max_backoff_s: float = 4 * DEFAULT_POLL_S
    limits: TransferLimits = field(default_factory=TransferLimits)
    canaries: list[CanaryPrompt] = field(default_factory=lambda: list(DEFAULT_CANARIES))
    canary_every_s: float = 300.0
    min_eval_score: float = 0.5
    ready_timeout_s: float = 120.0


def check_server_url(url: str, allow_plain_http: bool) -> None:
    """Refuse to send a device credential over plain http across a network (FleetError)."""
    parsed = httpx.URL(url)
    if parsed.scheme not in ("http", "https"):
        raise FleetError(f"--server {url}: use an http(s) URL")
    if parsed.scheme == "http" and not allow_plain_http and not is_loopback(parsed.host):
        raise FleetError(
            f"--server {url} is plain http to another machine: use https (and --ca-file for "
            "the fleet's own CA), or --allow-plain-http behind a trusted TLS proxy."
        )


# Most specific first: several TUF errors derive from DownloadError.
_METADATA_REASONS: tuple[tuple[type[Exception], str], ...] = (
    (tuf_exc.ExpiredMetadataError, "metadata_expired"),
    (tuf_exc.BadVersionNumberError, "metadata_version_rollback"),
    (tuf_exc.UnsignedMetadataError, "metadata_bad_signatures"),
    (tuf_exc.LengthOrHashMismatchError, "metadata_hash_mismatch"),
    (tuf_exc.SlowRetrievalError, "metadata_download_too_slow"),
    (tuf_exc.DownloadError, "metadata_download_failed"),
)


def _metadata_reason(exc: Exception) -> str:
    for kind, reason in _METADATA_REASONS:
        if isinstance(exc, kind):
            return reason
    return "metadata_invalid"


def _error_code(r: httpx.Response) -> str:
    try:
        return str(r.json()["error"]["code"])[:64]
    except Exception:
        return ""


class Agent:
    """One edge box's updater. `cycle()` is one poll; `run()` polls until stopped."""

    def __init__(self, config: AgentConfig) -> None:
        check_server_url(config.server, config.allow_plain_http)
        for mirror in (config.metadata_url, config.targets_url):
            if mirror is not None:
                check_server_url(mirror, config.allow_plain_http)
        self.config = config
        self.base = config.server.rstrip("/")
        self.metadata_url = (config.metadata_url or f"{self.base}/tuf/metadata").rstrip("/") + "/"
        self.targets_url = (config.targets_url or f"{self.base}/tuf/targets").rstrip("/") + "/"
        self.store = SlotStore(config.models_dir)
        self.state: AgentState = self.store.load(config.device_id)
        self.store.save(self.state)
        self.credential = self.store.load_credential(self.state.device_id)
        self.node = NodeClient(config.node, config.admin_token)
        verify: ssl.SSLContext | bool = True
        if config.ca_file is not None:
            verify = ssl.create_default_context(cafile=str(config.ca_file))
        self.http = agent_client(config.limits, verify)
        self.metrics = DeviceMetrics()
        self._last_canary = 0.0
        self._said: set[tuple[str, str]] = set()  # refusals already reported this run
        self._faults: set[tuple[str, str]] = set()  # failures reported since the last good poll
        self.failures = 0  # polls in a row that did not complete
        self.server_wait_s: float | None = None  # the last report's answer: when to come back
        self.status = "starting"

    # -- events and reports ----------------------------------------------------------------

    def _event(
        self,
        kind: str,
        version: str,
        reason: str,
        once: set[tuple[str, str]] | None = None,
        key: str | None = None,
    ) -> None:
        """Log and keep an event for the next report; with `once`, not again while that set
        holds (version, key), the key being the reason unless given."""
        if once is not None:
            seen = (version, key or reason)
            if seen in once:
                return
            once.add(seen)
        log_event(log, f"agent.{kind}", device=self.state.device_id, version=version, reason=reason)
        self.state.add_event(DeviceEvent(kind=kind, version=version, reason=reason, at=time.time()))
        self.store.save(self.state)

    def enrol(self) -> None:
        """Trade the enrolment token for this device's own credential (once; kept on disk)."""
        token = self.config.enrol_token
        if self.credential is not None or token is None:
            return
        try:
            with within(self.config.limits):
                r = self.http.post(
                    f"{self.base}/v1/devices/enrol",
                    json={"device_id": self.state.device_id},
                    headers={"authorization": f"Bearer {token}"},
                )
            credential = r.json().get("credential") if r.status_code == 200 else None
        except (httpx.HTTPError, TransferTooSlow, ValueError, AttributeError) as exc:
            log_event(log, "agent.enrol_failed", error=type(exc).__name__)
            return
        if not isinstance(credential, str):
            log_event(log, "agent.enrol_failed", status=r.status_code, error=_error_code(r))
            return
        self.store.save_credential(self.state.device_id, credential)
        self.credential = credential
        log_event(log, "agent.enrolled", device=self.state.device_id)

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
            event_stream=self.state.event_stream,
        )
        headers = {"content-type": "application/json"}
        if self.credential is not None:
            headers["authorization"] = f"Bearer {self.credential}"
        try:
            with within(self.config.limits):
                r = self.http.post(
                    f"{self.base}/v1/devices/report",
                    content=rep.model_dump_json(),
                    headers=headers,
                )
        except (httpx.HTTPError, TransferTooSlow) as exc:
            log_event(log, "agent.report_failed", error=type(exc).__name__)
            return False
        # the server may say when to come back (its fleet interval, or longer to shed load)
        self.server_wait_s = accept_hint(
            r.headers.get(NEXT_POLL_HEADER) or r.headers.get("retry-after")
        )
        if r.status_code >= 300:  # the events stay on disk for the next report
            log_event(log, "agent.report_failed", status=r.status_code, error=_error_code(r))
            return False
        if self.state.events:
            self.state.events = []
            self.store.save(self.state)
        return True

    # -- crash recovery --------------------------------------------------------------------

    def recover(self) -> None:
        """After an activation was cut short (the agent or the node crashed, or the box lost
        power), put the node back on the last committed slot. A version whose activation is cut
        short MAX_INTERRUPTED times is marked failed: a model that crashes the node while it
        loads is never tried again."""
        pending = self.state.pending
        if pending is None:
            return
        if not pending.interrupted:  # counted once, however many polls the restore takes
            version = pending.version
            n = self.state.interrupted.get(version, 0) + 1
            pending.interrupted = True
            if n >= MAX_INTERRUPTED:
                self.state.interrupted.pop(version, None)
                self.state.failed_versions = [*self.state.failed_versions, version][-32:]
                self._event(
                    "rolled_back",
                    version,
                    f"activation cut short {n} times: the node "
                    "crashed or restarted while loading it",
                )
            else:
                self.state.interrupted[version] = n
                self.store.save(self.state)
        info = self.state.active_info
        if info is None or self.state.active is None:
            self.state.pending = None
            self.store.save(self.state)
            return
        self._serve_slot(self.state.active)
        self.state.pending = None
        self._event("recovered", info.version, f"interrupted activation of {pending.version}")

    def keep_committed(self) -> None:
        """Swap the committed slot back in when the node serves anything else."""
        slot, info = self.state.active, self.state.active_info
        if slot is None or info is None:
            return
        current = self.node.current()
        served = current.get("sha256") if current is not None else None
        if served == info.sha256:
            return
        self._serve_slot(slot)
        shown = str(served)[:16] if served else "no model"
        self._event("restored", info.version, f"the node served {shown}, not slot {slot}")

    def _serve_slot(self, slot: str) -> None:
        """Have the node serve `slot` and check it reports the slot's verified sha256.

        A node busy with another swap (409) is asked again until `ready_timeout_s`.
        """
        info = self.state.slots[slot]
        t_end = time.monotonic() + self.config.ready_timeout_s
        busy = 0
        while True:
            try:
                self.node.swap(self.store.model_path(slot), info.version)
                break
            except NodeBusy:
                delay = backoff_s(0.2, busy, 5.0)
                busy += 1
                if time.monotonic() + delay > t_end:
                    raise
                log_event(log, "agent.node_busy_retry", device=self.state.device_id, slot=slot)
                time.sleep(delay)
        self.node.wait_ready(max(1.0, t_end - time.monotonic()))
        current = self.node.current()
        served = current.get("sha256") if current is not None else None
        if served != info.sha256:
            raise ActivationFailed(
                "wrong_model",
                f"the node reports sha256 {str(served)[:16]}, not the verified {info.sha256[:16]}",
            )

    # -- TUF -------------------------------------------------------------------------------

    def _updater(self) -> Updater:
        meta = self.store.tuf_dir
        bootstrap = None
        if not (meta / "root.json").exists():
            if self.config.root is None:
                raise UpdateRefused("no_trusted_root", "give --root for a new device")
            bootstrap = self.config.root.read_bytes()
        return Updater(
            str(meta),
            self.metadata_url,
            None,
            self.targets_url,
            fetcher=HttpxFetcher(self.http, self.config.limits),
            bootstrap=bootstrap,
        )

    @staticmethod
    def _tuf(call: Callable[[], T]) -> T:
        """Run a TUF call; its refusals and download errors become UpdateRefused."""
        try:
            return call()
        except (tuf_exc.RepositoryError, tuf_exc.DownloadError) as exc:
            raise UpdateRefused(_metadata_reason(exc), str(exc)[:300]) from None

    def refresh(self) -> tuple[Updater, list[ModelRelease]]:
        """Refresh and verify TUF metadata; the releases in the trusted targets."""
        updater = self._updater()
        self._tuf(updater.refresh)
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

    def cycle(self) -> bool:
        """One poll, then a report; True when both went through. Never raises: every
        failure is a refused or failed poll, logged and reported."""
        done = False
        try:
            self._cycle()
            done = True
        except UpdateRefused as r:
            self.status = "refused"
            text = f"{r.reason}: {r.detail}"[:500]
            self._event("refused", r.version, text, self._faults, key=r.reason)
        except NodeBusy as exc:
            self.status = "node_busy"
            log_event(log, "agent.node_busy", device=self.state.device_id, error=str(exc)[:200])
        except NodeUnreachable as exc:
            self.status = "node_unreachable"
            log_event(log, "agent.node_unreachable", error=str(exc)[:200])
        except NodeAdminRefused as exc:  # this box's setup, not the version's fault
            self.status = "failed"
            text = f"node_admin_refused: {exc}"[:500]
            self._event("failed", "", text, self._faults, key="node_admin_refused")
        except ActivationFailed as exc:  # restoring the committed slot failed
            self.status = "failed"
            self._event("failed", "", str(exc)[:500], self._faults, key=exc.reason)
        except Exception as exc:  # a bug or a fault nobody foresaw: report it, keep polling
            self.status = "failed"
            text = f"internal: {type(exc).__name__}: {exc}"[:500]
            self._event("failed", "", text, self._faults, key=type(exc).__name__)
        try:
            self.enrol()
            reported = self.report()
        except Exception as exc:  # e.g. a full disk while saving the state
            log_event(log, "agent.report_failed", error=f"{type(exc).__name__}: {exc}"[:300])
            reported = False
        if done:
            self._faults.clear()  # a fault that comes back is reported again
        self.failures = 0 if done and reported else self.failures + 1
        return done and reported

    def _cycle(self) -> None:
        if self.state.pending is not None:
            self.recover()
        self.keep_committed()
        updater, releases = self.refresh()
        choice = choose_release(
            releases,
            self.config.model,
            self.state.device_id,
            AGENT_VERSION,
            self.state.failed_versions,
        )
        for version, why in choice.refused:
            self._event("refused", version, why, self._said)
        want = choice.release
        active = self.state.active_info
        if want is None or (active is not None and active.version == want.version):
            self.status = "ok"
            self._maybe_canary()
            return
        log_event(
            log, "agent.update", device=self.state.device_id, version=want.version,
            why=choice.reason,
        )
        tf = self._tuf(lambda: updater.get_targetinfo(target_path(want.model, want.version)))
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
        url = f"{self.targets_url}{tf.get_prefixed_paths()[0]}"
        self.status = "downloading"
        digest = download_resumable(self.http, url, part, tf.length, self.config.limits)
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
        log_event(log, "agent.staged", device=self.state.device_id, version=want.version, slot=slot)

    def _activate(self, slot: str, want: ModelRelease) -> None:
        previous = self.state.active
        self.state.pending = Pending(version=want.version, slot=slot)  # type: ignore[arg-type]
        self.store.save(self.state)
        self.status = "activating"
        try:
            self._serve_slot(slot)
            result = self._check()
        except NodeBusy:
            # the node never took the new model: nothing failed, a later poll tries again
            self.state.pending = None
            self.store.save(self.state)
            raise
        except ActivationFailed as failed:
            self._roll_back(previous, want.version, f"{failed.reason}: {failed.detail}")
            return
        self.state.active = slot  # type: ignore[assignment]
        self.state.pending = None
        self.state.interrupted.pop(want.version, None)
        self.metrics = DeviceMetrics(
            error_rate=result.error_rate, p95_ms=result.p95_ms, eval_score=result.eval_score
        )
        self.status = "ok"
        self._event("activated", want.version, f"slot {slot}")

    def _check(self) -> CanaryResult:
        result = self.node.run_canaries(self.config.canaries)
        self._last_canary = time.monotonic()
        if result.error_rate > 0:
            raise ActivationFailed("canary_errors", f"error rate {result.error_rate:.2f}")
        if result.eval_score < self.config.min_eval_score:
            raise ActivationFailed("canary_score", f"eval score {result.eval_score:.2f}")
        return result

    def _roll_back(self, previous: str | None, version: str, reason: str) -> None:
        # recorded (on disk) first: the version is never taken again, even if the swap back
        # fails now; the next poll then restores the committed slot
        self.state.failed_versions = [*self.state.failed_versions, version][-32:]
        self.state.pending = None
        self.status = "rolled_back"
        self._event("rolled_back", version, reason)
        if previous is not None and previous in self.state.slots:
            self._serve_slot(previous)

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

    def next_wait_s(self) -> float:
        """Seconds until the next poll: the interval with jitter, backed off after failures,
        and never sooner than the server asked."""
        if self.failures:
            # Doubled per failed poll in a row up to the cap, with jitter so that a fleet that
            # lost its server does not return in lockstep.
            wait = backoff_s(self.config.interval_s, self.failures, self.config.max_backoff_s,
                             jitter=0.5)
        else:
            wait = jittered(self.config.interval_s, self.config.jitter)
        if self.server_wait_s is not None:
            wait = max(wait, jittered(self.server_wait_s, self.config.jitter))
        return wait

    def run(self, once: bool = False) -> None:
        """Poll every `interval_s` until SIGINT/SIGTERM (or once)."""
        stop = threading.Event()
        if not once:
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda *_: stop.set())
        log_event(
            log, "agent.start", device=self.state.device_id, server=self.config.server,
            pid=os.getpid(),
        )
        while True:
            self.cycle()
            wait = self.next_wait_s()
            if self.failures:
                log_event(
                    log, "agent.backoff",
                    device=self.state.device_id,
                    status=self.status,
                    failures=self.failures,
                    wait_s=round(wait, 2),
                )
            if once or stop.wait(wait):
                break
        self.http.close()
        self.node.close()
