"""The one list of metrics that the dashboard, the alert rules, the autoscalers and the bench
query.

It sits below every package that reads metrics (`deploy` renders PromQL from it, `bench` reads
the node's image counters by these names) and imports none of them. Every PromQL expression
deploy renders takes its metric names from here, and a test
checks each name against the live `/metrics` of the real node, gateway and fleet server, so a
renamed metric breaks a test instead of silently blanking a panel or muting an alert.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Component = Literal["node", "gateway", "fleet"]
Kind = Literal["counter", "gauge", "histogram"]


@dataclass(frozen=True)
class Metric:
    """One metric family as the component exposes it (counters with their `_total`)."""

    name: str
    component: Component
    kind: Kind
    labels: tuple[str, ...] = ()

    @property
    def bucket(self) -> str:
        assert self.kind == "histogram", self.name
        return f"{self.name}_bucket"

    @property
    def count(self) -> str:
        assert self.kind == "histogram", self.name
        return f"{self.name}_count"

    @property
    def sum(self) -> str:
        assert self.kind == "histogram", self.name
        return f"{self.name}_sum"

    def series(self) -> tuple[str, ...]:
        """The sample names Prometheus stores for this family."""
        if self.kind == "histogram":
            return (self.bucket, self.count, self.sum)
        return (self.name,)


# --- model node (edgecloud serve) ---
NODE_REQUESTS = Metric("edgecloud_node_requests_total", "node", "counter", ("route", "status"))
NODE_TTFT = Metric("edgecloud_node_ttft_seconds", "node", "histogram")
NODE_E2E = Metric("edgecloud_node_e2e_seconds", "node", "histogram")
NODE_PROMPT_TOKENS = Metric("edgecloud_node_prompt_tokens_total", "node", "counter")
NODE_OUTPUT_TOKENS = Metric("edgecloud_node_output_tokens_total", "node", "counter")
# Images read through the projector, and the engine time they took (encode + their prefill).
NODE_IMAGES = Metric("edgecloud_node_images_total", "node", "counter")
NODE_IMAGE_SECONDS = Metric("edgecloud_node_image_seconds_total", "node", "counter")
NODE_QUEUE_DEPTH = Metric("edgecloud_node_queue_depth", "node", "gauge")
NODE_ACTIVE_SLOTS = Metric("edgecloud_node_active_slots", "node", "gauge")
# Requests from arrival to their last byte (queued + generating): the autoscaling metric.
NODE_IN_FLIGHT = Metric("edgecloud_node_in_flight_requests", "node", "gauge")
NODE_QUEUE_WAIT = Metric("edgecloud_node_queue_wait_seconds", "node", "histogram")
NODE_REJECTED = Metric("edgecloud_node_rejected_requests_total", "node", "counter")
NODE_MODEL_LOAD = Metric("edgecloud_node_model_load_seconds", "node", "gauge")
NODE_WARMUP = Metric("edgecloud_node_warmup_seconds", "node", "gauge")

# --- gateway ---
GATEWAY_REQUESTS = Metric(
    "edgecloud_gateway_requests_total",
    "gateway",
    "counter",
    ("placement", "endpoint", "reason", "status"),
)
GATEWAY_FALLBACKS = Metric("edgecloud_gateway_fallbacks_total", "gateway", "counter")
GATEWAY_REFUSALS = Metric("edgecloud_gateway_refusals_total", "gateway", "counter", ("reason",))
GATEWAY_ADDED_LATENCY = Metric("edgecloud_gateway_added_latency_seconds", "gateway", "histogram")
GATEWAY_ENDPOINT_UP = Metric(
    "edgecloud_gateway_endpoint_healthy", "gateway", "gauge", ("endpoint", "tier")
)
GATEWAY_ENDPOINT_BREAKER = Metric(
    "edgecloud_gateway_endpoint_breaker_state", "gateway", "gauge", ("endpoint", "tier")
)
GATEWAY_ENDPOINT_IN_FLIGHT = Metric(
    "edgecloud_gateway_endpoint_in_flight", "gateway", "gauge", ("endpoint", "tier")
)

# --- fleet server ---
FLEET_DEVICES = Metric("edgecloud_fleet_devices", "fleet", "gauge", ("model", "version"))
FLEET_ROLLOUT_STAGE = Metric(
    "edgecloud_fleet_rollout_percent", "fleet", "gauge", ("model", "version")
)
FLEET_ROLLOUTS_ABORTED = Metric(
    "edgecloud_fleet_rollouts_aborted_total", "fleet", "counter", ("model",)
)
FLEET_REPORTS = Metric("edgecloud_fleet_reports_total", "fleet", "counter")
FLEET_DEVICE_EVENTS = Metric("edgecloud_fleet_device_events_total", "fleet", "counter", ("kind",))
FLEET_AGENT_REFUSALS = Metric(
    "edgecloud_fleet_agent_refusals_total", "fleet", "counter", ("reason",)
)
FLEET_CONTROLLER_LAST_RUN = Metric(
    "edgecloud_fleet_controller_last_run_timestamp_seconds", "fleet", "gauge"
)

ALL: tuple[Metric, ...] = (
    NODE_REQUESTS,
    NODE_TTFT,
    NODE_E2E,
    NODE_PROMPT_TOKENS,
    NODE_OUTPUT_TOKENS,
    NODE_QUEUE_DEPTH,
    NODE_ACTIVE_SLOTS,
    NODE_IN_FLIGHT,
    NODE_QUEUE_WAIT,
    NODE_REJECTED,
    NODE_MODEL_LOAD,
    NODE_WARMUP,
    GATEWAY_REQUESTS,
    GATEWAY_FALLBACKS,
    GATEWAY_REFUSALS,
    GATEWAY_ADDED_LATENCY,
    GATEWAY_ENDPOINT_UP,
    GATEWAY_ENDPOINT_BREAKER,
    GATEWAY_ENDPOINT_IN_FLIGHT,
    FLEET_DEVICES,
    FLEET_ROLLOUT_STAGE,
    FLEET_ROLLOUTS_ABORTED,
    FLEET_REPORTS,
    FLEET_DEVICE_EVENTS,
    FLEET_AGENT_REFUSALS,
    FLEET_CONTROLLER_LAST_RUN,
)

# vLLM's own gauges, used instead of the node's when node.engine is vllm.
VLLM_RUNNING = "vllm:num_requests_running"
VLLM_WAITING = "vllm:num_requests_waiting"


def by_component(component: Component) -> tuple[Metric, ...]:
    return tuple(m for m in ALL if m.component == component)


def known_series() -> frozenset[str]:
    """Every sample name a rendered query may use."""
    return frozenset(s for m in ALL for s in m.series())
