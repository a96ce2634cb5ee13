"""Gateway configuration: pydantic models loaded from YAML, errors that name the field and line."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from edgecloud.api.guard import ServingLimits
from edgecloud.api.yamlconfig import load_model, parse_model
from edgecloud.gateway.errors import ConfigError

PiiKind = Literal["email", "phone", "id_card", "bank_card", "iban", "ip", "secret"]
# Every kind of personal data the gateway detects; also the default `policy.privacy.detect`
# (and `decide`'s and `deploy`'s, which emit gateway configs): the one list of it.
PII_KINDS: tuple[PiiKind, ...] = ("email", "phone", "id_card", "bank_card", "iban", "ip", "secret")
DEFAULT_DETECT: tuple[PiiKind, ...] = PII_KINDS
_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Price(_Strict):
    """Price per million tokens (edge endpoints may carry an amortised cost too)."""

    input_per_mtok: float = Field(default=0.0, ge=0)
    output_per_mtok: float = Field(default=0.0, ge=0)


_LOCAL_HOSTS = ("127.0.0.1", "localhost", "[::1]")


def _https_or_local(v: str, example: str) -> str:
    m = re.match(r"^(https?)://([^/\s@]+)(/\S*)?$", v)
    if not m:
        raise ValueError(f"must be an https:// URL such as {example}")
    host = m.group(2).rsplit(":", 1)[0] if not m.group(2).startswith("[") else \
        m.group(2).split("]")[0] + "]"
    if m.group(1) == "http" and host not in _LOCAL_HOSTS:
        raise ValueError(f"must be https:// (plain http only to this machine): {example}")
    return v


class ConfidentialConfig(_Strict):
    """A cloud endpoint that proves it runs in a TEE with an attestation token (generic profile:
    claims `nonce` and `tls_key_sha256`, hex), verified against the issuer's keys."""

    evidence_url: str = Field(description="GET ?nonce=HEX -> {\"token\": JWT}")
    issuer: str = Field(min_length=1, description="the token's iss (the attestation service)")
    jwks_url: str | None = Field(default=None, description="the issuer's public keys (JWKS)")
    jwks_file: str | None = Field(default=None, description="or the JWKS as a local file")
    claims: dict[str, Any] = Field(
        default_factory=dict, description="required claim values (measurements, debug off, TCB)"
    )
    max_age_s: float = Field(default=300.0, ge=5, le=86400,
                             description="trust a token at most this long after it was issued")
    ca_file: str | None = Field(default=None, description="verify the endpoint's certificate too")
    timeout_s: float = Field(default=5.0, gt=0, le=120,
                             description="for the evidence, JWKS and handshake fetches")
    nonce_claim: str = Field(default="nonce", pattern=r"^[A-Za-z0-9_.-]{1,128}$")
    key_claim: str = Field(default="tls_key_sha256", pattern=r"^[A-Za-z0-9_.-]{1,128}$")

    @field_validator("evidence_url")
    @classmethod
    def _evidence(cls, v: str) -> str:
        return _https_or_local(v, "https://cc.example/attestation")

    @field_validator("jwks_url")
    @classmethod
    def _jwks_url(cls, v: str | None) -> str | None:
        return None if v is None else _https_or_local(v, "https://verifier.example/certs")

    @model_validator(mode="after")
    def _one_key_source(self) -> ConfidentialConfig:
        if (self.jwks_url is None) == (self.jwks_file is None):
            raise ValueError("give exactly one of jwks_url and jwks_file (the issuer's keys)")
        if self.jwks_file is not None:
            _check_jwks_file(self.jwks_file)
        if self.ca_file is not None and not Path(self.ca_file).is_file():
            raise ValueError(f"ca_file {self.ca_file!r} is not a readable file")
        return self


def _check_jwks_file(path: str) -> None:
    from edgecloud.gateway.attestation_checks import load_jwks

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))  # JSON is YAML
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"jwks_file {path!r} cannot be read as JSON: {exc}") from None
    try:
        load_jwks(data)
    except ValueError as exc:
        raise ValueError(f"jwks_file {path!r}: {exc}") from None


class EndpointConfig(_Strict):
    """One upstream: our node or any OpenAI-compatible server."""

    name: str = Field(pattern=_NAME)
    tier: Literal["edge", "cloud"]
    url: str
    region: str = "device"
    capabilities: list[str] | None = Field(
        None,
        description="what it reads (text, vision); unset: what its /v1/models says, else text",
    )
    apis: list[Literal["chat.completions", "completions", "responses", "messages",
                       "embeddings"]] | None = Field(
        default=None,
        description="APIs it serves; unset: what its /v1/models says, else chat and completions",
    )
    provider: str | None = Field(
        default=None,
        description="gen_ai.provider.name in traces; unset: edgecloud (edge), openai (cloud)",
    )
    max_concurrency: int = Field(default=4, ge=1)
    context: int | None = Field(default=None, ge=1, description="context window in tokens")
    model: str | None = None
    api_key_env: str | None = None
    price: Price = Price()
    timeout_s: float = Field(
        default=120.0, gt=0,
        description="per-response read deadline: a whole non-streamed answer, or a stream's "
        "headers and each gap between its chunks",
    )
    connect_timeout_s: float = Field(default=2.0, gt=0)
    health_path: str | None = Field(
        default=None,
        description="probe path under the server root; default /readyz, else /v1/models",
    )
    confidential: ConfidentialConfig | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not re.match(r"^https?://[^/\s]+(/\S*)?$", v):
            raise ValueError("must be an http:// or https:// URL such as http://127.0.0.1:8081/v1")
        return v.rstrip("/")

    @field_validator("capabilities")
    @classmethod
    def _caps(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and not v:
            raise ValueError("list at least one capability (text, vision)")
        return v

    @model_validator(mode="after")
    def _confidential_https(self) -> EndpointConfig:
        if self.confidential is not None:
            if self.tier != "cloud":
                raise ValueError("confidential applies to cloud endpoints (tier: cloud)")
            if not self.url.startswith("https://"):
                raise ValueError("a confidential endpoint's url must be https:// (the token "
                                 "binds its TLS key)")
        return self


class PrivacyConfig(_Strict):
    """What counts as personal data and what happens to it."""

    detect: list[PiiKind] = Field(default_factory=lambda: list(DEFAULT_DETECT))
    action: Literal["edge_only"] = "edge_only"
    images: Literal["edge_only", "allow"] = "edge_only"
    confidential: Literal["allow", "deny"] = Field(
        default="deny",
        description="allow: private requests may use attested confidential endpoints",
    )
    patterns: dict[str, str] = Field(
        default_factory=dict, description="extra detectors: name -> regular expression"
    )
    pseudonymize: list[str] = Field(
        default_factory=list,
        description="kinds (or pattern names) that may leave the edge as surrogates when the "
        "edge cannot take the request",
    )

    @field_validator("patterns")
    @classmethod
    def _patterns(cls, v: dict[str, str]) -> dict[str, str]:
        for name, pattern in v.items():
            if not re.match(r"^[a-z0-9_]{1,32}$", name):
                raise ValueError(f"pattern name {name!r} must be lower-case letters, digits or _")
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(
                    f"pattern {name!r} is not a valid regular expression: {exc}"
                ) from None
        return v

    @model_validator(mode="after")
    def _pseudonymize(self) -> PrivacyConfig:
        for kind in self.pseudonymize:
            if kind == "secret":
                raise ValueError("pseudonymize: secrets and keys never leave the edge; remove "
                                 "'secret'")
            if kind not in PII_KINDS and kind not in self.patterns:
                raise ValueError(
                    f"pseudonymize: {kind!r} is neither a personal-data kind "
                    f"({', '.join(k for k in PII_KINDS if k != 'secret')}) nor a name in patterns"
                )
        return self


class OffloadConfig(_Strict):
    """Move work from a busy edge to the cloud; come back when it drains."""

    edge_queue_above: int = Field(default=2, ge=0)


class BudgetConfig(_Strict):
    monthly_cloud_usd: float | None = Field(default=None, ge=0)
    hard: bool = Field(
        default=False,
        description="true: once spent, no cloud request is sent (429 insufficient_quota where "
        "only the cloud could answer); false: a spent budget makes the cloud a last resort",
    )


class PolicyConfig(_Strict):
    residency: dict[str, list[str]] = Field(default_factory=dict)
    privacy: PrivacyConfig = PrivacyConfig()
    offload: OffloadConfig = OffloadConfig()
    slo_ms: float | None = Field(default=None, gt=0, description="default deadline, whole answer")
    budget: BudgetConfig = BudgetConfig()
    default_output_tokens: int = Field(default=256, ge=1)


class ModelsConfig(_Strict):
    """Optional allow-list of client model names; None accepts any name."""

    allow: list[str] | None = None
    aliases: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _aliases_target_allowed(self) -> ModelsConfig:
        if self.allow is not None:
            for alias, target in self.aliases.items():
                if target not in self.allow:
                    raise ValueError(f"alias {alias!r} points to {target!r}, which is not in allow")
        return self


class KeyLimits(_Strict):
    """What one key may use: per minute (sliding), at once, and per calendar month (UTC)."""

    rpm: int | None = Field(default=None, ge=1, description="requests per minute")
    tpm: int | None = Field(
        default=None, ge=1,
        description="tokens per minute: the prompt (estimated) when admitted, the answer's after",
    )
    max_parallel: int | None = Field(default=None, ge=1, description="requests in flight at once")
    monthly_cloud_usd: float | None = Field(
        default=None, ge=0, description="a cap: once spent, the key's requests stay on the edge"
    )

    @property
    def rate_limited(self) -> bool:
        return self.rpm is not None or self.tpm is not None or self.max_parallel is not None


class ApiKeyConfig(_Strict):
    """A client key, stored as the hex SHA-256 of the key (never the key itself)."""

    name: str = Field(pattern=_NAME)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    region: str | None = None
    sensitivity: Literal["public", "private"] | None = None
    limits: KeyLimits | None = None


class AuthConfig(_Strict):
    keys: list[ApiKeyConfig] = Field(default_factory=list)

    @field_validator("keys")
    @classmethod
    def _unique(cls, v: list[ApiKeyConfig]) -> list[ApiKeyConfig]:
        for what, values in (("name", [k.name for k in v]), ("sha256", [k.sha256 for k in v])):
            dupes = sorted({n for n in values if values.count(n) > 1})
            if dupes:
                raise ValueError(f"key {what}s must be unique (limits and metrics are kept per "
                                 f"name); repeated: {', '.join(d[:12] for d in dupes)}")
        return v


class StateConfig(_Strict):
    """Where limits, quotas and the budget's spend are kept: this process, or a shared Redis."""

    backend: Literal["memory", "redis"] = Field(
        default="memory", description="memory: one process; redis: shared by every replica"
    )
    url_env: str = Field(
        default="EDGECLOUD_REDIS_URL", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="environment variable holding redis://[:password@]host:port/db or rediss://",
    )
    prefix: str = Field(default="edgecloud", pattern=r"^[A-Za-z0-9_.:-]{1,64}$",
                        description="key prefix, so that two fleets can share one Redis")
    timeout_s: float = Field(default=0.25, gt=0, le=10,
                             description="per Redis call; past it the store counts as down")
    lease_s: float = Field(
        default=600.0, ge=10,
        description="a slot or reservation a crashed replica left behind is freed after this",
    )


class LimitsConfig(ServingLimits):
    """Request limits, the breaker, health probes, and the read deadlines of every server."""

    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    health_interval_s: float = Field(default=2.0, gt=0)
    breaker_failures: int = Field(default=3, ge=1)
    breaker_open_s: float = Field(default=5.0, gt=0)
    breaker_trial_s: float = Field(
        default=30.0, gt=0, description="a half-open trial without a verdict by then is void"
    )


class TracingConfig(_Strict):
    """OpenTelemetry tracing. Unset fields follow the standard OTEL_* environment variables."""

    enabled: bool | None = Field(
        default=None, description="true/false decide; unset: on when OTEL_* env asks for OTLP"
    )
    service_name: str | None = Field(default=None, min_length=1)
    sample_ratio: float | None = Field(
        default=None, ge=0, le=1, description="parent-based; unset: OTEL_TRACES_SAMPLER or all"
    )
    endpoint: str | None = Field(
        default=None, description="OTLP/HTTP collector, e.g. http://otel-collector:4318"
    )

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^https?://[^/\s@]+(/\S*)?$", v):
            raise ValueError("must be an http:// or https:// URL such as http://127.0.0.1:4318")
        return v


class GatewayConfig(_Strict):
    endpoints: list[EndpointConfig]
    policy: PolicyConfig = PolicyConfig()
    models: ModelsConfig = ModelsConfig()
    auth: AuthConfig = AuthConfig()
    limits: LimitsConfig = LimitsConfig()
    tracing: TracingConfig = TracingConfig()
    state: StateConfig = StateConfig()

    @field_validator("endpoints")
    @classmethod
    def _endpoints(cls, v: list[EndpointConfig]) -> list[EndpointConfig]:
        if not v:
            raise ValueError("configure at least one endpoint")
        names = [e.name for e in v]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"endpoint names must be unique; repeated: {', '.join(dupes)}")
        return v


def parse_config(text: str, source: str = "<config>") -> GatewayConfig:
    """Validate YAML text; raise ConfigError naming the file, line and field."""
    return parse_model(text, GatewayConfig, source, error=ConfigError)


def load_config(path: str | Path) -> GatewayConfig:
    """Read and validate a gateway YAML file."""
    return load_model(path, GatewayConfig, error=ConfigError)


def config_yaml(config: GatewayConfig) -> str:
    """The settings of `config` that were set explicitly, as the YAML `load_config` reads.

    `decide` and `deploy` build a `GatewayConfig` and write it with this, so what they emit is
    validated by the model that loads it.
    """
    data = config.model_dump(mode="json", exclude_unset=True)
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=100)
