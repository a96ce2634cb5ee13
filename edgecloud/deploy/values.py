"""The values that shape the rendered deployment: pydantic models with safe defaults.

`load_values(path)` reads a user's YAML file, lays it over the defaults and validates it; an
error names the field and the line. The defaults here are the ones `docs/deploy.md` explains
with the autoscaling simulation's numbers; `default-values.yaml` beside this module is the same
defaults written out for users to copy (a test keeps the two equal).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from edgecloud.api.yamlconfig import load_model, parse_model
from edgecloud.deploy.errors import ValuesError
from edgecloud.gateway.config import GatewayConfig

DEFAULT_VALUES_FILE = Path(__file__).with_name("default-values.yaml")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Resources(_Strict):
    """Container resource requests and limits, in Kubernetes quantities."""

    requests: dict[str, str] = Field(default_factory=lambda: {"cpu": "500m", "memory": "256Mi"})
    limits: dict[str, str] = Field(default_factory=lambda: {"cpu": "1", "memory": "512Mi"})


class Image(_Strict):
    repository: str
    tag: str = "0.1.0"
    pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"

    @property
    def ref(self) -> str:
        return f"{self.repository}:{self.tag}"


class ScalePolicy(_Strict):
    """One direction of the HPA `behavior`: a stabilisation window and rate limits."""

    stabilization_window_s: int = Field(ge=0, le=3600)
    period_s: int = Field(default=15, ge=1, le=1800)
    pods_per_period: int | None = Field(default=None, ge=1)
    percent_per_period: int | None = Field(default=None, ge=1)
    select_policy: Literal["Max", "Min"] = "Max"

    @model_validator(mode="after")
    def _one_policy(self) -> ScalePolicy:
        if self.pods_per_period is None and self.percent_per_period is None:
            raise ValueError("give pods_per_period, percent_per_period or both")
        return self


class NodeAutoscaling(_Strict):
    """Autoscaling of the cloud model nodes on in-flight requests per pod."""

    mode: Literal["keda", "hpa", "none"] = "keda"
    min_replicas: int = Field(default=2, ge=1)
    max_replicas: int = Field(default=16, ge=1)
    # In-flight (running + queued) requests per pod the autoscaler aims at; below the node's
    # --parallel slots so a burst has headroom while new pods start.
    target_inflight_per_pod: float = Field(default=3.0, gt=0)
    polling_interval_s: int = Field(default=15, ge=5)
    scale_up: ScalePolicy = Field(
        default_factory=lambda: ScalePolicy(
            stabilization_window_s=0, period_s=15, pods_per_period=4, percent_per_period=100
        )
    )
    scale_down: ScalePolicy = Field(
        default_factory=lambda: ScalePolicy(
            stabilization_window_s=300, period_s=60, percent_per_period=25, select_policy="Max"
        )
    )

    @model_validator(mode="after")
    def _bounds(self) -> NodeAutoscaling:
        if self.max_replicas < self.min_replicas:
            raise ValueError("max_replicas must be >= min_replicas")
        return self


class NodeModel(_Strict):
    """Which model the node serves and where the file comes from."""

    name: str = "gemma-3-270m"
    # Path inside the container; the node image built with EMBED_MODEL=1 has it already.
    path: str = "/models/model.gguf"
    # For vLLM: a Hugging Face id or a path on the volume.
    hf_id: str = "google/gemma-3-270m-it"
    # An existing PersistentVolumeClaim mounted read-only at /models (empty: use the image's).
    pvc: str = ""


class Node(_Strict):
    # False: no cloud nodes in the cluster (the gateway's config points at a hosted API).
    enabled: bool = True
    engine: Literal["edgecloud", "vllm"] = "edgecloud"
    image: Image = Field(default_factory=lambda: Image(repository="edgecloud/node"))
    vllm_image: Image = Field(
        default_factory=lambda: Image(repository="vllm/vllm-openai", tag="v0.11.0")
    )
    port: int = Field(default=8081, ge=1, le=65535)
    parallel: int = Field(default=4, ge=1)
    ctx: int = Field(default=4096, ge=256)
    threads: int = Field(default=2, ge=1)
    max_queue: int = Field(default=16, ge=0)
    gpus: int = Field(default=0, ge=0)
    model: NodeModel = Field(default_factory=NodeModel)
    resources: Resources = Field(
        default_factory=lambda: Resources(
            requests={"cpu": "2", "memory": "2Gi"}, limits={"cpu": "2", "memory": "3Gi"}
        )
    )
    # Seconds a new pod may take to load and warm the model before liveness applies.
    startup_timeout_s: int = Field(default=300, ge=10)
    pdb_max_unavailable: int = Field(default=1, ge=1)
    admin_token_secret: str = ""  # Secret (key "token") enabling the node's admin API
    autoscaling: NodeAutoscaling = Field(default_factory=NodeAutoscaling)


class GatewayAutoscaling(_Strict):
    enabled: bool = True
    min_replicas: int = Field(default=2, ge=1)
    max_replicas: int = Field(default=6, ge=1)
    target_cpu_percent: int = Field(default=70, ge=10, le=100)


class GatewayState(_Strict):
    """Where the gateway replicas share limits, quotas and the budget's spend."""

    # in_cluster: a Redis rendered here (AOF on a volume, so spend survives its restarts);
    # external: a managed Redis whose URL is the `url_key` of Secret `url_secret`;
    # none: each replica counts alone (limits and budgets multiply by the replica count).
    redis: Literal["in_cluster", "external", "none"] = "in_cluster"
    url_secret: str = ""
    url_key: str = "url"
    prefix: str = "edgecloud"
    image: Image = Field(default_factory=lambda: Image(repository="redis", tag="7.2-alpine"))
    storage: str = "1Gi"
    resources: Resources = Field(
        default_factory=lambda: Resources(
            requests={"cpu": "100m", "memory": "128Mi"}, limits={"cpu": "1", "memory": "512Mi"}
        )
    )

    @model_validator(mode="after")
    def _secret_for_external(self) -> GatewayState:
        if self.redis == "external" and not self.url_secret:
            raise ValueError("redis: external needs url_secret (a Secret whose key "
                             f"{self.url_key!r} is redis://... or rediss://...)")
        return self


class Gateway(_Strict):
    image: Image = Field(default_factory=lambda: Image(repository="edgecloud/gateway"))
    replicas: int = Field(default=2, ge=1)
    port: int = Field(default=8080, ge=1, le=65535)
    service_type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = "ClusterIP"
    resources: Resources = Field(default_factory=Resources)
    autoscaling: GatewayAutoscaling = Field(default_factory=GatewayAutoscaling)
    pdb_max_unavailable: int = Field(default=1, ge=1)
    # Secret whose keys become env vars (upstream API keys named by the config's api_key_env).
    env_secret: str = ""
    # The gateway's YAML configuration (shared/DESIGN.md shape), checked by the gateway's own
    # model; empty: one cloud endpoint, the in-cluster node Service.
    config: GatewayConfig | None = None
    state: GatewayState = Field(default_factory=GatewayState)

    @field_validator("config", mode="before")
    @classmethod
    def _empty_is_default(cls, v: object) -> object:
        return None if v == {} else v


class Database(_Strict):
    """A Secret holding the SQLAlchemy URL of the fleet database."""

    url_secret: str = "edgecloud-fleet-db"
    url_key: str = "url"


class FleetMirror(_Strict):
    """Where the controller publishes the TUF repository for a CDN: devices fetch metadata
    and models there (`cdn_url`) and only report to the fleet API."""

    # s3://BUCKET[/PREFIX] (or a directory a web server serves); empty: no mirror, devices
    # fetch from the fleet API itself
    url: str = ""
    endpoint_url: str = ""  # S3-compatible endpoint (MinIO, Ceph, R2...); empty: AWS
    # Secret whose keys become env vars: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
    # AWS_DEFAULT_REGION (boto3's usual names); empty: the pod's workload identity
    credentials_secret: str = ""
    cdn_url: str = ""  # what agents get as --metadata-url CDN/metadata, --targets-url CDN/targets
    timestamp_max_age_s: int = Field(default=60, ge=0)


class Fleet(_Strict):
    enabled: bool = True
    # The fleet server has no llama.cpp: it runs from the slim gateway image.
    image: Image = Field(default_factory=lambda: Image(repository="edgecloud/gateway"))
    port: int = Field(default=8700, ge=1, le=65535)
    repo_storage: str = "20Gi"
    database: Database = Field(default_factory=Database)
    # Secret with the online signing keys (files), mounted read-only; empty: REPO/keys.
    keys_secret: str = ""
    # Secret (key "token") with the operator token: status, metrics and enrolment tokens.
    # Devices enrol with tokens issued by `edgecloud fleet enrol-token`, never this one.
    operator_token_secret: str = "edgecloud-fleet-operator"
    # kubernetes.io/tls Secret (tls.crt, tls.key) to serve https; empty: plain http inside
    # the cluster (--allow-plain-http), with TLS ended by the Ingress in front of it.
    tls_secret: str = ""
    resources: Resources = Field(default_factory=Resources)
    # The fleet API is stateless over PostgreSQL: several replicas, one of which runs the
    # rollout controller (a PostgreSQL advisory lock; another takes over when it dies).
    replicas: int = Field(default=2, ge=1)
    pdb_max_unavailable: int = Field(default=1, ge=1)
    # Every replica may become the controller, so all mount the repository: ReadWriteMany
    # (NFS, CephFS, EFS, Filestore...) for more than one replica.
    repo_access_mode: str = "ReadWriteMany"
    mirror: FleetMirror = Field(default_factory=lambda: FleetMirror())
    # Told to devices with each report's answer; None: each agent's own --interval.
    poll_interval_s: float | None = Field(default=None, gt=0)


class Postgres(_Strict):
    enabled: bool = True
    image: Image = Field(default_factory=lambda: Image(repository="postgres", tag="16-alpine"))
    storage: str = "10Gi"
    # Existing Secret with POSTGRES_USER, POSTGRES_PASSWORD and POSTGRES_DB; never rendered here.
    secret: str = "edgecloud-postgres"
    resources: Resources = Field(
        default_factory=lambda: Resources(
            requests={"cpu": "250m", "memory": "512Mi"}, limits={"cpu": "1", "memory": "1Gi"}
        )
    )


class Slo(_Strict):
    """Thresholds the alert rules fire on."""

    ttft_p95_s: float = Field(default=1.0, gt=0)
    error_rate: float = Field(default=0.02, gt=0, lt=1)
    queue_depth: float = Field(default=8, gt=0)
    fallback_rate: float = Field(default=0.05, gt=0, lt=1)
    refusals_per_s: float = Field(default=0.5, gt=0)


class Tracing(_Strict):
    """OpenTelemetry export, off by default; passed to the pods as the standard OTEL_* env."""

    enabled: bool = False
    otlp_endpoint: str = "http://otel-collector.observability.svc:4318"
    protocol: Literal["grpc", "http/protobuf"] = "http/protobuf"
    sampler_ratio: float = Field(default=0.1, ge=0, le=1)


class Observability(_Strict):
    # Where KEDA or the Prometheus adapter query the in-flight metric.
    prometheus_url: str = "http://prometheus-server.monitoring.svc:80"
    scrape_interval_s: int = Field(default=15, ge=1)
    prometheus_operator: bool = False  # also render PodMonitor and PrometheusRule objects
    slo: Slo = Field(default_factory=Slo)
    tracing: Tracing = Field(default_factory=Tracing)


class Values(_Strict):
    """Everything `edgecloud deploy k8s` renders from."""

    namespace: str = Field(default="edgecloud", pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    name_prefix: str = Field(default="edgecloud", pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    gateway: Gateway = Field(default_factory=Gateway)
    node: Node = Field(default_factory=Node)
    fleet: Fleet = Field(default_factory=Fleet)
    postgres: Postgres = Field(default_factory=Postgres)
    observability: Observability = Field(default_factory=Observability)


def parse_values(text: str, source: str = "<values>") -> Values:
    """Validate a values document laid over the defaults; raises ValuesError."""
    return parse_model(text, Values, source, base=Values().model_dump(), error=ValuesError)


def load_values(path: str | Path | None = None) -> Values:
    """The defaults, or the defaults overlaid with the YAML file at `path`."""
    if path is None:
        return Values()
    return load_model(path, Values, base=Values().model_dump(), error=ValuesError)
