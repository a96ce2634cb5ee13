"""Prometheus metrics of the gateway (prefix edgecloud_gateway_)."""

from __future__ import annotations

import asyncio
import bisect
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from edgecloud.gateway.health import BreakerState, EndpointState

_PREFIX = "edgecloud_gateway_"
_BREAKER_VALUE = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}


class _EndpointCollector(Collector):
    """Endpoint health, in-flight, breaker state and latency estimates, read at scrape time."""

    def __init__(self, endpoints: Sequence[EndpointState]) -> None:
        self.endpoints = endpoints

    def collect(self) -> Iterator[GaugeMetricFamily]:
        labels = ["endpoint", "tier"]
        healthy = GaugeMetricFamily(_PREFIX + "endpoint_healthy", "1 when the last probe passed",
                                    labels=labels)
        in_flight = GaugeMetricFamily(_PREFIX + "endpoint_in_flight", "requests in flight",
                                      labels=labels)
        breaker = GaugeMetricFamily(_PREFIX + "endpoint_breaker_state",
                                    "0 closed, 1 half-open, 2 open", labels=labels)
        ttft = GaugeMetricFamily(_PREFIX + "endpoint_ttft_seconds",
                                 "EWMA time to first token", labels=labels)
        per_token = GaugeMetricFamily(_PREFIX + "endpoint_token_seconds",
                                      "EWMA time per output token", labels=labels)
        rtt = GaugeMetricFamily(_PREFIX + "endpoint_rtt_seconds", "EWMA probe round trip",
                                labels=labels)
        for e in self.endpoints:
            lv = [e.name, e.config.tier]
            healthy.add_metric(lv, 1.0 if e.healthy else 0.0)
            in_flight.add_metric(lv, float(e.in_flight))
            breaker.add_metric(lv, float(_BREAKER_VALUE[e.breaker.state]))
            ttft.add_metric(lv, e.latency.ttft_s or 0.0)
            per_token.add_metric(lv, e.latency.per_token_s or 0.0)
            rtt.add_metric(lv, e.latency.rtt_s or 0.0)
        tasks = GaugeMetricFamily(_PREFIX + "asyncio_tasks",
                                  "Tasks on the event loop (a leak shows as growth)")
        try:
            tasks.add_metric([], float(len(asyncio.all_tasks())))
        except RuntimeError:  # read outside the event loop
            tasks.add_metric([], 0.0)
        yield from (healthy, in_flight, breaker, ttft, per_token, rtt, tasks)


class _KeyUse:
    """One API key's counts, as plain numbers: bumped on the event loop by every keyed request,
    read at scrape time (a labelled prometheus Counter takes a lock per increment, and four
    label lookups, about 2 us a request)."""

    __slots__ = ("requests", "requests_created", "prompt", "prompt_created", "completion",
                 "completion_created", "spend", "spend_created")

    def __init__(self) -> None:
        self.requests: dict[str, float] = {}  # placement -> answered requests
        self.requests_created: dict[str, float] = {}
        self.prompt = 0.0
        self.prompt_created = time.time()
        # A series appears with its first count, as a Counter's child would.
        self.completion = 0.0
        self.completion_created: float | None = None
        self.spend = 0.0
        self.spend_created: float | None = None


class _KeyCollector(Collector):
    """The per-key counters (key_requests, key_tokens, key_cloud_spend_usd) from `_KeyUse`s."""

    def __init__(self, keys: dict[str, _KeyUse]) -> None:
        self.keys = keys

    def collect(self) -> Iterator[CounterMetricFamily]:
        requests = CounterMetricFamily(_PREFIX + "key_requests",
                                       "Answered requests per API key and placement",
                                       labels=["key", "placement"])
        tokens = CounterMetricFamily(_PREFIX + "key_tokens",
                                     "Tokens per API key (prompt estimated, completion counted)",
                                     labels=["key", "kind"])
        spend = CounterMetricFamily(_PREFIX + "key_cloud_spend_usd",
                                    "Estimated cloud spend per API key, USD", labels=["key"])
        for key, use in list(self.keys.items()):
            for placement, count in list(use.requests.items()):
                requests.add_metric([key, placement], count,
                                    created=use.requests_created[placement])
            tokens.add_metric([key, "prompt"], use.prompt, created=use.prompt_created)
            if use.completion_created is not None:
                tokens.add_metric([key, "completion"], use.completion,
                                  created=use.completion_created)
            if use.spend_created is not None:
                spend.add_metric([key], use.spend, created=use.spend_created)
        yield from (requests, tokens, spend)


class _Answers:
    """Every request's count (by placement, endpoint, rule and status) and the time the gateway
    added, as plain numbers bumped on the event loop and read at scrape time: a labelled
    prometheus Counter and a Histogram take a lock per increment (about 1 us a request)."""

    __slots__ = ("counts", "bounds", "buckets", "sum", "created")

    def __init__(self, bounds: Sequence[float]) -> None:
        # (placement, endpoint, reason, status) -> [count, created]
        self.counts: dict[tuple[str, str, str, int], list[float]] = {}
        self.bounds = list(bounds)
        self.buckets = [0] * (len(self.bounds) + 1)  # per bucket, the last one +Inf
        self.sum = 0.0
        self.created = time.time()


class _AnswersCollector(Collector):
    """`_Answers` as the requests counter and the added-latency histogram."""

    def __init__(self, answers: _Answers) -> None:
        self.answers = answers

    def collect(self) -> Iterator[CounterMetricFamily | HistogramMetricFamily]:
        a = self.answers
        requests = CounterMetricFamily(_PREFIX + "requests",
                                       "Requests by placement, endpoint, rule and status",
                                       labels=["placement", "endpoint", "reason", "status"])
        for (placement, endpoint, reason, status), (count, created) in list(a.counts.items()):
            requests.add_metric([placement, endpoint, reason, str(status)], count,
                                created=created)
        added = HistogramMetricFamily(_PREFIX + "added_latency_seconds",
                                      "Time the gateway adds to a request")
        cumulative, buckets = 0, []
        for bound, n in zip([*a.bounds, float("inf")], a.buckets, strict=True):
            cumulative += n
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
        added.add_metric([], buckets, a.sum)
        added.samples.append(Sample(_PREFIX + "added_latency_seconds_created", {}, a.created))
        yield from (requests, added)


class GatewayMetrics:
    """Counters and histograms, with label children cached so the hot path is a dict lookup."""

    def __init__(self, endpoints: Sequence[EndpointState]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._answers = _Answers((0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                  0.1))
        r.register(_AnswersCollector(self._answers))
        self._fallbacks = Counter(
            _PREFIX + "fallbacks", "Endpoint failures that moved a request to the next endpoint",
            ["endpoint", "cause"], registry=r,
        )
        self._upstream_failures = Counter(
            _PREFIX + "upstream_failures",
            "Endpoint failures counted by the circuit breaker (relayed or fallen back from)",
            ["endpoint", "cause"], registry=r,
        )
        self._refusals = Counter(
            _PREFIX + "refusals", "Requests refused by policy (fail closed) or as bad input",
            ["reason"], registry=r,
        )
        self._pseudonymized = Counter(
            _PREFIX + "pseudonymized", "Private requests sent to the cloud with surrogates, "
            "by kind of personal data replaced", ["kind"], registry=r,
        )
        # Per key: labels are key names from the config only, so cardinality stays bounded.
        self._keys: dict[str, _KeyUse] = {}
        r.register(_KeyCollector(self._keys))
        self._key_limited = Counter(
            _PREFIX + "key_limited", "Requests refused or kept on the edge by a key's limit",
            ["key", "limit"], registry=r,
        )
        self._state_up = Gauge(
            _PREFIX + "state_up", "1 while the state store (memory or Redis) answers", registry=r,
        )
        self._state_up.set(1)
        r.register(_EndpointCollector(endpoints))
        self._children: dict[tuple[Any, ...], Any] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        """`metric.labels(*labels)`, cached (label values are bounded: names from the config)."""
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def request(self, placement: str, endpoint: str, reason: str, status: int) -> None:
        """Count one answered or refused request (on the event loop: no lock)."""
        counts = self._answers.counts
        key = (placement, endpoint, reason, status)
        entry = counts.get(key)
        if entry is None:
            counts[key] = [1.0, time.time()]
        else:
            entry[0] += 1

    def fallback(self, endpoint: str, cause: str) -> None:
        self._fallbacks.labels(endpoint, cause).inc()

    def upstream_failure(self, endpoint: str, cause: str) -> None:
        self._upstream_failures.labels(endpoint, cause).inc()

    def refusal(self, reason: str) -> None:
        self._refusals.labels(reason).inc()

    def pseudonymized(self, kinds: Iterable[str]) -> None:
        for kind in kinds:
            self._child(self._pseudonymized, kind).inc()

    def key_request(self, key: str, placement: str, prompt_tokens: int, completion_tokens: int,
                    cloud_usd: float) -> None:
        """Count one answered request of `key` (on the event loop: plain additions, no lock)."""
        use = self._keys.get(key)
        if use is None:
            use = self._keys[key] = _KeyUse()
        count = use.requests.get(placement)
        if count is None:
            use.requests_created[placement] = time.time()
            count = 0.0
        use.requests[placement] = count + 1
        use.prompt += prompt_tokens
        if completion_tokens:
            if use.completion_created is None:
                use.completion_created = time.time()
            use.completion += completion_tokens
        if cloud_usd:
            if use.spend_created is None:
                use.spend_created = time.time()
            use.spend += cloud_usd

    def key_limited(self, key: str, limit: str) -> None:
        self._key_limited.labels(key, limit).inc()

    def state_up(self, up: bool) -> None:
        self._state_up.set(1 if up else 0)

    def added_latency(self, seconds: float) -> None:
        a = self._answers
        a.buckets[bisect.bisect_left(a.bounds, seconds)] += 1  # le: a bound counts as inside
        a.sum += seconds

    def render(self) -> bytes:
        return generate_latest(self.registry)
