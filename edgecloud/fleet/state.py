"""Fleet state in SQL (SQLAlchemy): the source of truth that every `fleet serve` shares.

Devices (their last report, with the columns the rollout gates query), events, enrolment
tokens, credentials, the fleet-wide enrolment bucket, rollout state and the controller's gate
values all live here, so any number of server processes can run over one database (PostgreSQL)
and a device may enrol on one and report to another. SQLite is the default for one process.
Reports are written in groups (`save`), each report answered only once its group is stored.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import (
    Float,
    Index,
    Integer,
    String,
    Text,
    case,
    create_engine,
    delete,
    event,
    func,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from edgecloud.fleet.cohort import cohort_bucket
from edgecloud.fleet.credentials import DeviceCredential, EnrolmentToken
from edgecloud.fleet.errors import CredentialError, FleetError
from edgecloud.fleet.rollout import ModelRelease, StageSample


class Base(DeclarativeBase):
    pass


class DeviceRow(Base):
    __tablename__ = "fleet_devices"

    device_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    report: Mapped[str] = mapped_column(Text)  # the last DeviceReport as JSON
    updated_at: Mapped[float] = mapped_column(Float, index=True)
    # What the gates query, so a tick reads one aggregate row, not 100,000 reports:
    model: Mapped[str] = mapped_column(String(128), default="")
    version: Mapped[str] = mapped_column(String(64), default="")
    cohort: Mapped[float] = mapped_column(Float, default=100.0)  # cohort_bucket(device, model)
    failed: Mapped[str] = mapped_column(Text, default="")  # "|v1|v2|": failed_versions
    error_rate: Mapped[float] = mapped_column(Float, default=0.0)
    p95_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    eval_score: Mapped[float | None] = mapped_column(Float, nullable=True)
    event_stream: Mapped[str] = mapped_column(String(64), default="")
    events_seen: Mapped[int] = mapped_column(Integer, default=0)

    __table_args__ = (Index("ix_fleet_devices_model_cohort", "model", "cohort"),)


class EventRow(Base):
    __tablename__ = "fleet_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(String(128), index=True)
    at: Mapped[float] = mapped_column(Float)
    kind: Mapped[str] = mapped_column(String(32))
    version: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(Text)
    # numbered events are stored once per (device, stream, number), whichever replica takes
    # them; unnumbered ones (seq NULL) are all kept
    stream: Mapped[str | None] = mapped_column(String(64), nullable=True)
    seq: Mapped[int | None] = mapped_column(Integer, nullable=True)

    __table_args__ = (Index("ux_fleet_events_numbered", "device_id", "stream", "seq", unique=True),)


class EnrolmentRow(Base):
    __tablename__ = "fleet_enrolment_tokens"

    token_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    hash: Mapped[str] = mapped_column(String(64))  # sha256 of the secret, never the token
    device_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    uses_left: Mapped[int] = mapped_column(Integer)
    expires_at: Mapped[float] = mapped_column(Float)
    created_at: Mapped[float] = mapped_column(Float)


class CredentialRow(Base):
    __tablename__ = "fleet_device_credentials"

    token_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    hash: Mapped[str] = mapped_column(String(64))
    device_id: Mapped[str] = mapped_column(String(128), unique=True)
    created_at: Mapped[float] = mapped_column(Float)


class BucketRow(Base):
    """A fleet-wide token bucket (the enrolment limit), shared by every server process."""

    __tablename__ = "fleet_limits"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    tokens: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)


class RolloutRow(Base):
    """A release's rollout as the controller last saw it, with its gate values."""

    __tablename__ = "fleet_rollouts"

    model: Mapped[str] = mapped_column(String(128), primary_key=True)
    version: Mapped[str] = mapped_column(String(64), primary_key=True)
    stage: Mapped[str] = mapped_column(String(16))
    percent: Mapped[float] = mapped_column(Float)
    reason: Mapped[str] = mapped_column(Text, default="")
    gates: Mapped[str] = mapped_column(Text, default="")  # JSON of the last evaluation
    updated_at: Mapped[float] = mapped_column(Float)


class DeviceEvent(BaseModel):
    """Something that happened on a device: activated, refused, rolled_back, recovered."""

    kind: str = Field(max_length=32)
    version: str = Field(default="", max_length=64)
    reason: str = Field(default="", max_length=2000)
    at: float = 0.0
    # Numbered per device from 1 within its `event_stream`, so a report resent because its
    # answer was lost does not store its events twice; 0: not numbered (stored as sent).
    seq: int = Field(default=0, ge=0, le=2**53)  # JSON-safe in every client


class DeviceMetrics(BaseModel):
    error_rate: float = Field(default=0.0, ge=0, le=1)
    p95_ms: float | None = Field(default=None, ge=0)
    eval_score: float | None = Field(default=None, ge=0, le=1)


class DeviceReport(BaseModel):
    """What an agent sends on each poll."""

    device_id: str = Field(min_length=1, max_length=128)
    model: str = Field(default="", max_length=128)
    version: str = Field(default="", max_length=64)
    agent_version: str = Field(default="", max_length=64)
    status: str = Field(default="ok", max_length=32)
    metrics: DeviceMetrics = Field(default_factory=lambda: DeviceMetrics())
    failed_versions: list[str] = Field(default_factory=list, max_length=64)
    events: list[DeviceEvent] = Field(default_factory=list, max_length=64)
    event_stream: str = Field(default="", max_length=64)  # the agent state's numbering
    received_at: float = 0.0
    events_seen: int = 0  # set by the server: the highest `seq` taken from this event_stream

    def take_new_events(self, previous: DeviceReport | None) -> None:
        """Drop the events `previous` (this device's last report) already took, and note the
        highest number taken. A new event_stream (a reset agent state) starts again from 0."""
        seen = 0
        if previous is not None and previous.event_stream == self.event_stream:
            seen = previous.events_seen
        fresh = [ev for ev in self.events if ev.seq == 0 or ev.seq > seen]
        if len(fresh) != len(self.events):
            self.events = fresh
        self.events_seen = max([seen, *(ev.seq for ev in fresh)])


class DatabaseURLError(FleetError):
    """The fleet database URL cannot be parsed (the message never repeats the URL)."""


def database_url(url: str | URL) -> URL:
    """Parse a SQLAlchemy URL; a bare `postgresql://` (or `postgres://`) uses psycopg 3.

    SQLAlchemy's default PostgreSQL driver is psycopg2, which edgecloud does not ship.
    """
    try:
        parsed = make_url(url)
    except ArgumentError:
        # SQLAlchemy's message quotes the whole string, password included
        raise DatabaseURLError(
            "The fleet database URL is not a SQLAlchemy URL "
            "(dialect+driver://user:password@host:port/database)."
        ) from None
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def masked_url(url: str | URL) -> str:
    """The URL with its password replaced by `***`, for logs and error messages."""
    return database_url(url).render_as_string(hide_password=True)


class EnrolmentLimited(CredentialError):
    """The fleet-wide enrolment bucket is empty; `retry_after_s` says when one more fits."""

    def __init__(self, retry_after_s: float) -> None:
        super().__init__("Too many enrolments; try again later.", 429, "rate_limited")
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class StoredRollout:
    """A release's rollout state and gate values as the controller last stored them."""

    model: str
    version: str
    stage: str
    percent: float
    reason: str
    gates: dict[str, Any] | None
    updated_at: float


def _failed_column(versions: Iterable[str]) -> str:
    versions = list(versions)
    return "|" + "|".join(versions) + "|" if versions else ""


def _insert(engine: Engine, table: Any) -> Any:
    """The dialect's INSERT, which has ON CONFLICT on PostgreSQL and SQLite."""
    if engine.dialect.name == "postgresql":
        return postgresql.insert(table)
    if engine.dialect.name == "sqlite":
        return sqlite.insert(table)
    raise FleetError(f"the fleet database must be PostgreSQL or SQLite, not {engine.dialect.name}")


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    """Write-ahead log with NORMAL sync: a report is acknowledged only once committed, and a
    commit costs no fsync (a killed process loses nothing committed; a power cut may lose the
    last moments, which the agents send again). Waits for a lock instead of failing at once."""
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=5000")
    cur.close()


def _add_missing_columns(engine: Engine) -> None:
    """Bring tables an older version created up to date: add the columns it did not have
    (with their defaults; existing rows count again once their device reports) and the
    indexes. Only additions: nothing is dropped or rewritten."""
    found = inspect(engine)
    with engine.begin() as conn:
        for table in Base.metadata.sorted_tables:
            have = {c["name"] for c in found.get_columns(table.name)}
            for col in table.columns:
                if col.name in have:
                    continue
                ddl = f"ALTER TABLE {table.name} ADD COLUMN {col.name} "
                ddl += col.type.compile(engine.dialect)
                default = col.default.arg if col.default is not None else None  # type: ignore[attr-defined]
                if default is not None:
                    ddl += (
                        f" DEFAULT {default!r}"
                        if isinstance(default, str)
                        else (f" DEFAULT {default}")
                    )
                    ddl += " NOT NULL"
                conn.execute(text(ddl))
        for table in Base.metadata.sorted_tables:
            for index in table.indexes:
                index.create(conn, checkfirst=True)


_DEVICE_COLUMNS = (
    "report",
    "updated_at",
    "model",
    "version",
    "cohort",
    "failed",
    "error_rate",
    "p95_ms",
    "eval_score",
    "event_stream",
    "events_seen",
)


class FleetStore:
    """The fleet's state in any SQLAlchemy database (blocking: call from a thread)."""

    def __init__(self, url: str | URL) -> None:
        parsed = database_url(url)
        kwargs: dict[str, Any] = {}
        if parsed.get_backend_name() == "sqlite":
            kwargs["connect_args"] = {"check_same_thread": False}
        else:
            kwargs["pool_pre_ping"] = True  # survive a database restart between batches
            kwargs["pool_size"] = 10
        self.engine = create_engine(parsed, **kwargs)
        self.dialect = self.engine.dialect.name
        if self.dialect == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        Base.metadata.create_all(self.engine)
        _add_missing_columns(self.engine)
        with Session(self.engine) as s, s.begin():  # the bucket starts full (clamped on use)
            s.execute(
                _insert(self.engine, BucketRow)
                .values(name="enrol", tokens=1e9, updated_at=time.time())
                .on_conflict_do_nothing()
            )

    # -- reports and events ----------------------------------------------------------------

    def save(self, reports: Iterable[DeviceReport]) -> list[DeviceReport]:
        """Store a group of reports in one transaction: each device's latest report (upsert)
        and its events not stored yet. Returns the reports with only their new events.

        Events are numbered per device and stream; the unique index drops a number another
        process stored first (a report resent to another replica), so each is stored once.
        """
        batch = list(reports)
        if not batch:
            return []
        ids = sorted({r.device_id for r in batch})
        # only devices that sent events need their stored numbering read (most reports have
        # none); the others keep theirs, marked by events_seen -1 in the upsert below
        numbered = sorted({r.device_id for r in batch if r.events})
        with Session(self.engine) as s, s.begin():
            seen: dict[str, DeviceReport] = {}
            for i in range(0, len(numbered), 500):
                found = s.execute(
                    select(
                        DeviceRow.device_id, DeviceRow.event_stream, DeviceRow.events_seen
                    ).where(DeviceRow.device_id.in_(numbered[i : i + 500]))
                ).all()
                for device, stream, n in found:
                    seen[device] = DeviceReport(
                        device_id=device, event_stream=stream, events_seen=max(0, n)
                    )
            keep = set(ids) - set(numbered)
            for r in batch:  # in arrival order: a device may report twice in one group
                if r.device_id not in keep:
                    r.take_new_events(seen.get(r.device_id))
                    seen[r.device_id] = r
            latest = {r.device_id: r for r in batch}
            rows = [self._device_row(latest[d]) for d in ids]  # sorted: one lock order
            for row in rows:
                if row["device_id"] in keep:
                    row["events_seen"] = -1
            stmt = _insert(self.engine, DeviceRow)
            kept = stmt.excluded.events_seen < 0
            update_ = {c: stmt.excluded[c] for c in _DEVICE_COLUMNS}
            update_["events_seen"] = case(
                (kept, DeviceRow.events_seen), else_=stmt.excluded.events_seen
            )
            update_["event_stream"] = case(
                (kept, DeviceRow.event_stream), else_=stmt.excluded.event_stream
            )
            s.execute(
                stmt.on_conflict_do_update(index_elements=[DeviceRow.device_id], set_=update_),
                rows,
            )
            events = [
                {
                    "device_id": r.device_id,
                    "at": ev.at or r.received_at,
                    "kind": ev.kind,
                    "version": ev.version,
                    "reason": ev.reason,
                    "stream": r.event_stream if ev.seq else None,
                    "seq": ev.seq or None,
                }
                for r in batch
                for ev in r.events
            ]
            if events:
                s.execute(_insert(self.engine, EventRow).on_conflict_do_nothing(), events)
        return batch

    @staticmethod
    def _device_row(r: DeviceReport) -> dict[str, Any]:
        m = r.metrics
        return {
            "device_id": r.device_id,
            "report": r.model_copy(update={"events": []}).model_dump_json(),
            "updated_at": r.received_at,
            "model": r.model,
            "version": r.version,
            "cohort": cohort_bucket(r.device_id, r.model) if r.model else 100.0,
            "failed": _failed_column(r.failed_versions),
            "error_rate": m.error_rate,
            "p95_ms": m.p95_ms,
            "eval_score": m.eval_score,
            "event_stream": r.event_stream,
            "events_seen": r.events_seen,
        }

    def reports(self, limit: int | None = None) -> list[DeviceReport]:
        """Devices' latest reports, by device id (the first `limit`)."""
        with Session(self.engine) as s:
            q = select(DeviceRow.report).order_by(DeviceRow.device_id)
            if limit is not None:
                q = q.limit(limit)
            return [DeviceReport.model_validate_json(r) for r in s.scalars(q)]

    def device_count(self) -> int:
        with Session(self.engine) as s:
            return int(s.scalar(select(func.count()).select_from(DeviceRow)) or 0)

    def devices_by_version(self) -> dict[tuple[str, str], int]:
        """Devices per (model, version) by their latest report; no version: skipped."""
        with Session(self.engine) as s:
            rows = s.execute(
                select(DeviceRow.model, DeviceRow.version, func.count())
                .where(DeviceRow.version != "")
                .group_by(DeviceRow.model, DeviceRow.version)
            ).all()
            return {(m, v): int(n) for m, v, n in rows}

    def stage_sample(self, release: ModelRelease) -> tuple[StageSample, int]:
        """The gates' input for a staged release, in one aggregate query: devices of the model
        inside its current cohort (the stage), and of those the ones on the version (healthy)
        or that report it failed. The same selection as `readings_for`, done by the database.
        """
        percent = release.rollout.percent
        stage = [DeviceRow.model == release.model]
        if percent < 100:
            stage.append(DeviceRow.cohort < percent)
        failed = DeviceRow.failed.contains(f"|{release.version}|", autoescape=True)
        healthy = (DeviceRow.version == release.version) & ~failed
        with Session(self.engine) as s:
            row = s.execute(
                select(
                    func.count(),
                    func.count().filter(failed),
                    func.count().filter(healthy),
                    func.avg(DeviceRow.error_rate).filter(healthy),
                    func.max(DeviceRow.p95_ms).filter(healthy),
                    func.avg(DeviceRow.eval_score).filter(healthy),
                ).where(*stage)
            ).one()
        total, n_failed, n_healthy, err, p95, score = row
        sample = StageSample(
            healthy=int(n_healthy or 0),
            failures=int(n_failed or 0),
            mean_error_rate=float(err or 0.0),
            worst_p95_ms=float(p95) if p95 is not None else None,
            mean_eval_score=float(score) if score is not None else None,
        )
        return sample, int(total or 0)

    def model_devices(self, model: str) -> int:
        """Devices that last reported running `model` (the base of a rollout's rate limit)."""
        with Session(self.engine) as s:
            q = select(func.count()).select_from(DeviceRow).where(DeviceRow.model == model)
            return int(s.scalar(q) or 0)

    def recent_events(self, limit: int = 50) -> list[dict[str, Any]]:
        with Session(self.engine) as s:
            rows = s.scalars(select(EventRow).order_by(EventRow.id.desc()).limit(limit)).all()
            return [
                {
                    "device_id": r.device_id,
                    "at": r.at,
                    "kind": r.kind,
                    "version": r.version,
                    "reason": r.reason,
                }
                for r in rows
            ]

    # -- rollouts --------------------------------------------------------------------------

    def save_rollouts(self, rollouts: Iterable[StoredRollout]) -> None:
        rows = [
            {
                "model": r.model,
                "version": r.version,
                "stage": r.stage,
                "percent": r.percent,
                "reason": r.reason,
                "gates": json.dumps(r.gates) if r.gates is not None else "",
                "updated_at": r.updated_at,
            }
            for r in rollouts
        ]
        if not rows:
            return
        stmt = _insert(self.engine, RolloutRow)
        cols = ("stage", "percent", "reason", "gates", "updated_at")
        with Session(self.engine) as s, s.begin():
            s.execute(
                stmt.on_conflict_do_update(
                    index_elements=[RolloutRow.model, RolloutRow.version],
                    set_={c: stmt.excluded[c] for c in cols},
                ),
                rows,
            )

    def rollouts(self) -> dict[tuple[str, str], StoredRollout]:
        with Session(self.engine) as s:
            return {
                (r.model, r.version): StoredRollout(
                    r.model,
                    r.version,
                    r.stage,
                    r.percent,
                    r.reason,
                    json.loads(r.gates) if r.gates else None,
                    r.updated_at,
                )
                for r in s.scalars(select(RolloutRow))
            }

    # -- credentials -------------------------------------------------------------------------

    def add_enrolment_token(self, token: EnrolmentToken) -> None:
        with Session(self.engine) as s, s.begin():
            s.add(
                EnrolmentRow(
                    token_id=token.token_id,
                    hash=token.hash,
                    device_id=token.device_id,
                    uses_left=token.uses_left,
                    expires_at=token.expires_at,
                    created_at=time.time(),
                )
            )

    def enrolment_token(self, token_id: str) -> EnrolmentToken | None:
        with Session(self.engine) as s:
            row = s.get(EnrolmentRow, token_id)
            if row is None:
                return None
            return EnrolmentToken(
                row.token_id, row.hash, row.uses_left, row.expires_at, row.device_id
            )

    def enrol(
        self,
        token_id: str,
        credential: DeviceCredential,
        replace: bool,
        *,
        max_devices: int,
        rate: float,
        burst: float,
    ) -> None:
        """Charge the fleet-wide enrolment bucket, check the fleet size, spend one use of the
        token and store the device's credential, in one transaction (the bucket's row lock
        orders enrolments across processes). Raises CredentialError; nothing is spent then."""
        device = credential.device_id
        with Session(self.engine) as s, s.begin():
            bucket = s.scalars(
                select(BucketRow).where(BucketRow.name == "enrol").with_for_update()
            ).one()
            now = time.time()
            tokens = min(burst, bucket.tokens + max(0.0, now - bucket.updated_at) * rate)
            if tokens < 1:
                raise EnrolmentLimited((1 - tokens) / rate)
            bucket.tokens, bucket.updated_at = tokens - 1, now
            known = s.scalars(
                select(CredentialRow.token_id).where(CredentialRow.device_id == device)
            ).first()
            if known is None:
                count = s.scalar(select(func.count()).select_from(CredentialRow)) or 0
                if count >= max_devices:
                    raise CredentialError(
                        f"The fleet is full ({max_devices} devices); raise --max-devices.",
                        403,
                        "fleet_full",
                    )
            elif not replace:
                raise CredentialError(
                    f"{device} is enrolled already; re-enrol it with a token bound to it.",
                    409,
                    "device_already_enrolled",
                )
            spent = s.execute(
                update(EnrolmentRow)
                .where(EnrolmentRow.token_id == token_id, EnrolmentRow.uses_left > 0)
                .values(uses_left=EnrolmentRow.uses_left - 1)
            )
            if spent.rowcount != 1:  # type: ignore[attr-defined]
                raise CredentialError(
                    "The enrolment token is used up (a concurrent enrolment took it).",
                    409,
                    "token_spent",
                )
            if known is not None:
                s.execute(delete(CredentialRow).where(CredentialRow.device_id == device))
            s.add(
                CredentialRow(
                    token_id=credential.token_id,
                    hash=credential.hash,
                    device_id=device,
                    created_at=now,
                )
            )

    def credentials_by_id(self, token_ids: list[str]) -> dict[str, DeviceCredential]:
        """The stored credentials with these ids (primary-key reads, 500 a query)."""
        out: dict[str, DeviceCredential] = {}
        c = CredentialRow.__table__.c
        with self.engine.connect() as conn:
            for i in range(0, len(token_ids), 500):
                rows = conn.execute(
                    select(c.token_id, c.hash, c.device_id).where(
                        c.token_id.in_(token_ids[i : i + 500])
                    )
                )
                for token_id, hash_, device in rows:
                    out[token_id] = DeviceCredential(token_id, hash_, device)
        return out

    def enrolled_count(self) -> int:
        with Session(self.engine) as s:
            return int(s.scalar(select(func.count()).select_from(CredentialRow)) or 0)

    def close(self) -> None:
        self.engine.dispose()
