"""The agent's disk: two model slots (A/B) and a crash-safe state file.

The active slot is never written while active; a new version goes to the other slot and only
becomes active after the node took it and passed its checks. The state file is replaced with
write + fsync + rename, so after a crash it is either the old or the new state, never half.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from edgecloud.fleet.state import DeviceEvent

SlotName = Literal["a", "b"]
MAX_EVENTS = 64
# Activations of one version cut short this many times (the node crashed or restarted while
# loading it, or the box lost power) mark the version failed: it is never tried again.
MAX_INTERRUPTED = 2


class SlotInfo(BaseModel):
    """A verified model file in a slot."""

    version: str
    sha256: str
    size: int


class Pending(BaseModel):
    """An activation in progress (the node may be swapping to it)."""

    version: str
    slot: SlotName
    interrupted: bool = False  # counted once in AgentState.interrupted


class AgentState(BaseModel):
    device_id: str
    active: SlotName | None = None
    slots: dict[str, SlotInfo] = Field(default_factory=dict)
    pending: Pending | None = None
    failed_versions: list[str] = Field(default_factory=list)
    events: list[DeviceEvent] = Field(default_factory=list)  # not yet reported
    event_stream: str = Field(default_factory=lambda: uuid.uuid4().hex)
    next_event_seq: int = 1
    interrupted: dict[str, int] = Field(default_factory=dict)  # version -> cut-short activations

    @property
    def active_info(self) -> SlotInfo | None:
        return self.slots.get(self.active) if self.active else None

    @property
    def inactive(self) -> SlotName:
        return "b" if self.active == "a" else "a"

    def slot_with(self, version: str) -> SlotName | None:
        for name in ("a", "b"):
            info = self.slots.get(name)
            if info is not None and info.version == version:
                return name  # type: ignore[return-value]
        return None

    def add_event(self, event: DeviceEvent) -> None:
        """Keep an event for the next report, numbered (the server drops a resent one)."""
        event.seq = self.next_event_seq
        self.next_event_seq += 1
        self.events = [*self.events, event][-MAX_EVENTS:]


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class SlotStore:
    """Paths and the state file under the agent's models folder."""

    def __init__(self, models_dir: str | Path) -> None:
        self.root = Path(models_dir)
        self.root.mkdir(parents=True, exist_ok=True)
        for name in ("a", "b"):
            (self.root / f"slot-{name}").mkdir(exist_ok=True)
        self.state_file = self.root / "agent-state.json"
        self.credential_file = self.root / "device-credential.json"
        self.tuf_dir = self.root / ".tuf"
        self.tuf_dir.mkdir(exist_ok=True)

    def model_path(self, slot: str) -> Path:
        return self.root / f"slot-{slot}" / "model.gguf"

    def part_path(self, slot: str, sha256: str) -> Path:
        return self.root / f"slot-{slot}" / f".incoming-{sha256[:16]}.part"

    def load(self, device_id: str | None = None) -> AgentState:
        if self.state_file.exists():
            state = AgentState.model_validate_json(self.state_file.read_bytes())
            if device_id and device_id != state.device_id:
                state.device_id = device_id
            return state
        return AgentState(device_id=device_id or f"dev-{uuid.uuid4().hex[:12]}")

    def save(self, state: AgentState) -> None:
        tmp = self.state_file.with_name(".agent-state.json.tmp")
        with open(tmp, "wb") as f:
            f.write(state.model_dump_json(indent=1).encode())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.state_file)
        fsync_dir(self.root)

    def load_credential(self, device_id: str) -> str | None:
        """This device's fleet credential, or None before enrolment (or for another id)."""
        try:
            data = json.loads(self.credential_file.read_bytes())
        except (FileNotFoundError, ValueError):
            return None
        if not isinstance(data, dict) or data.get("device_id") != device_id:
            return None
        cred = data.get("credential")
        return cred if isinstance(cred, str) else None

    def save_credential(self, device_id: str, credential: str) -> None:
        """Keep the credential readable by this user only (write, fsync, rename)."""
        tmp = self.credential_file.with_name(".device-credential.json.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(json.dumps({"device_id": device_id, "credential": credential}).encode())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.credential_file)
        fsync_dir(self.root)

    def install(self, part: Path, slot: str) -> Path:
        """Move a verified download into its slot (atomic rename, then fsync the folder)."""
        dest = self.model_path(slot)
        with open(part, "rb") as f:
            os.fsync(f.fileno())
        os.replace(part, dest)
        fsync_dir(dest.parent)
        return dest

    def clean_partials(self, keep: Path | None) -> None:
        for slot in ("a", "b"):
            for p in (self.root / f"slot-{slot}").glob(".incoming-*.part"):
                if p != keep:
                    p.unlink(missing_ok=True)
