"""The versioned results file that `edgecloud bench` writes and `edgecloud decide` reads.

This schema is an interface (shared/DESIGN.md, "Results files"): add optional fields freely,
bump SCHEMA_VERSION for anything that changes the meaning of an existing field.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

SCHEMA_VERSION = 1


class Percentiles(BaseModel):
    """Summary of one latency-like quantity, in milliseconds."""

    mean: float | None = None
    p50: float | None = None
    p90: float | None = None
    p95: float | None = None
    p99: float | None = None
    min: float | None = None
    max: float | None = None
    count: int = 0


class RequestRecord(BaseModel):
    """One request as the client saw it. Times in seconds since the run started."""

    level: float
    scheduled_s: float | None = None  # open loop: when the schedule said to send it
    start_s: float  # when it was actually sent
    # Open loop: ttft_ms and e2e_ms count from scheduled_s when the send was late (no
    # coordinated omission), from start_s otherwise.
    ttft_ms: float | None = None
    e2e_ms: float | None = None
    output_tokens: int = 0
    prompt_tokens: int = 0
    itl_ms: list[float] = Field(default_factory=list)
    ok: bool = True
    error: str | None = None  # error kind, e.g. "http_429", "timeout", "connect"
    # Added in schema 1 (optional): where output_tokens came from for this request.
    token_source: Literal["server_usage", "tokenizer", "chunks"] | None = None
    # Added in schema 1 (optional): the request's images and their time as the server reported
    # them in its answer's `timings` (`images_n`, `images_ms`: edgecloud's node, also through
    # the gateway); None where the answer carries none.
    server_images: int | None = None
    server_image_ms: float | None = None


class LevelSummary(BaseModel):
    """All requests run at one load level (a concurrency or a rate)."""

    level: float  # concurrency (closed loop) or requests/s (open loop)
    requests: int
    ok: int
    errors: dict[str, int] = Field(default_factory=dict)
    duration_s: float
    requests_per_s: float
    output_tokens_per_s: float
    e2e_ms: Percentiles
    ttft_ms: Percentiles
    tpot_ms: Percentiles  # time per output token after the first
    itl_ms: Percentiles  # inter-token latency, every gap
    goodput_share: float | None = None  # share of requests meeting the SLO
    goodput_per_s: float | None = None
    # Added in schema 1 (optional): the load generator's own footprint and schedule accuracy.
    client_cpu_s: float | None = None  # CPU seconds the bench process used at this level
    client_cpu_share: float | None = None  # of one core: client_cpu_s / duration_s
    send_lag_ms: Percentiles | None = None  # open loop: actual send time minus schedule
    offered: float | None = None  # open loop: requests/s the schedule offered
    # Added in schema 1 (optional), image workloads: what the server itself reported for the
    # level (an edgecloud vision node's /metrics counters; None where the server reports none).
    server_images: int | None = None  # images the server read during the level
    image_ms: float | None = None  # its mean engine time per image: encode + image prefill


class Knee(BaseModel):
    level: float
    reason: str  # "throughput_plateau" | "latency_departure" | "none"
    requests_per_s: float
    output_tokens_per_s: float


class ColdStart(BaseModel):
    command: str
    runs: list[dict[str, float]]  # each: process_start_s, ready_s, first_token_s
    summary: dict[str, Percentiles]


class Energy(BaseModel):
    source: Literal["nvml", "rapl", "estimate", "none"]
    measured: bool
    joules: float | None = None
    joules_per_request: float | None = None
    tokens_per_joule: float | None = None
    note: str = ""


class ImageSet(BaseModel):
    """The images of an image workload (added in schema 1, optional)."""

    per_request: float  # mean image parts per request
    width: int
    height: int
    mean_bytes: int  # mean encoded (PNG) size, before base64
    format: str = "png"
    # "server_metrics": LevelSummary.image_ms came from the server's image counters;
    # "server_timings": from the `timings` of each answer (e.g. through a gateway);
    # "none": the server reports no image time, only end-to-end figures exist.
    image_time_source: Literal["server_metrics", "server_timings", "none"] = "none"


class BenchResults(BaseModel):
    """A whole `edgecloud bench` run."""

    schema_version: int = SCHEMA_VERSION
    tool: str = "edgecloud-bench"
    label: str = ""
    endpoint: str
    model: str
    scenario: Literal["single", "concurrency", "rate", "burst"]
    workload: str
    token_count_source: Literal["server_usage", "tokenizer", "chunks"] = "server_usage"
    slo: dict[str, float] = Field(default_factory=dict)  # ttft_ms, e2e_ms
    machine: dict[str, object] = Field(default_factory=dict)
    started_at: str = ""
    complete: bool = True  # False for a partial file (Ctrl-C, target failed)
    note: str = ""
    levels: list[LevelSummary] = Field(default_factory=list)
    knee: Knee | None = None
    cold_start: ColdStart | None = None
    resources: list[dict[str, float]] = Field(default_factory=list)  # timeline samples
    energy: Energy | None = None
    records: list[RequestRecord] = Field(default_factory=list)
    # Added in schema 1 (optional).
    stream: bool = True
    seed: int | None = None
    settings: dict[str, object] = Field(default_factory=dict)  # the options the run used
    server_pid: int | None = None  # the local server process sampled in `resources`
    images: ImageSet | None = None  # image workloads (phone-agent): what each request carried
