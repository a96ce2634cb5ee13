"""The agent under faults: a link that drops, garbles or trickles, a node busy with a swap, a
node that serves something else, a version that failed. Each is a refused or failed poll that
is reported; the agent process keeps running and the node keeps a verified model."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import httpx
import pytest
from tuf.api import exceptions as tuf_exc

from edgecloud.fleet.fetcher import HttpxFetcher
from edgecloud.fleet.transport import TransferLimits, agent_client
from edgecloud.testing.faulty_link import FaultyLink
from tests.fleet.conftest import TOKEN, Device, Rig, wait_for
from tests.fleet.standin_node import dummy_model

ADMIN = {"authorization": f"Bearer {TOKEN}"}
FAST = ("--max-backoff", "0.5")


def _log_events(d: Device) -> list[dict[str, object]]:
    lines = (d.dir / "agent.log").read_text().splitlines()
    return [json.loads(line) for line in lines if line.startswith('{"ts"')]


def _count(d: Device, event: str, reason: str = "") -> int:
    """Log lines of `event` (whose reason starts with `reason`)."""
    return sum(
        1
        for e in _log_events(d)
        if e.get("event") == event and str(e.get("reason", "")).startswith(reason)
    )


def test_the_fetcher_turns_every_link_fault_into_a_tuf_download_error(rig: Rig) -> None:
    url = "/tuf/metadata/1.root.json"
    limits = TransferLimits(deadline_s=30, min_bps=2000, window_s=0.5)
    with FaultyLink(rig.port) as link, agent_client(limits) as client:
        fetcher = HttpxFetcher(client, limits)
        assert b"signed" in fetcher.download_bytes(link.url + url, 1 << 20)
        for mode, after in (("drop", 0), ("drop", 300), ("garble", 0), ("garble", 300)):
            link.set(mode, after=after)  # type: ignore[arg-type]
            with pytest.raises(tuf_exc.DownloadError):
                fetcher.download_bytes(link.url + url, 1 << 20)
        link.set("trickle", after=300, trickle_s=0.01)  # in the body
        with pytest.raises(tuf_exc.SlowRetrievalError):
            fetcher.download_bytes(link.url + url, 1 << 20)
        link.set("trickle", trickle_s=0.01)  # in the headers of a 404
        with pytest.raises(tuf_exc.SlowRetrievalError):
            fetcher.download_bytes(link.url + "/tuf/metadata/9.root.json", 1 << 20)


def test_a_dropped_or_garbled_link_is_a_failed_poll_and_the_agent_keeps_polling(
    rig: Rig,
) -> None:
    d = rig.device("dev-a")
    d.run_once()
    rig.publish("1.1.0", data=dummy_model("1.1.0", size=300_000), stable=True)
    with FaultyLink(rig.port) as link:
        d.server_url = link.url
        link.set("drop")
        agent = d.start_agent(0.2, *FAST)
        # metadata and reports cut at every point: before the answer, in its headers, its body
        for mode, after in (("drop", 0), ("drop", 120), ("drop", 400), ("garble", 0)):
            link.set(mode, after=after)  # type: ignore[arg-type]
            target = _count(d, "agent.backoff") + 2
            wait_for(
                lambda n=target: _count(d, "agent.backoff") >= n,  # type: ignore[misc]
                what=f"failed polls under {mode} after {after} bytes",
            )
            assert agent.alive()
        assert _count(d, "agent.refused", "metadata_download_failed") >= 1
        # a model download cut in the middle: kept, and resumed on a later poll
        link.set("drop", match=b"GET /tuf/targets/", after=100_000)
        wait_for(lambda: _count(d, "agent.refused", "download_failed"), what="cut download")
        assert agent.alive()
        assert d.active_version() == "1.0.0"
        link.set("pass")
        wait_for(lambda: d.active_version() == "1.1.0", what="the update after the fault")
        assert agent.alive()
    reasons = " ".join(e["reason"] for e in wait_for(lambda: rig.events(d.id, "refused")))
    assert "metadata_download_failed" in reasons and "download_failed" in reasons


def test_a_trickling_link_is_cut_and_the_download_resumes_later(rig: Rig) -> None:
    d = rig.device("dev-a")
    d.run_once()
    rig.publish("1.1.0", data=dummy_model("1.1.0", size=200_000), stable=True)
    limits = ("--min-rate", "2000", "--rate-window", "1")
    with FaultyLink(rig.port) as link:
        d.server_url = link.url
        link.set("trickle", trickle_s=0.02)  # every answer at 50 bytes/s
        agent = d.start_agent(0.2, *FAST, *limits)
        wait_for(
            lambda: _count(d, "agent.refused", "metadata_download_too_slow"),
            timeout_s=60,
            what="metadata trickle cut",
        )
        link.set("trickle", match=b"GET /tuf/targets/", after=60_000, trickle_s=0.02)
        wait_for(
            lambda: _count(d, "agent.refused", "download_too_slow"),
            timeout_s=60,
            what="model trickle cut",
        )
        assert agent.alive() and d.active_version() == "1.0.0"
        link.set("pass")
        wait_for(lambda: d.active_version() == "1.1.0", what="the update after the trickle")
    assert _count(d, "download.resume") >= 1


def test_a_node_busy_with_a_swap_is_asked_again(rig: Rig) -> None:
    d = rig.device("dev-a")
    d.run_once()
    rig.publish("1.1.0", stable=True)
    r = httpx.post(f"{d.node_url}/test/busy", json={"seconds": 8}, timeout=5)
    assert r.status_code == 200
    d.run_once()
    assert _count(d, "agent.node_busy_retry") >= 1
    assert d.active_version() == "1.1.0"
    assert d.state()["failed_versions"] == []
    assert d.node_model()["version"] == "1.1.0"


def test_a_version_that_failed_is_never_taken_again_until_a_newer_one(rig: Rig) -> None:
    d = rig.device("dev-a")
    d.run_once()
    rig.publish("1.1.0", data=b"not a model at all" * 100, stable=True)
    d.run_once()
    assert d.active_version() == "1.0.0" and d.state()["failed_versions"] == ["1.1.0"]
    updates = _count(d, "agent.update")
    for _ in range(2):  # new agent processes: the failure is remembered on disk
        d.run_once()
    assert _count(d, "agent.update") == updates
    assert d.active_version() == "1.0.0"
    wait_for(lambda: rig.events(d.id, "rolled_back"), what="rolled_back event")
    assert len(rig.events(d.id, "rolled_back")) == 1
    rig.publish("1.2.0", stable=True)
    d.run_once()
    assert d.active_version() == "1.2.0"
    assert d.node_model()["version"] == "1.2.0"


def test_the_committed_slot_is_restored_when_the_node_serves_something_else(rig: Rig) -> None:
    d = rig.device("dev-a")
    d.run_once()
    verified = hashlib.sha256(rig.files["1.0.0"]).hexdigest()
    # someone swaps in another file under the same label
    factory = d.dir / "factory.gguf"
    r = httpx.post(
        f"{d.node_url}/admin/model",
        json={"path": str(factory), "version": "1.0.0"},
        headers=ADMIN,
        timeout=10,
    )
    assert r.status_code == 200 and d.node_model()["sha256"] != verified
    d.run_once()
    assert d.node_model()["sha256"] == verified
    assert Path(d.node_model()["path"]) == d.models / "slot-a" / "model.gguf"
    ev = wait_for(lambda: rig.events(d.id, "restored"), what="restored event")
    assert "slot a" in ev[0]["reason"]
