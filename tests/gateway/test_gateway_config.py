"""Configuration errors name the field and the line; auth, model allow-list and TLS work."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgecloud.gateway.config import parse_config
from edgecloud.gateway.errors import ConfigError
from edgecloud.supervise import ManagedProcess, edgecloud_command
from tests.gateway.gwrig import endpoint, launch_gateway, launch_standin

GOOD = """\
endpoints:
  - name: edge-local
    tier: edge
    url: http://127.0.0.1:8081/v1
    capabilities: [text]
  - name: cloud-eu
    tier: cloud
    url: https://example.invalid/v1
    api_key_env: CLOUD_API_KEY
    region: eu-central-1
    capabilities: [text, vision]
    price: {input_per_mtok: 0.5, output_per_mtok: 1.5}
policy:
  residency: {eu: [eu-central-1, device]}
  privacy: {detect: [email, phone, id_card, bank_card, ip, secret], action: edge_only,
            images: edge_only}
  offload: {edge_queue_above: 2}
"""


def test_the_design_example_is_valid() -> None:
    cfg = parse_config(GOOD)
    assert [e.name for e in cfg.endpoints] == ["edge-local", "cloud-eu"]
    assert cfg.policy.residency == {"eu": ["eu-central-1", "device"]}


@pytest.mark.parametrize(("old", "new", "where"), [
    ("    tier: cloud\n", "    tier: sky\n", "x.yaml:7: endpoints.1.tier"),
    ("url: https://example.invalid/v1", "url: example.invalid", "x.yaml:8: endpoints.1.url"),
    ("images: edge_only", "images: sometimes", "x.yaml:16: policy.privacy.images"),
    ("edge_queue_above: 2", "edge_queue_above: -1", "x.yaml:17: policy.offload.edge_queue_above"),
    ("    capabilities: [text]\n", "    capabilities: [text]\n    colour: red\n",
     "x.yaml:6: endpoints.0.colour"),
    ("name: cloud-eu", "name: edge-local", "endpoints: endpoint names must be unique"),
    ("detect: [email,", "detect: [emails,", "x.yaml:15: policy.privacy.detect.0"),
])
def test_bad_config_names_field_and_line(old: str, new: str, where: str) -> None:
    assert old in GOOD
    with pytest.raises(ConfigError) as exc:
        parse_config(GOOD.replace(old, new), "x.yaml")
    assert where in str(exc.value), str(exc.value)


def test_yaml_syntax_error_and_bad_regex() -> None:
    with pytest.raises(ConfigError, match=r"x.yaml:3: not valid YAML"):
        parse_config("endpoints:\n  - {name: a, tier: edge\n", "x.yaml")
    bad = GOOD + "  extra: 1\n"
    with pytest.raises(ConfigError, match="policy.extra"):
        parse_config(bad, "x.yaml")
    with pytest.raises(ConfigError, match="not a valid regular expression"):
        parse_config(GOOD.replace("images: edge_only}", "images: edge_only,\n"
                                  "            patterns: {emp: '(unclosed'}}"), "x.yaml")


def test_cli_check_reports_the_line_and_exits_2(tmp_path: Path) -> None:
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(GOOD.replace("    tier: cloud\n", "    tier: sky\n"), encoding="utf-8")
    out = subprocess.run(edgecloud_command("gateway", "--config", str(cfg), "--check"),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "gw.yaml:7: endpoints.1.tier" in " ".join(out.stderr.split())
    cfg.write_text(GOOD, encoding="utf-8")
    out = subprocess.run(edgecloud_command("gateway", "--config", str(cfg), "--check"),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


def _sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def test_api_keys_allow_list_and_upstream_key(tmp_path: Path) -> None:
    started: list[ManagedProcess] = []
    try:
        edge = launch_standin(tmp_path, started, "edge", "edge-model")
        eu = launch_standin(tmp_path, started, "cloud-eu", "eu-model")
        us = launch_standin(tmp_path, started, "cloud-us", "us-model")
        cfg: dict[str, Any] = {
            "endpoints": [
                endpoint("edge", "edge", edge.v1),
                endpoint("cloud-eu", "cloud", eu.v1, region="eu-central-1",
                         api_key_env="TEST_CLOUD_KEY"),
                endpoint("cloud-us", "cloud", us.v1, region="us-east-1"),
            ],
            "policy": {"residency": {"eu": ["eu-central-1", "device"]}},
            "models": {"allow": ["autoglm-phone-9b", "gpt-4o-mini"],
                       "aliases": {"gpt-4o": "gpt-4o-mini"}},
            "auth": {"keys": [
                {"name": "eu-app", "sha256": _sha("key-eu"), "region": "eu"},
                {"name": "vault", "sha256": _sha("key-private"), "sensitivity": "private"},
            ]},
        }
        gw = launch_gateway(tmp_path, started, cfg, env={"TEST_CLOUD_KEY": "upstream-secret"})
        msg = {"messages": [{"role": "user", "content": "hi"}]}
        with httpx.Client(base_url=gw.base, timeout=30) as c:
            r = c.post("/v1/chat/completions", json={"model": "gpt-4o-mini", **msg})
            assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
            r = c.post("/v1/chat/completions", json={"model": "gpt-4o-mini", **msg},
                       headers={"authorization": "Bearer wrong"})
            assert r.status_code == 401
            assert c.get("/v1/models").status_code == 401
            eu_key = {"authorization": "Bearer key-eu", "x-edgecloud-placement": "cloud"}
            ids = [m["id"] for m in c.get("/v1/models", headers=eu_key).json()["data"]]
            assert ids == ["autoglm-phone-9b", "gpt-4o", "gpt-4o-mini"]
            r = c.post("/v1/chat/completions", json={"model": "llama-3", **msg}, headers=eu_key)
            assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
            # The key's region default (eu) keeps it off cloud-us; the upstream gets its own key.
            for _ in range(3):
                r = c.post("/v1/chat/completions", json={"model": "gpt-4o", **msg},
                           headers=eu_key)
                assert r.headers["x-edgecloud-endpoint"] == "cloud-eu"
            assert us.received() == []
            assert {x["authorization"] for x in eu.received()} == {"Bearer upstream-secret"}
            # A key with a private default cannot be lifted by a header.
            r = c.post("/v1/chat/completions", json={"model": "gpt-4o", **msg},
                       headers={"authorization": "Bearer key-private",
                                "x-edgecloud-sensitivity": "public",
                                "x-edgecloud-placement": "cloud"})
            assert r.headers["x-edgecloud-reason"] == "privacy.key"
            assert r.headers["x-edgecloud-placement"] == "edge"
        log = gw.wait_log('"key":"vault"')
        assert "key-eu" not in log and "upstream-secret" not in log and '"key":"eu-app"' in log
    finally:
        for p in reversed(started):
            p.stop()


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    from edgecloud.testing.tlskeys import write_self_signed

    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    write_self_signed(key_path, cert_path)
    return cert_path, key_path


def test_tls(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    started: list[ManagedProcess] = []
    try:
        edge = launch_standin(tmp_path, started, "edge", "edge-model")
        gw = launch_gateway(tmp_path, started, {"endpoints": [endpoint("edge", "edge", edge.v1)]},
                            "--tls-cert", str(cert), "--tls-key", str(key), scheme="https")
        import ssl

        ctx = ssl.create_default_context(cafile=str(cert))
        with httpx.Client(base_url=gw.base, timeout=30, verify=ctx) as c:
            r = c.post("/v1/chat/completions",
                       json={"model": "m", "messages": [{"role": "user", "content": "hi"}]})
            assert r.status_code == 200 and r.headers["x-edgecloud-endpoint"] == "edge"
        with pytest.raises(httpx.HTTPError):
            httpx.get(gw.base.replace("https", "http") + "/healthz", timeout=5)
    finally:
        for p in reversed(started):
            p.stop()


def test_an_upstream_that_hangs_times_out_and_falls_back(tmp_path: Path) -> None:
    started: list[ManagedProcess] = []
    try:
        edge = launch_standin(tmp_path, started, "edge", "edge-model")
        cloud = launch_standin(tmp_path, started, "cloud", "cloud-model")
        cfg = {"endpoints": [endpoint("edge", "edge", edge.v1, timeout_s=0.5),
                             endpoint("cloud", "cloud", cloud.v1)]}
        gw = launch_gateway(tmp_path, started, cfg)
        edge.control(hang_s=3)
        with httpx.Client(base_url=gw.base, timeout=30) as c:
            r = c.post("/v1/chat/completions",
                       json={"model": "m", "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 200
        assert r.headers["x-edgecloud-endpoint"] == "cloud"
        assert r.headers["x-edgecloud-reason"] == "fallback"
    finally:
        for p in reversed(started):
            p.stop()


@pytest.mark.parametrize("path", sorted(
    (Path(__file__).resolve().parents[2] / "examples").glob("gateway*.yaml")), ids=str)
def test_examples_are_valid(path: Path) -> None:
    from edgecloud.gateway.config import load_config

    assert load_config(path).endpoints


def test_sigterm_drains_and_exits_0(tmp_path: Path) -> None:
    started: list[ManagedProcess] = []
    try:
        edge = launch_standin(tmp_path, started, "edge", "edge-model")
        gw = launch_gateway(tmp_path, started, {"endpoints": [endpoint("edge", "edge", edge.v1)]})
        httpx.post(gw.v1 + "/chat/completions", timeout=30,
                   json={"model": "m", "messages": [{"role": "user", "content": "hi"}]})
        assert gw.proc.stop() == 0
        assert '"event":"gateway.stopped"' in gw.log_path.read_text(encoding="utf-8")
    finally:
        for p in reversed(started):
            p.stop()
