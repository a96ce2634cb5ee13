"""Whether and how the gateway traces: the config's `tracing:` section and the standard OTEL_* env.

Pure: no OpenTelemetry import here, so a gateway with tracing off never loads the SDK. The SDK
itself lives behind `edgecloud.gateway.otel`, imported only when `resolve_tracing` says on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from edgecloud.gateway.config import TracingConfig
from edgecloud.gateway.errors import ConfigError

DEFAULT_SERVICE_NAME = "edgecloud-gateway"
DEFAULT_OTLP_ENDPOINT = "http://localhost:4318"
TRACES_PATH = "/v1/traces"
_PROTOCOL = "http/protobuf"


@dataclass(frozen=True)
class TracingSettings:
    """Tracing resolved to on: where spans go and how they are sampled."""

    endpoint: str  # full OTLP/HTTP traces URL
    service_name: str
    sample_ratio: float | None  # None: the SDK's own choice (OTEL_TRACES_SAMPLER, else always)
    warnings: tuple[str, ...] = field(default=())


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() == "true"


def traces_url(base: str) -> str:
    """A collector URL with no path gets /v1/traces (like OTEL_EXPORTER_OTLP_ENDPOINT)."""
    if urlsplit(base).path in ("", "/"):
        return base.rstrip("/") + TRACES_PATH
    return base


def _exporters(env: Mapping[str, str]) -> list[str] | None:
    raw = env.get("OTEL_TRACES_EXPORTER")
    if raw is None or not raw.strip():
        return None
    names = [n.strip().lower() for n in raw.split(",") if n.strip()]
    unsupported = [n for n in names if n not in ("otlp", "none")]
    if unsupported:
        raise ConfigError(
            f"OTEL_TRACES_EXPORTER={raw}: the gateway exports traces over OTLP only; "
            "set it to otlp or none"
        )
    return names


def resolve_tracing(cfg: TracingConfig, env: Mapping[str, str]) -> TracingSettings | None:
    """None when tracing is off; else the settings. Raises ConfigError on unusable env values.

    `enabled: true|false` in the config decides; absent, the standard env decides: on when
    OTEL_TRACES_EXPORTER names otlp, or is unset while an OTLP endpoint variable is set.
    OTEL_SDK_DISABLED=true switches it off either way (the SDK's own kill switch).
    """
    if _truthy(env.get("OTEL_SDK_DISABLED")) or cfg.enabled is False:
        return None
    exporters = _exporters(env)
    if cfg.enabled is None:
        if exporters is not None:
            on = "otlp" in exporters
        else:
            on = bool(
                env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
                or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
            )
        if not on:
            return None
    if cfg.endpoint is not None:
        endpoint = traces_url(cfg.endpoint)
    elif env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        endpoint = env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]  # a full URL, as the spec says
    else:
        endpoint = traces_url(env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or DEFAULT_OTLP_ENDPOINT)
    warnings = []
    protocol = (
        (
            env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
            or _PROTOCOL
        )
        .strip()
        .lower()
    )
    if protocol != _PROTOCOL and cfg.endpoint is None:
        # Tracing must not stop the gateway from serving; say it loudly instead.
        warnings.append(
            f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol}: the gateway exports OTLP over HTTP "
            f"(http/protobuf) to {endpoint}; point it at the collector's OTLP/HTTP port "
            "(usually 4318)"
        )
    service = cfg.service_name or env.get("OTEL_SERVICE_NAME") or DEFAULT_SERVICE_NAME
    return TracingSettings(endpoint, service, cfg.sample_ratio, tuple(warnings))
