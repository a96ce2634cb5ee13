"""The `confidential` block of an endpoint and `policy.privacy.confidential`: validated on load,
errors name the field and the line; `edgecloud gateway --check` reports and refuses."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from edgecloud.gateway.config import parse_config
from edgecloud.gateway.errors import ConfigError
from edgecloud.supervise import edgecloud_command
from edgecloud.testing.standin_attestation import jwks_of, make_signer

BLOCK = """\
endpoints:
  - {{name: edge, tier: edge, url: "http://127.0.0.1:8081/v1"}}
  - name: cloud-cc
    tier: cloud
    url: {url}
    confidential:
      evidence_url: {evidence}
      issuer: https://verifier.example
      {keys}
      claims: {{tdx_is_debuggable: false, attester_tcb_status: [UpToDate]}}
      max_age_s: 300
policy:
  privacy: {{confidential: {allow}}}
"""


def _cfg(url: str = "https://cc.example/v1", evidence: str = "https://cc.example/attestation",
         keys: str = "jwks_url: https://verifier.example/certs", allow: str = "allow") -> str:
    return BLOCK.format(url=url, evidence=evidence, keys=keys, allow=allow)


def test_a_good_block_loads_and_deny_is_the_default() -> None:
    cfg = parse_config(_cfg())
    cc = cfg.endpoints[1].confidential
    assert cc is not None and cc.max_age_s == 300 and cc.key_claim == "tls_key_sha256"
    assert cfg.policy.privacy.confidential == "allow"
    assert parse_config("endpoints: [{name: e, tier: edge, url: 'http://h/v1'}]"
                        ).policy.privacy.confidential == "deny"


@pytest.mark.parametrize(("kw", "needle"), [
    ({"url": "http://cc.example/v1"}, "endpoints.1: Value error, a confidential endpoint's url"),
    ({"evidence": "http://cc.example/attestation"}, "evidence_url: must be https://"),
    ({"keys": "jwks_url: http://verifier.example/certs"}, "jwks_url: must be https://"),
    ({"keys": "max_age_s: 300"}, "exactly one of jwks_url and jwks_file"),
    ({"keys": "jwks_file: /nonexistent/jwks.json"}, "cannot be read"),
    ({"keys": "jwks_url: https://v/certs\n      jwks_file: k.json"}, "exactly one"),
    ({"keys": "ca_file: /nonexistent/ca.pem\n      jwks_url: https://v/certs"}, "ca_file"),
    ({"allow": "maybe"}, "policy.privacy.confidential"),
])
def test_bad_blocks_name_the_field_and_line(kw: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(_cfg(**kw), "gw.yaml")
    assert needle.split(": Value error, ")[-1] in str(info.value), str(info.value)
    assert "gw.yaml:" in str(info.value)


def test_jwks_files_must_hold_public_keys_only(tmp_path: Path) -> None:
    key = make_signer("k")
    good, bad = tmp_path / "jwks.json", tmp_path / "private.json"
    good.write_text(json.dumps(jwks_of(key)))
    bad.write_text(json.dumps({"keys": [key.as_dict(private=True)]}))
    parse_config(_cfg(keys=f"jwks_file: {good}"))
    with pytest.raises(ConfigError, match="private key"):
        parse_config(_cfg(keys=f"jwks_file: {bad}"))


def test_only_cloud_endpoints_may_be_confidential() -> None:
    text = _cfg().replace("    tier: cloud\n", "    tier: edge\n")
    with pytest.raises(ConfigError, match="confidential applies to cloud endpoints"):
        parse_config(text)


def test_cli_check_reports_confidential_endpoints_and_refuses_a_bad_block(tmp_path: Path) -> None:
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(_cfg())
    out = subprocess.run(edgecloud_command("gateway", "--config", str(cfg), "--check"),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "confidential endpoints: cloud-cc" in out.stderr
    cfg.write_text(_cfg(evidence="http://cc.example/attestation"))
    out = subprocess.run(edgecloud_command("gateway", "--config", str(cfg), "--check"),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "evidence_url" in out.stderr
