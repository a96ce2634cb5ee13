"""The fleet server's HTTP edges: ranges, path safety, report validation, enrolment and
per-device credentials, the operator token, rate limits, and the refusals at start."""

from __future__ import annotations

import datetime
import ipaddress
import os
import sqlite3
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edgecloud.fleet.repository import ModelRepository
from edgecloud.supervise import ManagedProcess, edgecloud_command, free_port
from tests.fleet.conftest import OPERATOR, OPERATOR_AUTH

ENV = {"EDGECLOUD_FLEET_TOKEN": OPERATOR}


def _repo(tmp_path: Path) -> tuple[Path, str, bytes]:
    repo = ModelRepository.init(tmp_path / "repo")
    model = tmp_path / "m.gguf"
    model.write_bytes(bytes(range(256)) * 40)
    rel = repo.add_model(model, "m", "1.0.0", stable=True)
    return (
        tmp_path / "repo",
        f"/tuf/targets/models/m/1.0.0/{rel.sha256}.m-1.0.0.gguf",
        model.read_bytes(),
    )


def _serve(
    tmp_path: Path, repo: Path, *args: str, env: dict[str, str] | None = None, scheme: str = "http"
) -> tuple[ManagedProcess, str]:
    port = free_port()
    url = f"{scheme}://127.0.0.1:{port}"
    proc = ManagedProcess(
        edgecloud_command("fleet", "serve", "--repo", str(repo), "--port", str(port), *args),
        f"http://127.0.0.1:{port}/readyz" if scheme == "http" else None,
        env=ENV if env is None else env,
        log_path=str(tmp_path / f"server-{port}.log"),
    )
    return proc, url


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, str, bytes, Path]]:
    repo, target, body = _repo(tmp_path)
    proc, url = _serve(
        tmp_path, repo, "--report-rate", "0.01", "--report-burst", "3", "--max-devices", "3"
    )
    with proc:
        yield url, target, body, repo


def _enrol(c: httpx.Client, token: str, device_id: str) -> httpx.Response:
    return c.post(
        "/v1/devices/enrol",
        json={"device_id": device_id},
        headers={"authorization": f"Bearer {token}"},
    )


def _token(c: httpx.Client, **body: object) -> str:
    r = c.post("/v1/fleet/enrolment-tokens", json=body, headers=OPERATOR_AUTH)
    assert r.status_code == 201, r.text
    return str(r.json()["token"])


def test_ranges_and_path_safety(served: tuple[str, str, bytes, Path]) -> None:
    url, target, body, _ = served
    with httpx.Client(base_url=url, timeout=10) as c:
        assert c.get(target).content == body
        r = c.get(target, headers={"range": "bytes=10000-"})
        assert r.status_code == 206 and r.content == body[10000:]
        assert r.headers["content-range"] == "bytes 10000-10239/10240"
        assert c.get(target, headers={"range": "bytes=99999-"}).status_code == 416
        inverted = c.get(target, headers={"range": "bytes=500-100"})
        assert inverted.status_code == 416
        assert inverted.headers["content-range"] == "bytes */10240"
        assert c.get(target).status_code == 200  # the server is fine after it
        assert c.get("/tuf/targets/../keys/x.pem").status_code == 404
        assert c.get("/tuf/metadata/..%2Fkeys").status_code == 404
        assert c.get("/tuf/metadata/1.root.json").status_code == 200
        assert c.get("/tuf/metadata/2.root.json").status_code == 404


def test_enrolment_binds_a_credential_to_one_device(
    served: tuple[str, str, bytes, Path],
) -> None:
    url, _, _, repo = served
    report = {"device_id": "d1", "model": "m", "version": "1.0.0"}
    with httpx.Client(base_url=url, timeout=10) as c:
        # no credential, a made-up one, or the operator's: refused
        assert c.post("/v1/devices/report", json=report).status_code == 401
        fake = {"authorization": "Bearer dev_0123456789abcdef.not-a-secret"}
        assert c.post("/v1/devices/report", json=report, headers=fake).status_code == 401
        assert c.post("/v1/devices/report", json=report, headers=OPERATOR_AUTH).status_code == 401
        # enrolment tokens come from the operator only
        assert c.post("/v1/fleet/enrolment-tokens", json={}).status_code == 401
        bound = _token(c, device_id="d1")
        assert _enrol(c, bound, "d2").json()["error"]["code"] == "device_mismatch"
        enrolled = _enrol(c, bound, "d1")
        assert enrolled.status_code == 200
        cred = enrolled.json()["credential"]
        assert _enrol(c, bound, "d1").status_code == 401  # a one-use token is spent
        auth = {"authorization": f"Bearer {cred}"}
        assert c.post("/v1/devices/report", json=report, headers=auth).status_code == 204
        # the credential is d1's: it cannot speak for another device
        other = c.post("/v1/devices/report", json={**report, "device_id": "d9"}, headers=auth)
        assert other.status_code == 403 and other.json()["error"]["code"] == "device_mismatch"
        bad = c.post("/v1/devices/report", json={"device_id": ""}, headers=auth)
        assert bad.status_code == 422 and "device_id" in bad.json()["error"]["message"]
        # a report burst beyond the device's allowance gets 429 with Retry-After
        limited = c.post("/v1/devices/report", json=report, headers=auth)
        assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
        # an open token enrols new ids only (no take-over of d1), and at most --max-devices
        open_token = _token(c, uses=5)
        taken = _enrol(c, open_token, "d1")
        assert (
            taken.status_code == 409 and taken.json()["error"]["code"] == "device_already_enrolled"
        )
        assert _enrol(c, open_token, "d2").status_code == 200
        assert _enrol(c, open_token, "d3").status_code == 200
        full = _enrol(c, open_token, "d4")
        assert full.status_code == 403 and full.json()["error"]["code"] == "fleet_full"
        # status and metrics: the operator's
        assert c.get("/v1/fleet/status").status_code == 401
        assert c.get("/metrics").status_code == 401
        status = c.get("/v1/fleet/status", headers=OPERATOR_AUTH).json()
        assert status["devices"][0]["device_id"] == "d1"
        assert status["releases"][0]["stage"] == "stable"
        assert c.get("/metrics", headers=OPERATOR_AUTH).status_code == 200
        out = subprocess.run(
            edgecloud_command("fleet", "status", "--server", url),
            env={**os.environ, **ENV},
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.returncode == 0 and "d1" in out.stdout and "stable" in out.stdout
    # tokens and credentials are stored as hashes only
    with sqlite3.connect(repo / "fleet.db") as db:
        stored = repr(db.execute("SELECT * FROM fleet_device_credentials").fetchall())
        stored += repr(db.execute("SELECT * FROM fleet_enrolment_tokens").fetchall())
    assert cred.split(".", 1)[1] not in stored and bound.split(".", 1)[1] not in stored
    assert OPERATOR not in stored


def _run_serve(repo: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    cmd = edgecloud_command("fleet", "serve", "--repo", str(repo), "--port", str(free_port()))
    clean = {k: v for k, v in os.environ.items() if k != "EDGECLOUD_FLEET_TOKEN"}
    return subprocess.run(
        [*cmd, *args], env={**clean, **env}, capture_output=True, text=True, timeout=60
    )


def test_unsafe_starts_are_refused(tmp_path: Path) -> None:
    repo, _, _ = _repo(tmp_path)
    no_token = _run_serve(repo, env={})
    assert no_token.returncode == 1 and "--insecure-dev" in no_token.stderr
    short = _run_serve(repo, env={"EDGECLOUD_FLEET_TOKEN": "short"})
    assert short.returncode == 1 and "at least 16" in short.stderr
    # a non-loopback address (TEST-NET-1, never bound here) without a certificate
    remote = _run_serve(repo, "--host", "192.0.2.1", env=ENV)
    assert remote.returncode == 1 and "--tls-cert" in remote.stderr
    half = _run_serve(repo, "--tls-cert", str(repo / "x.pem"), env=ENV)
    assert half.returncode == 1 and "both" in half.stderr


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fleet.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "fleet.pem", tmp_path / "fleet-key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


def test_https_with_a_certificate_and_an_enrolled_agent(tmp_path: Path) -> None:
    from tests.fleet.conftest import wait_for

    repo, _, _ = _repo(tmp_path)
    cert, key = _self_signed(tmp_path)
    proc, url = _serve(
        tmp_path, repo, "--tls-cert", str(cert), "--tls-key", str(key), scheme="https"
    )
    trust = ssl.create_default_context(cafile=str(cert))
    with proc, httpx.Client(base_url=url, timeout=10, verify=trust) as c:
        wait_for(lambda: _healthy(c), what="https server ready")
        with pytest.raises(httpx.HTTPError):  # plain http to the https port
            httpx.get(url.replace("https", "http") + "/healthz", timeout=5)
        token = _token(c, device_id="box-tls")
        out = subprocess.run(
            edgecloud_command(
                "agent",
                "--server",
                url,
                "--ca-file",
                str(cert),
                "--models-dir",
                str(tmp_path / "models"),
                "--node",
                "http://127.0.0.1:9",
                "--model",
                "m",
                "--root",
                str(repo / "metadata" / "1.root.json"),
                "--device-id",
                "box-tls",
                "--once",
            ),
            env={**os.environ, "EDGECLOUD_ENROL_TOKEN": token},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr[-2000:]
        assert '"event":"agent.enrolled"' in out.stderr
        devices = c.get("/v1/fleet/status", headers=OPERATOR_AUTH).json()["devices"]
        assert [d["device_id"] for d in devices] == ["box-tls"]
        assert devices[0]["status"] == "node_unreachable"  # no node here: reported, not fatal


def _healthy(c: httpx.Client) -> bool:
    try:
        return c.get("/healthz").status_code == 200
    except httpx.HTTPError:
        return False


def test_an_agent_refuses_plain_http_to_another_machine(tmp_path: Path) -> None:
    out = subprocess.run(
        edgecloud_command(
            "agent",
            "--server",
            "http://192.0.2.1:8700",
            "--models-dir",
            str(tmp_path / "m"),
            "--node",
            "http://127.0.0.1:9",
            "--model",
            "m",
            "--once",
        ),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1 and "https" in out.stderr
