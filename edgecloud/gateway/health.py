"""Live state of one endpoint: circuit breaker, latency estimates, in-flight count. Pure (time is
passed in), so the state machines are tested directly."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from edgecloud.gateway.attestation_checks import AttestationStatus
from edgecloud.gateway.config import EndpointConfig

# What an OpenAI-compatible server is assumed to serve when neither it nor the config says more.
DEFAULT_APIS = ("chat.completions", "completions")
# How often an endpoint's unconfigured model id and capabilities are read again.
REDISCOVER_S = 30.0


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


# What acquire() hands out: refused (falsy), a plain pass, or a ticket for the half-open trial
# (greater than PASS, one per trial).
REFUSED = 0
PASS = 1


@dataclass(slots=True)
class CircuitBreaker:
    """Opens after `failures` consecutive failures; after `open_s` lets one trial through.

    A trial that gives no verdict within `trial_s` (it hung, or its holder vanished without
    releasing it) no longer blocks: the next request becomes the trial, and a passing health
    probe closes the breaker. Each trial has its own ticket, so a late release of an old trial
    cannot free a newer one."""

    failures: int = 3
    open_s: float = 5.0
    trial_s: float = 30.0
    state: BreakerState = BreakerState.CLOSED
    consecutive: int = 0
    opened_at: float = 0.0
    trial_in_flight: bool = False
    trial_started: float = 0.0
    trial_ticket: int = PASS

    def allows(self, now: float) -> bool:
        """Whether a request may be sent now (does not take the half-open trial slot)."""
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.OPEN:
            return now - self.opened_at >= self.open_s
        return not self.trial_in_flight or now - self.trial_started >= self.trial_s

    def acquire(self, now: float) -> int:
        """Take permission to send one request: REFUSED, PASS, or the half-open trial's ticket
        (hand it back with release() when the request ends without a verdict)."""
        if self.state is BreakerState.CLOSED:
            return PASS
        if self.state is BreakerState.OPEN:
            if now - self.opened_at < self.open_s:
                return REFUSED
            self.state = BreakerState.HALF_OPEN
            self.trial_in_flight = False
        if self.trial_in_flight and now - self.trial_started < self.trial_s:
            return REFUSED
        self.trial_in_flight = True
        self.trial_started = now
        self.trial_ticket += 1
        return self.trial_ticket

    def release(self, ticket: int) -> None:
        """A request ends without a verdict (its client left, or the gateway failed): free the
        trial slot it held, if it still holds it. Safe to call on every path."""
        if ticket > PASS and ticket == self.trial_ticket:
            self.trial_in_flight = False

    def success(self) -> None:
        self.state = BreakerState.CLOSED
        self.consecutive = 0
        self.trial_in_flight = False

    def failure(self, now: float) -> None:
        self.consecutive += 1
        self.trial_in_flight = False
        if self.state is BreakerState.HALF_OPEN or self.consecutive >= self.failures:
            self.state = BreakerState.OPEN
            self.opened_at = now

    def probe_passed(self, now: float) -> None:
        """A passing health probe stands in for the trial once the breaker's wait is over, and
        ends a trial that outlived its deadline."""
        if self.state is not BreakerState.CLOSED and self.allows(now):
            self.success()


@dataclass(slots=True)
class LatencyEstimator:
    """EWMAs of time to first token, time per output token and network round trip (seconds)."""

    alpha: float = 0.2
    ttft_s: float | None = None
    per_token_s: float | None = None
    rtt_s: float | None = None

    @staticmethod
    def _mix(old: float | None, new: float, alpha: float) -> float:
        return new if old is None else old + alpha * (new - old)

    def observe_stream(self, ttft_s: float, total_s: float, tokens: int) -> None:
        self.ttft_s = self._mix(self.ttft_s, ttft_s, self.alpha)
        if tokens > 1:
            self.per_token_s = self._mix(
                self.per_token_s, max(total_s - ttft_s, 0.0) / (tokens - 1), self.alpha
            )

    def observe_total(self, total_s: float, tokens: int) -> None:
        """A non-streamed answer: split the total using what is known of the first token."""
        if tokens > 0:
            ttft = min(self.ttft_s if self.ttft_s is not None else 0.0, total_s)
            self.per_token_s = self._mix(
                self.per_token_s, max(total_s - ttft, 0.0) / tokens, self.alpha
            )
            if self.ttft_s is None:
                self.ttft_s = total_s / (tokens + 1)
        else:
            self.ttft_s = self._mix(self.ttft_s, total_s, self.alpha)

    def observe_rtt(self, rtt_s: float) -> None:
        self.rtt_s = self._mix(self.rtt_s, rtt_s, self.alpha)

    def predict_s(self, output_tokens: int, queued: int = 0) -> float:
        """Predicted seconds for a whole answer; unknown parts count as zero (optimistic)."""
        one = (self.ttft_s or 0.0) + (self.per_token_s or 0.0) * output_tokens
        return (self.rtt_s or 0.0) + one * (1 + queued)


@dataclass(slots=True)
class EndpointState:
    """One configured endpoint and what the gateway currently knows about it."""

    config: EndpointConfig
    breaker: CircuitBreaker
    latency: LatencyEstimator = field(default_factory=LatencyEstimator)
    healthy: bool = True
    in_flight: int = 0  # this replica's
    others_in_flight: int = 0  # the other replicas', as their last heartbeat said (limits.py)
    model_id: str | None = None
    last_error: str | None = None
    discovered_capabilities: tuple[str, ...] | None = None  # from the endpoint's /v1/models
    discovered_apis: tuple[str, ...] | None = None  # edgecloud's /v1/models says which APIs
    discovered_at: float = float("-inf")  # monotonic time of the last /v1/models read
    attestation: AttestationStatus | None = None  # confidential endpoints only

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def capabilities(self) -> tuple[str, ...]:
        """What the endpoint reads: its configured list, else what it reported, else text."""
        if self.config.capabilities is not None:
            return tuple(self.config.capabilities)
        return self.discovered_capabilities or ("text",)

    @property
    def apis(self) -> tuple[str, ...]:
        """The APIs it serves: configured, else reported, else chat and text completions."""
        if self.config.apis is not None:
            return tuple(self.config.apis)
        return self.discovered_apis or DEFAULT_APIS

    @property
    def needs_discovery(self) -> bool:
        return self.model_id is None or (
            self.config.capabilities is None and self.discovered_capabilities is None
        )

    def discovery_due(self, now: float, was_healthy: bool) -> bool:
        """Read /v1/models again: never read, or an unconfigured model id or capability list
        that may have changed since (the endpoint came back, or REDISCOVER_S passed: a hot swap
        can add or drop a projector without the endpoint ever going down)."""
        if self.needs_discovery:
            return True
        learns = self.config.model is None or self.config.capabilities is None
        return learns and (not was_healthy or now - self.discovered_at >= REDISCOVER_S)

    @property
    def tier(self) -> str:
        return self.config.tier

    def available(self, now: float) -> bool:
        """Healthy by the last probe, not held off by an open breaker, and attested if it is a
        confidential endpoint (its certificate is trusted only through the token)."""
        return (self.healthy and self.breaker.allows(now)
                and (self.attestation is None or self.attestation.attested(now)))

    @property
    def load(self) -> int:
        """Requests in flight on the endpoint from every replica: what max_concurrency bounds."""
        return self.in_flight + self.others_in_flight

    def queued(self) -> int:
        return max(self.load - self.config.max_concurrency + 1, 0)
