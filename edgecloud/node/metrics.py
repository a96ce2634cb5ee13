"""Prometheus metrics of a node (prefix `edgecloud_node_`), read by dashboards and alerts."""

from __future__ import annotations

from collections.abc import Callable

import prometheus_client
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

prometheus_client.disable_created_metrics()

LATENCY_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.5,
    0.75,
    1.0,
    1.5,
    2.0,
    3.0,
    5.0,
    7.5,
    10.0,
    15.0,
    20.0,
    30.0,
    60.0,
    120.0,
)


class NodeMetrics:
    """All node metrics in their own registry (one node per process, but tests import many)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        ProcessCollector(registry=r)  # process_cpu_seconds_total, process_resident_memory_bytes
        PlatformCollector(registry=r)
        p = "edgecloud_node_"
        self.requests = Counter(
            p + "requests", "Requests by route and HTTP status.", ["route", "status"], registry=r
        )
        self.ttft = Histogram(
            p + "ttft_seconds",
            "Time from request arrival to the first generated token.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.e2e = Histogram(
            p + "e2e_seconds",
            "Time from request arrival to the last generated token.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            p + "queue_wait_seconds",
            "Time a request waited for a free slot.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter(p + "prompt_tokens", "Prompt tokens read.", registry=r)
        self.output_tokens = Counter(p + "output_tokens", "Tokens generated.", registry=r)
        self.images = Counter(p + "images", "Images read (through the projector).", registry=r)
        self.image_seconds = Counter(
            p + "image_seconds",
            "Engine time spent reading images: encode, and decode of their embeddings.",
            registry=r,
        )
        self.cancelled = Counter(
            p + "cancelled_requests",
            "Requests whose client went away before the end.",
            registry=r,
        )
        self.rejected = Counter(
            p + "rejected_requests",
            "Requests refused because slots and queue were full.",
            registry=r,
        )
        self.tokens_per_second = Gauge(
            p + "tokens_per_second", "Generated tokens per second over the last 10 s.", registry=r
        )
        self.queue_depth = Gauge(p + "queue_depth", "Requests waiting for a slot.", registry=r)
        self.active_slots = Gauge(p + "active_slots", "Slots generating now.", registry=r)
        self.slots = Gauge(p + "slots", "Slots (sequences decoded together).", registry=r)
        self.in_flight = Gauge(p + "in_flight_requests", "Requests being served.", registry=r)
        self.model_load = Gauge(
            p + "model_load_seconds", "Seconds the last model load took.", registry=r
        )
        self.warmup = Gauge(p + "warmup_seconds", "Seconds the last warm-up took.", registry=r)
        self.ready = Gauge(p + "ready", "1 when a model is loaded and warmed.", registry=r)
        self.asyncio_tasks = Gauge(
            p + "asyncio_tasks", "Tasks on the event loop (a leak shows as growth).", registry=r
        )
        self.model_info = Gauge(
            p + "model_info", "The model being served (value 1).", ["model", "version"], registry=r
        )
        self.cpu_variant = Gauge(
            p + "cpu_variant_info",
            "llama.cpp's CPU kernels in use (value 1): the variant ggml picked for this CPU.",
            ["variant"],
            registry=r,
        )
        self.swaps = Counter(
            p + "model_swaps", "Model hot swaps by result.", ["result"], registry=r
        )
        self._refresh: Callable[[], None] | None = None

    def on_scrape(self, refresh: Callable[[], None]) -> None:
        """Register a callback that updates gauges right before each scrape."""
        self._refresh = refresh

    def render(self) -> bytes:
        if self._refresh is not None:
            self._refresh()
        return generate_latest(self.registry)
