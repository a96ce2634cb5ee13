"""The two YAML inputs of `edgecloud decide`: the workload profile and the price list.

Both are pydantic models with `extra="forbid"`, so a misspelt key is an error that names it.
See docs/decide.md for every field and the formulas that use it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from edgecloud.gateway.config import DEFAULT_DETECT, PiiKind

Percentile = Literal["p50", "p90", "p95", "p99"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Tokens(_Strict):
    """Size of one request."""

    input_per_request: float = Field(ge=0)
    output_per_request: float = Field(gt=0)
    # Requests whose context exceeds what the edge model serves: they need the cloud.
    large_context_share: float = Field(0.0, ge=0, le=1)
    # Bytes on the wire per request (prompt + answer); default 4 bytes per token.
    kb_per_request: float | None = Field(None, ge=0)

    def payload_kb(self) -> float:
        if self.kb_per_request is not None:
            return self.kb_per_request
        return (self.input_per_request + self.output_per_request) * 4 / 1000


class Images(_Strict):
    """Screenshots (a phone agent): how many requests carry images, and how many each."""

    share: float = Field(1.0, ge=0, le=1)  # of all requests
    per_request: float = Field(1.0, gt=0)  # images in such a request


class SLO(_Strict):
    """Latency objective, checked at `percentile` of the measured distribution."""

    ttft_ms: float = Field(gt=0)
    e2e_ms: float = Field(gt=0)
    percentile: Percentile = "p95"


class ResidencyRule(_Strict):
    """A share of requests tagged with a region that may only be processed in `allowed`."""

    region: str
    share: float = Field(ge=0, le=1)
    allowed: list[str] = Field(min_length=1)


class Compliance(_Strict):
    """Personal data and data residency."""

    personal_data_share: float = Field(0.0, ge=0, le=1)
    # strict: personal data never leaves the edge (the gateway's privacy action edge_only).
    strict: bool = True
    detect: list[PiiKind] = Field(default_factory=lambda: list(DEFAULT_DETECT))
    residency: list[ResidencyRule] = Field(default_factory=list)
    # Kinds the gateway may send to the cloud as surrogates when the edge cannot take the
    # request (its policy.privacy.pseudonymize), and the share of the personal-data requests
    # whose personal data is only of those kinds.
    pseudonymize: list[PiiKind] = Field(default_factory=list)
    pseudonymizable_share: float = Field(0.0, ge=0, le=1)

    @model_validator(mode="after")
    def _shares_fit(self) -> Compliance:
        if sum(r.share for r in self.residency) > 1 + 1e-9:
            raise ValueError("residency shares add up to more than 1")
        if "secret" in self.pseudonymize:
            raise ValueError("pseudonymize: secrets and keys never leave the edge")
        return self

    def edge_bound_personal_share(self) -> float:
        """Share of requests whose personal data keeps them on the edge (strict compliance),
        after the pseudonymisable ones, which the cloud may take as surrogates."""
        if not self.strict:
            return 0.0
        kept = 1.0 - self.pseudonymizable_share if self.pseudonymize else 1.0
        return self.personal_data_share * kept


class Users(_Strict):
    """Where the users are: region name -> share of requests. More than one = global access."""

    regions: dict[str, float] = Field(default_factory=lambda: {"main": 1.0})

    @field_validator("regions")
    @classmethod
    def _sum_to_one(cls, v: dict[str, float]) -> dict[str, float]:
        if not v:
            raise ValueError("name at least one region")
        if any(s < 0 for s in v.values()):
            raise ValueError("region shares must be >= 0")
        if abs(sum(v.values()) - 1) > 1e-6:
            raise ValueError(f"region shares must add up to 1 (they add up to {sum(v.values())})")
        return v


class Workload(_Strict):
    """The business profile: volume, its shape and growth, size, latency, compliance, users."""

    name: str = "workload"
    requests_per_day: float = Field(gt=0)
    peak_to_average: float = Field(2.0, ge=1)
    growth_per_year: float = Field(0.0, gt=-1)
    horizon_years: int = Field(3, ge=1, le=10)
    # How long the workload runs; None = the whole horizon. Shorter = a temporary need.
    duration_months: int | None = Field(None, ge=1)
    capacity_headroom: float = Field(0.2, ge=0)
    availability_target: float = Field(0.99, gt=0, lt=1)
    tokens: Tokens
    slo: SLO
    images: Images | None = None  # a vision workload: size the edge from a screenshot bench
    compliance: Compliance = Field(default_factory=lambda: Compliance.model_validate({}))
    users: Users = Field(default_factory=lambda: Users.model_validate({}))

    def months(self) -> int:
        """Months the costs run for: the workload's duration, capped at the horizon."""
        total = self.horizon_years * 12
        return min(total, self.duration_months) if self.duration_months else total

    def is_global(self) -> bool:
        return len([s for s in self.users.regions.values() if s > 0]) > 1


class Assumed(_Strict):
    """Performance to assume for a tier when no bench file is given."""

    capacity_rps: float | None = Field(None, gt=0)  # per box / replica; None = unlimited
    ttft_ms: float = Field(gt=0)
    e2e_ms: float = Field(gt=0)


class EdgePrices(_Strict):
    """An edge box (bought) and what it costs to run."""

    box_price: float = Field(ge=0)
    box_life_years: float = Field(3.0, gt=0)
    install_per_box: float = Field(0.0, ge=0)
    resale_share: float = Field(0.0, ge=0, le=1)
    maintenance_share_per_year: float = Field(0.0, ge=0)
    idle_watts: float = Field(ge=0)
    busy_watts: float = Field(ge=0)
    power_per_kwh: float = Field(ge=0)
    site_setup_cost: float = Field(0.0, ge=0)
    site_cost_per_month: float = Field(0.0, ge=0)
    ops_hours_per_site_per_month: float = Field(0.0, ge=0)
    ops_hours_per_box_per_month: float = Field(0.0, ge=0)
    box_availability: float = Field(0.99, gt=0, le=1)
    site_availability: float = Field(0.999, gt=0, le=1)
    region: str = "device"
    capabilities: list[str] = Field(default_factory=lambda: ["text"])
    url_template: str = "http://edge-{site}-{index}:8080/v1"
    assumed: Assumed | None = None

    @model_validator(mode="after")
    def _watts(self) -> EdgePrices:
        if self.busy_watts < self.idle_watts:
            raise ValueError("busy_watts must be >= idle_watts")
        return self


class CloudPrices(_Strict):
    """A cloud endpoint: a hosted per-token API or self-run replicas billed per GPU hour."""

    pricing: Literal["per_token", "gpu_hour"] = "per_token"
    input_per_mtok: float = Field(0.0, ge=0)
    output_per_mtok: float = Field(0.0, ge=0)
    gpu_hour: float = Field(0.0, ge=0)
    gpus_per_replica: int = Field(1, ge=1)
    min_replicas: int = Field(1, ge=0)
    autoscaling: bool = True
    egress_per_gb: float = Field(0.0, ge=0)
    fixed_per_month: float = Field(0.0, ge=0)
    ops_hours_per_month: float = Field(0.0, ge=0)
    setup_cost: float = Field(0.0, ge=0)
    availability: float = Field(0.999, gt=0, le=1)
    region: str
    capabilities: list[str] = Field(default_factory=lambda: ["text", "vision"])
    url: str = "https://cloud.example.invalid/v1"
    api_key_env: str = "CLOUD_API_KEY"
    assumed: Assumed | None = None

    @model_validator(mode="after")
    def _priced(self) -> CloudPrices:
        if self.pricing == "gpu_hour" and self.gpu_hour <= 0:
            raise ValueError("pricing gpu_hour needs gpu_hour > 0")
        if self.pricing == "per_token" and self.input_per_mtok + self.output_per_mtok <= 0:
            raise ValueError("pricing per_token needs input_per_mtok or output_per_mtok > 0")
        return self


class Prices(_Strict):
    """All prices, in one currency."""

    currency: str = "USD"
    ops_hourly_rate: float = Field(ge=0)
    edge: EdgePrices
    cloud: CloudPrices
