"""Fleet state in SQL (SQLAlchemy): devices' last reports and an event log.

SQLite by default; any SQLAlchemy URL (PostgreSQL for larger fleets). Reports arrive at up to
thousands per second, so the server keeps the latest report per device in memory and writes
them in batches; this module only does the batched writes and the initial load.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import (
    Float,
    Integer,
    String,
    Text,
    create_engine,
    delete,
    insert,
    select,
    update,
)
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from edgecloud.fleet.credentials import DeviceCredential, EnrolmentToken
from edgecloud.fleet.errors import FleetError
from edgecloud.fleet.rollout import DeviceReading, ModelRelease, told_to_install


class Base(DeclarativeBase):
    pass


class DeviceRow(Base):
    __tablename__ = "fleet_devices"

    device_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    report: Mapped[str] = mapped_column(Text)  # the last DeviceReport as JSON
    updated_at: Mapped[float] = mapped_column(Float, index=True)


class EventRow(Base):
    __tablename__ = "fleet_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(String(128), index=True)
    at: Mapped[float] = mapped_column(Float)
    kind: Mapped[str] = mapped_column(String(32))
    version: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(Text)


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


def readings_for(
    reports: Iterable[DeviceReport], release: ModelRelease
) -> tuple[list[DeviceReading], int]:
    """Gate readings for a staged release, and the number of devices in its current stage.

    Only devices of the model that the current stage told to install the version count
    (running it, or reporting it failed): a device outside the cohort cannot abort, or
    promote, a rollout by claiming a failure or good numbers.
    """
    out = []
    stage = 0
    model, version = release.model, release.version
    for r in reports:
        if r.model != model or not told_to_install(r.device_id, release):
            continue
        stage += 1
        if version in r.failed_versions:
            out.append(DeviceReading(r.device_id, version, failed=True))
        elif r.version == version:
            m = r.metrics
            out.append(DeviceReading(r.device_id, version, m.error_rate, m.p95_ms, m.eval_score))
    return out, stage


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


class _NotEnrolled(Exception):
    """Rolls back an enrolment transaction."""


class FleetStore:
    """Batched writes of device reports and events to any SQLAlchemy database."""

    def __init__(self, url: str | URL) -> None:
        parsed = database_url(url)
        kwargs: dict[str, Any] = {}
        if parsed.get_backend_name() == "sqlite":
            kwargs["connect_args"] = {"check_same_thread": False}
        else:
            kwargs["pool_pre_ping"] = True  # survive a database restart between batches
        self.engine = create_engine(parsed, **kwargs)
        Base.metadata.create_all(self.engine)

    def load_reports(self) -> dict[str, DeviceReport]:
        with Session(self.engine) as s:
            rows = s.scalars(select(DeviceRow)).all()
            return {r.device_id: DeviceReport.model_validate_json(r.report) for r in rows}

    def save(self, reports: Iterable[DeviceReport]) -> None:
        """Replace the latest report of each device and append their events, in one transaction.

        Delete + bulk insert (executemany) instead of per-row merges: one round trip per batch
        on any database, which matters at thousands of reports per second.
        """
        batch = list(reports)
        if not batch:
            return
        rows = [
            {
                "device_id": r.device_id,
                "updated_at": r.received_at,
                "report": r.model_copy(update={"events": []}).model_dump_json(),
            }
            for r in batch
        ]
        events = [
            {
                "device_id": r.device_id,
                "at": ev.at or r.received_at,
                "kind": ev.kind,
                "version": ev.version,
                "reason": ev.reason,
            }
            for r in batch
            for ev in r.events
        ]
        with Session(self.engine) as s, s.begin():
            ids = [r["device_id"] for r in rows]
            for i in range(0, len(ids), 500):
                s.execute(delete(DeviceRow).where(DeviceRow.device_id.in_(ids[i : i + 500])))
            s.execute(insert(DeviceRow), rows)
            if events:
                s.execute(insert(EventRow), events)

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

    def enrol(self, token_id: str, credential: DeviceCredential, replace: bool) -> bool:
        """Spend one use of the enrolment token and store the device's credential, in one
        transaction. False when the token has no use left (a concurrent enrolment took it)
        or the device is enrolled already and `replace` is off."""
        try:
            with Session(self.engine) as s, s.begin():
                spent = s.execute(
                    update(EnrolmentRow)
                    .where(EnrolmentRow.token_id == token_id, EnrolmentRow.uses_left > 0)
                    .values(uses_left=EnrolmentRow.uses_left - 1)
                )
                if spent.rowcount != 1:  # type: ignore[attr-defined]
                    raise _NotEnrolled
                device = credential.device_id
                known = select(CredentialRow).where(CredentialRow.device_id == device)
                if s.scalars(known).first() is not None:
                    if not replace:
                        raise _NotEnrolled
                    s.execute(delete(CredentialRow).where(CredentialRow.device_id == device))
                s.add(
                    CredentialRow(
                        token_id=credential.token_id,
                        hash=credential.hash,
                        device_id=device,
                        created_at=time.time(),
                    )
                )
        except _NotEnrolled:  # rolled back: the use is not spent
            return False
        return True

    def credentials(self) -> list[DeviceCredential]:
        with Session(self.engine) as s:
            rows = s.scalars(select(CredentialRow)).all()
            return [DeviceCredential(r.token_id, r.hash, r.device_id) for r in rows]

    def close(self) -> None:
        self.engine.dispose()
