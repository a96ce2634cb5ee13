"""Confidential endpoints through a real gateway, real TLS and real signatures on 127.0.0.1.

The remote parties are stand-ins (named so): an attestation service with its own signing key and
JWKS, and a confidential endpoint serving HTTPS with its own self-signed key and an evidence
route. Every attack is refused with the private data never sent, and the failed check named."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgecloud.supervise import ManagedProcess
from tests.gateway.ccrig import (
    CCEndpoint,
    Verifier,
    cc_endpoint,
    metric,
    private_texts,
    start_cc,
    start_verifier,
    wait_metric,
)
from tests.gateway.gwrig import Gateway, endpoint, fast_limits, launch_gateway, png_data_uri

UNATTESTED = "privacy.confidential.unattested"
FAILURES = "edgecloud_gateway_attestation_failures_total"
ATTESTED = "edgecloud_gateway_attestation_attested"


@pytest.fixture
def procs() -> Iterator[list[ManagedProcess]]:
    started: list[ManagedProcess] = []
    yield started
    for p in reversed(started):
        p.stop()


def _config(*endpoints: dict[str, Any]) -> dict[str, Any]:
    return {"endpoints": list(endpoints), "limits": fast_limits(),
            "policy": {"privacy": {"confidential": "allow"}}}


IMAGE = png_data_uri(2000)


def _ask(gw: Gateway, text: str, *, private: bool = True, image: bool = False,
         client: httpx.Client | None = None) -> httpx.Response:
    content: Any = text
    if image:
        content = [{"type": "text", "text": text},
                   {"type": "image_url", "image_url": {"url": IMAGE}}]
    headers = {"x-edgecloud-sensitivity": "private"} if private else {}
    post = client.post if client is not None else httpx.post
    return post(gw.v1 + "/chat/completions", headers=headers, timeout=60, json={
        "model": "auto", "max_tokens": 2, "messages": [{"role": "user", "content": content}]})


def test_an_attested_endpoint_takes_private_text_and_images(tmp_path: Path,
                                                            procs: list[ManagedProcess]) -> None:
    verifier = start_verifier(tmp_path, procs)
    cc = start_cc(tmp_path, procs, verifier)
    gw = launch_gateway(tmp_path, procs, _config(cc_endpoint("cloud-cc", cc.v1, verifier)))
    text = wait_metric(gw.base, ATTESTED, lambda v: v == 1, endpoint="cloud-cc")
    assert metric(text, "edgecloud_gateway_attestation_age_seconds", endpoint="cloud-cc") >= 0  # type: ignore[operator]
    r = _ask(gw, "SECRET-1 my diagnosis")
    assert r.status_code == 200, r.text
    assert r.headers["x-edgecloud-endpoint"] == "cloud-cc"
    assert r.headers["x-edgecloud-placement"] == "cloud"
    assert _ask(gw, "SECRET-2 read my screen", image=True).status_code == 200
    assert _ask(gw, "a public haiku", private=False).status_code == 200
    assert private_texts(cc.received()) == ["SECRET-1 my diagnosis", "SECRET-2 read my screen"]
    assert '"event":"attestation.ok"' in gw.wait_log("attestation.ok")


def _replay(verifier: Verifier, cc: CCEndpoint) -> None:
    # An eavesdropper's token: valid, signed, bound to the right key, for someone else's nonce.
    httpx.get(cc.base + "/attestation", params={"nonce": "00" * 32}, verify=False, timeout=10)
    cc.control(evidence="replay")


ATTACKS: dict[str, tuple[str, Callable[[Verifier, CCEndpoint], None]]] = {
    "signed_by_another_key": ("signature_invalid", lambda v, c: v.control(mode="other_key")),
    "expired": ("expired", lambda v, c: v.control(mode="expired")),
    "replayed": ("nonce_mismatch", _replay),
    "wrong_measurement": ("claim_mismatch", lambda v, c: v.control(mode="wrong_claim")),
    "bound_to_another_key": ("tls_key_mismatch", lambda v, c: c.control(evidence="other_key")),
    "verifier_keys_unreachable": ("jwks_unreachable", lambda v, c: v.control(jwks="down")),
    "evidence_route_hangs": ("evidence_timeout", lambda v, c: c.control(evidence="hang")),
}


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_attacks_are_refused_and_private_data_is_never_sent(
        attack: str, tmp_path: Path, procs: list[ManagedProcess]) -> None:
    reason, arrange = ATTACKS[attack]
    verifier = start_verifier(tmp_path, procs)
    cc = start_cc(tmp_path, procs, verifier)
    arrange(verifier, cc)
    gw = launch_gateway(tmp_path, procs, _config(cc_endpoint("cloud-cc", cc.v1, verifier,
                                                             timeout_s=1)))
    text = wait_metric(gw.base, FAILURES, lambda v: v >= 1, endpoint="cloud-cc", reason=reason)
    assert metric(text, ATTESTED, endpoint="cloud-cc") == 0
    for image in (False, True):
        r = _ask(gw, f"SECRET-{attack}", image=image)
        assert r.status_code == 503, r.text
        assert r.headers["x-edgecloud-reason"] == UNATTESTED
        assert r.json()["error"]["message"].startswith(UNATTESTED)
    assert f'"check":"{reason}"' in gw.wait_log(f'"check":"{reason}"')
    assert cc.received() == []  # nothing at all was sent to it, private or not


def test_a_man_in_the_middle_with_its_own_certificate_is_refused(
        tmp_path: Path, procs: list[ManagedProcess]) -> None:
    verifier = start_verifier(tmp_path, procs)
    real = start_cc(tmp_path, procs, verifier)
    mitm = start_cc(tmp_path, procs, None, mitm=real.base, name="standin-mitm")
    gw = launch_gateway(tmp_path, procs, _config(cc_endpoint("cloud-cc", mitm.v1, verifier)))
    wait_metric(gw.base, FAILURES, lambda v: v >= 1, endpoint="cloud-cc",
                reason="tls_key_mismatch")
    r = _ask(gw, "SECRET-mitm")
    assert r.status_code == 503 and r.headers["x-edgecloud-reason"] == UNATTESTED
    assert mitm.received() == [] and real.received() == []


@pytest.mark.slow
def test_a_key_swapped_after_attestation_is_refused_on_the_next_connection(
        tmp_path: Path, procs: list[ManagedProcess]) -> None:
    verifier = start_verifier(tmp_path, procs)
    cc = start_cc(tmp_path, procs, verifier)
    port = int(cc.base.rsplit(":", 1)[1])
    gw = launch_gateway(tmp_path, procs, _config(cc_endpoint("cloud-cc", cc.v1, verifier)))
    wait_metric(gw.base, ATTESTED, lambda v: v == 1, endpoint="cloud-cc")
    assert _ask(gw, "SECRET-before").status_code == 200
    cc.proc.stop()
    # Another server, another key, on the same address (its evidence would bind its own key).
    swapped = start_cc(tmp_path, procs, verifier, port=port, name="standin-swapped")
    swapped.control(evidence="hang")  # so the gateway cannot simply attest the new key
    text = wait_metric(gw.base, FAILURES, lambda v: v >= 1, endpoint="cloud-cc",
                       reason="tls_key_changed")
    assert metric(text, ATTESTED, endpoint="cloud-cc") == 0
    r = _ask(gw, "SECRET-after")
    assert r.status_code == 503 and r.headers["x-edgecloud-reason"] == UNATTESTED
    assert swapped.received() == []
    assert '"check":"tls_key_changed"' in gw.wait_log("tls_key_changed")


@pytest.mark.slow
def test_lapse_mid_run_moves_private_traffic_back_to_the_edge_at_once(
        tmp_path: Path, procs: list[ManagedProcess], node: str) -> None:
    verifier = start_verifier(tmp_path, procs)
    cc = start_cc(tmp_path, procs, verifier)
    gw = launch_gateway(tmp_path, procs, _config(
        endpoint("edge", "edge", node + "/v1"),
        cc_endpoint("cloud-cc", cc.v1, verifier, max_age_s=8)))
    wait_metric(gw.base, ATTESTED, lambda v: v == 1, endpoint="cloud-cc")
    r = _ask(gw, "SECRET-image-1", image=True)  # only cloud-cc reads images
    assert r.status_code == 200 and r.headers["x-edgecloud-endpoint"] == "cloud-cc"
    verifier.control(mode="wrong_claim")  # e.g. the TCB was revoked: the next renewal fails
    wait_metric(gw.base, ATTESTED, lambda v: v == 0, endpoint="cloud-cc")
    before = len(cc.received())
    r = _ask(gw, "SECRET-text-after")
    assert r.status_code == 200 and r.headers["x-edgecloud-endpoint"] == "edge"
    r = _ask(gw, "SECRET-image-after", image=True)
    assert r.status_code == 503 and r.headers["x-edgecloud-reason"] == UNATTESTED
    assert len(cc.received()) == before
    verifier.control(mode="ok")  # a good token again: trusted again
    wait_metric(gw.base, ATTESTED, lambda v: v == 1, endpoint="cloud-cc")
    assert _ask(gw, "SECRET-image-2", image=True).headers["x-edgecloud-endpoint"] == "cloud-cc"


FAULTS: dict[str, tuple[str | None, Callable[[Verifier, CCEndpoint], None]]] = {
    "ok": (None, lambda v, c: None),
    "signed_by_another_key": ("signature_invalid", lambda v, c: v.control(mode="other_key")),
    "expired": ("expired", lambda v, c: v.control(mode="expired")),
    "wrong_measurement": ("claim_mismatch", lambda v, c: v.control(mode="wrong_claim")),
    "replayed": ("nonce_mismatch", lambda v, c: c.control(evidence="replay")),
    "bound_to_another_key": ("tls_key_mismatch", lambda v, c: c.control(evidence="other_key")),
    "evidence_route_hangs": ("evidence_timeout", lambda v, c: c.control(evidence="hang")),
}


PER_PHASE = 15


@pytest.mark.slow
def test_random_requests_under_random_attestation_faults_real_processes(
        tmp_path: Path, procs: list[ManagedProcess], node: str) -> None:
    """The real-process version of the property (tests/gateway/test_confidential_policy.py has
    the large in-process one): phases of random faults, 15 random requests each; no request
    sent while a fault stood ever reaches the confidential endpoint."""
    import random

    rng = random.Random(19)
    verifier = start_verifier(tmp_path, procs)
    cc = start_cc(tmp_path, procs, verifier)
    gw = launch_gateway(tmp_path, procs, _config(
        endpoint("edge", "edge", node + "/v1"),
        cc_endpoint("cloud-cc", cc.v1, verifier, max_age_s=8, timeout_s=1)))
    wait_metric(gw.base, ATTESTED, lambda v: v == 1, endpoint="cloud-cc")
    httpx.get(cc.base + "/attestation", params={"nonce": "00" * 32}, verify=False, timeout=10)
    phases = ["ok", *rng.sample(sorted(set(FAULTS) - {"ok"}), 4), "ok"]
    rng.shuffle(phases)
    client = httpx.Client()
    forbidden: list[str] = []
    sent = 0
    for i, fault in enumerate(phases):
        reason, arrange = FAULTS[fault]
        verifier.control(mode="ok")
        cc.control(evidence="ok")
        if reason is None:
            wait_metric(gw.base, ATTESTED, lambda v: v == 1, endpoint="cloud-cc")
        else:
            text = httpx.get(gw.base + "/metrics", timeout=5).text
            seen = metric(text, FAILURES, endpoint="cloud-cc", reason=reason) or 0
            arrange(verifier, cc)
            text = wait_metric(gw.base, FAILURES, lambda v, s=seen: v > s, endpoint="cloud-cc",
                               reason=reason)
            assert metric(text, ATTESTED, endpoint="cloud-cc") == 0, fault
        for j in range(PER_PHASE):
            kind = rng.choice(["header", "pii", "image", "public"])
            marker = f"SECRET-{i}-{j}-{kind}"
            text_in = f"{marker} mail me at a.b@example.org" if kind == "pii" else marker
            r = _ask(gw, text_in, private=kind == "header", image=kind == "image", client=client)
            sent += 1
            if reason is not None:
                forbidden.append(marker)
                if kind == "image":
                    assert r.status_code == 503 and r.headers["x-edgecloud-reason"] == UNATTESTED
                else:
                    assert r.status_code == 200 and r.headers["x-edgecloud-endpoint"] == "edge"
            else:
                assert r.status_code == 200, r.text
    reached = {t.split(" ")[0] for t in private_texts(cc.received())}
    client.close()
    assert sent == PER_PHASE * len(phases) and forbidden
    assert not reached & set(forbidden)
    assert reached  # private requests did use the endpoint while it was attested
