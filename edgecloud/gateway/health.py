"""Live state of one endpoint: circuit breaker, latency estimates, in-flight count. Pure (time is
passed in), so the state machines are tested directly."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from edgecloud.gateway.attestation import AttestationStatus
from edgecloud.gateway.config import EndpointConfig


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(slots=True)
class CircuitBreaker:
    """Opens after `failures` consecutive failures; after `open_s` lets one trial through."""

    failures: int = 3
    open_s: float = 5.0
    state: BreakerState = BreakerState.CLOSED
    consecutive: int = 0
    opened_at: float = 0.0
    trial_in_flight: bool = False

    def allows(self, now: float) -> bool:
        """Whether a request may be sent now (does not take the half-open trial slot)."""
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.OPEN:
            return now - self.opened_at >= self.open_s
        return not self.trial_in_flight

    def acquire(self, now: float) -> bool:
        """Take permission to send one request; an open breaker past its wait goes half-open."""
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.OPEN and now - self.opened_at >= self.open_s:
            self.state = BreakerState.HALF_OPEN
            self.trial_in_flight = False
        if self.state is BreakerState.HALF_OPEN and not self.trial_in_flight:
            self.trial_in_flight = True
            return True
        return False

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
    in_flight: int = 0
    model_id: str | None = None
    last_error: str | None = None
    attestation: AttestationStatus | None = None  # confidential endpoints only

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def tier(self) -> str:
        return self.config.tier

    def available(self, now: float) -> bool:
        """Healthy by the last probe, not held off by an open breaker, and attested if it is a
        confidential endpoint (its certificate is trusted only through the token)."""
        return (self.healthy and self.breaker.allows(now)
                and (self.attestation is None or self.attestation.attested(now)))

    def queued(self) -> int:
        return max(self.in_flight - self.config.max_concurrency + 1, 0)
