"""The placement policy: a pure function from request facts and endpoint state to a decision.

The chain, in order: privacy -> residency -> (health) -> capability -> pin -> deadline/latency ->
load -> cost. Privacy and residency are hard filters that fail closed; the endpoints they remove
never appear in the decision, so no retry or fallback can reach them. Rule ids are documented in
docs/gateway.md and are stable: dashboards and clients match on them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from edgecloud.api.errors import APIError
from edgecloud.gateway.config import PolicyConfig
from edgecloud.gateway.errors import CapabilityMissing, NoAllowedEndpoint, RuleError
from edgecloud.gateway.health import EndpointState
from edgecloud.gateway.privacy import PrivacyDetector
from edgecloud.gateway.pseudonymize import Pseudonymizer, Rewritten
from edgecloud.gateway.request import RequestFacts

UNATTESTED = "privacy.confidential.unattested"


@dataclass(slots=True)
class Hints:
    """What the client (headers) and its API key say about a request."""

    region: str | None = None
    sensitivity: str | None = None
    sensitivity_from_key: bool = False
    deadline_ms: float | None = None
    pinned: str | None = None


@dataclass(slots=True)
class PlacementDecision:
    """Where to send a request: endpoints to try in order, the rule that decided, and why.

    `panic`: every allowed endpoint was marked down, and they are tried anyway."""

    order: tuple[EndpointState, ...]
    rule: str
    explanation: str
    restricted: bool
    panic: bool = False
    # Set on a privacy.pseudonymized decision: what happens instead when the request cannot be
    # rewritten (a kind that may not leave was found): the edge decision, or the refusal.
    without_surrogates: PlacementDecision | APIError | None = None
    # Set on an edge decision for a request that may leave as surrogates: when every endpoint
    # of the order fails before anything reaches the client, see surrogate_fallback.
    surrogates_if_failed: bool = False

    @property
    def primary(self) -> EndpointState:
        return self.order[0]


def _names(endpoints: Sequence[EndpointState]) -> str:
    return ", ".join(e.name for e in endpoints) or "none configured"


def _live(
    cands: list[EndpointState], rule: str | None, unattested: str | None, now: float
) -> tuple[list[EndpointState], bool]:
    """The allowed endpoints that may be tried now, and whether that is panic mode. Raises
    NoAllowedEndpoint, naming the rule that kept the others out, when none may."""
    live = [e for e in cands if e.available(now)]
    if live:
        return live, False
    # Panic mode (Envoy's panic threshold): every allowed endpoint is marked down by its last
    # probe, which may be stale (an edge that just came up). Try them anyway, once each; their
    # breakers still hold back the ones that keep failing.
    # (Attestation is trust, not health: an un-attested endpoint is never tried.)
    live = [e for e in cands if e.breaker.allows(now)
            and (e.attestation is None or e.attestation.attested(now))]
    if live:
        return live, True
    down = _names(cands)
    if unattested is not None:
        raise NoAllowedEndpoint(unattested, f"no edge endpoint is available ({down}) "
                                "and no confidential endpoint is attested now")
    if rule is not None:
        raise NoAllowedEndpoint(
            rule, f"no healthy endpoint may take this request ({down} unavailable); "
            "it was not sent anywhere else"
        )
    raise NoAllowedEndpoint("fallback", f"no endpoint is healthy ({down} unavailable)")


class PlacementPolicy:
    """Applies the configured policy chain; holds no I/O and no clock of its own."""

    def __init__(self, config: PolicyConfig) -> None:
        self.config = config
        self.detector = PrivacyDetector(config.privacy.detect, config.privacy.patterns)
        # Load the validators' lazy metadata now, not on the first private request.
        self.detector.detect(["+86 138 1234 5678 call +1 415-555-2671", "DE89370400440532013000"])
        listed = config.privacy.pseudonymize
        self.pseudonymizer = Pseudonymizer(self.detector, listed) if listed else None

    def privacy_rule(self, facts: RequestFacts, hints: Hints) -> str | None:
        """The privacy rule that makes this request edge-only, or None."""
        if hints.sensitivity == "private":
            return "privacy.key" if hints.sensitivity_from_key else "privacy.header"
        if facts.images and self.config.privacy.images == "edge_only":
            return "privacy.image"
        if facts.opaque_input:
            return "privacy.token_ids"  # token ids cannot be scanned: kept on the edge
        kind = self.detector.detect(facts.texts)
        return f"privacy.pii.{kind}" if kind is not None else None

    def choose_endpoint(
        self,
        facts: RequestFacts,
        hints: Hints,
        endpoints: Sequence[EndpointState],
        now: float,
        cloud_spend_usd: float = 0.0,
    ) -> PlacementDecision:
        """Decide where `facts` runs. Raises NoAllowedEndpoint (503) or CapabilityMissing (400)."""
        private = self.privacy_rule(facts, hints)
        if (
            private is not None
            and self.pseudonymizer is not None
            # Surrogates cover text only: an image may show the same values and would tie each
            # surrogate to its original, so a request with images keeps its private placement.
            and not facts.images
            and private.startswith("privacy.pii.")
            and private[12:] in self.pseudonymizer.allowed
        ):
            place = partial(self._place, facts, hints, endpoints, now, cloud_spend_usd)
            return self._edge_or_surrogates(facts, hints, private, place)
        return self._place(facts, hints, endpoints, now, cloud_spend_usd, private)

    def _place(
        self,
        facts: RequestFacts,
        hints: Hints,
        endpoints: Sequence[EndpointState],
        now: float,
        cloud_spend_usd: float,
        private: str | None,
    ) -> PlacementDecision:
        # `unattested`: the rule to name if only unattested confidential endpoints were left.
        cands, rule, why, unattested = self._allowed(hints, endpoints, now, private)
        restricted = rule is not None  # privacy or residency narrowed the choice: no fallback
        live, panic = _live(cands, rule, unattested, now)
        out_tokens = facts.max_output_tokens or self.config.default_output_tokens
        try:
            live, rule, why = self._capabilities(facts, cands, live, out_tokens, rule, why)
        except CapabilityMissing as exc:
            if unattested is None:
                raise
            # What the edge cannot do, an attested confidential endpoint could: a 503 (retry
            # later) naming the lapsed attestation, not a 400.
            raise NoAllowedEndpoint(unattested, f"{exc.message.split(': ', 1)[-1]}; no "
                                    "confidential endpoint is attested now") from None

        pin = hints.pinned if hints.pinned in ("edge", "cloud") else None
        if pin is not None:
            pinned = [e for e in live if e.config.tier == pin]
            if not pinned:
                pin = None  # the pinned tier is unavailable or not allowed: policy decides
            elif rule is None and len(pinned) < len(live):
                rule, why = "pinned", f"the client pinned the request to {pin}"
        decision = self._ordered(live, pin, facts, hints, out_tokens, rule, why, restricted,
                                 cloud_spend_usd)
        decision.panic = panic
        return decision

    def _allowed(
        self, hints: Hints, endpoints: Sequence[EndpointState], now: float, private: str | None
    ) -> tuple[list[EndpointState], str | None, str, str | None]:
        """(candidates, rule, why, unattested): the endpoints that privacy and residency allow,
        the rule that narrowed them, and the rule to name if only unattested confidential ones
        were left. Raises NoAllowedEndpoint when none is left."""
        rule: str | None = None
        why = ""
        cands = list(endpoints)
        unattested: str | None = None
        if private is not None:
            cands, unattested = self._private_candidates(cands, now)
            rule, why = private, "private data stays on edge endpoints"
            if any(e.config.tier == "cloud" for e in cands):
                why = "private data stays on edge or attested confidential endpoints"
            if not cands:
                if unattested is not None:
                    raise NoAllowedEndpoint(unattested, "private request, no edge endpoint, and "
                                            "no confidential endpoint is attested now")
                raise NoAllowedEndpoint(private, "private request, and no edge endpoint exists")

        if hints.region:
            tag = hints.region
            allowed = self.config.residency.get(tag)
            regions = set(allowed) if allowed is not None else {tag}
            kept = [e for e in cands if e.config.region in regions]
            if not kept:
                raise NoAllowedEndpoint(
                    f"residency.{tag}",
                    f"no allowed endpoint is in a region permitted for {tag!r} "
                    f"({', '.join(sorted(regions))})",
                )
            if rule is None and len(kept) < len(cands):
                rule, why = f"residency.{tag}", f"data tagged {tag!r} stays in {sorted(regions)}"
            cands = kept
        return cands, rule, why, unattested

    def _private_candidates(
        self, cands: list[EndpointState], now: float
    ) -> tuple[list[EndpointState], str | None]:
        """Edge endpoints, plus attested confidential ones when `privacy.confidential: allow`.
        The second value names the rule for a refusal when confidential ones exist but none is
        attested (their attestation lapsed or failed)."""
        edge = [e for e in cands if e.config.tier == "edge"]
        if self.config.privacy.confidential != "allow":
            return edge, None
        conf = [e for e in cands if e.attestation is not None and e.config.tier == "cloud"]
        attested = [e for e in conf if e.attestation is not None and e.attestation.attested(now)]
        return edge + attested, (UNATTESTED if conf and not attested else None)

    # -- private requests that may leave as surrogates -------------------------------------
    def _edge_or_surrogates(
        self,
        facts: RequestFacts,
        hints: Hints,
        private: str,
        place: Callable[[str | None], PlacementDecision],
    ) -> PlacementDecision:
        """The edge when it can take the request now; else cloud endpoints, to be sent
        surrogates (privacy.pseudonymized), with the edge decision as the last resort.
        `place(private_rule)` runs the rest of the chain."""
        edge: PlacementDecision | None = None
        refusal: APIError | None = None
        try:
            edge = place(private)
        except (NoAllowedEndpoint, CapabilityMissing) as exc:
            refusal = exc.with_traceback(None)
        # In panic mode every edge endpoint is marked down: they are the last resort below.
        if edge is not None and not edge.panic and not self._edge_strained(edge.primary, facts,
                                                                             hints):
            edge.surrogates_if_failed = True
            return edge
        try:
            public = place(None)
        except (NoAllowedEndpoint, CapabilityMissing):
            public = None
        clouds = tuple(e for e in public.order if e.config.tier == "cloud") if public else ()
        if public is None or not clouds or (edge is not None and public.primary.config.tier
                                             == "edge"):
            if edge is not None:
                edge.surrogates_if_failed = True
                return edge
            assert refusal is not None
            raise refusal
        why = (f"{private}: the edge cannot take it now; personal data replaced by surrogates "
               "for the cloud")
        return PlacementDecision(clouds + (edge.order if edge is not None else ()),
                                 "privacy.pseudonymized", why, True,
                                 without_surrogates=edge or refusal)

    def surrogate_fallback(
        self,
        failed: RuleError,
        facts: RequestFacts,
        hints: Hints,
        endpoints: Sequence[EndpointState],
        now: float,
        cloud_spend_usd: float,
    ) -> PlacementDecision | None:
        """For an edge decision marked `surrogates_if_failed` whose every endpoint failed before
        anything reached the client (`failed`: the refusal that would follow): the cloud
        endpoints the rest of the chain allows (residency, health, capability, deadline, cost),
        to be sent surrogates, or None when there are none (then `failed` stands). With
        with_surrogates, a request the rewrite must keep private gets `failed`."""
        clouds = [e for e in endpoints if e.config.tier == "cloud"]
        if not clouds:
            return None
        try:
            public = self._place(facts, hints, clouds, now, cloud_spend_usd, None)
        except (NoAllowedEndpoint, CapabilityMissing):
            return None
        why = (f"{failed.rule}: every allowed edge endpoint failed; personal data replaced by "
               "surrogates for the cloud")
        return PlacementDecision(public.order, "privacy.pseudonymized", why, True,
                                 panic=public.panic, without_surrogates=failed)

    def _edge_strained(self, e: EndpointState, facts: RequestFacts, hints: Hints) -> bool:
        """Queueing past the offload threshold, or predicted to miss the deadline."""
        cfg = self.config
        if e.load - e.config.max_concurrency > cfg.offload.edge_queue_above:
            return True
        deadline_ms = hints.deadline_ms if hints.deadline_ms is not None else cfg.slo_ms
        if deadline_ms is None:
            return False
        out_tokens = facts.max_output_tokens or cfg.default_output_tokens
        return e.latency.predict_s(out_tokens, e.queued()) > deadline_ms / 1000.0

    def with_surrogates(
        self, decision: PlacementDecision, body: dict[str, Any]
    ) -> tuple[PlacementDecision, Rewritten | None]:
        """For a privacy.pseudonymized decision: the rewritten body, or (when a kind that may
        not leave was found) the decision the request gets without surrogates, or its refusal.
        Raises NoAllowedEndpoint when the re-scan still finds personal data."""
        assert self.pseudonymizer is not None and decision.without_surrogates is not None
        rewritten = self.pseudonymizer.rewrite(body)
        if rewritten is not None:
            return decision, rewritten
        other = decision.without_surrogates
        if isinstance(other, APIError):
            raise other
        return other, None

    def _capabilities(
        self,
        facts: RequestFacts,
        cands: list[EndpointState],
        live: list[EndpointState],
        out_tokens: int,
        rule: str | None,
        why: str,
    ) -> tuple[list[EndpointState], str | None, str]:
        api = facts.upstream_api
        for e in live:
            if api not in e.apis:
                live, rule, why = self._speaks(api, cands, live, rule, why)
                break
        if facts.images:
            vision = [e for e in live if "vision" in e.capabilities]
            if not vision:
                if any("vision" in e.capabilities for e in cands):
                    raise NoAllowedEndpoint(
                        rule or "capability.vision",
                        "the allowed endpoints that read images are unavailable",
                    )
                raise CapabilityMissing(
                    "capability.vision",
                    "the request has image parts and no allowed endpoint reads images",
                    code="no_vision_endpoint",
                )
            if rule is None and len(vision) < len(live):
                rule, why = "capability.vision", "image parts need a vision endpoint"
            live = vision
        need = facts.prompt_tokens_estimate + out_tokens
        fits = [e for e in live if (ctx := e.config.context) is None or ctx >= need]
        if not fits:
            raise CapabilityMissing(
                "capability.context",
                f"about {need} tokens (prompt and answer) exceed the context of every allowed "
                "endpoint",
                code="context_length_exceeded",
            )
        if rule is None and len(fits) < len(live):
            rule, why = "capability.context", f"about {need} tokens need a larger context"
        return fits, rule, why

    @staticmethod
    def _speaks(api: str, cands: list[EndpointState], live: list[EndpointState],
                rule: str | None, why: str) -> tuple[list[EndpointState], str | None, str]:
        """The live endpoints that speak `api` (from their /v1/models or the config)."""
        speaking = [e for e in live if api in e.apis]
        if not speaking:
            if any(api in e.apis for e in cands):
                raise NoAllowedEndpoint(rule or f"capability.{api}",
                                        f"the allowed endpoints that serve {api} are unavailable")
            raise CapabilityMissing(f"capability.{api}",
                                    f"no allowed endpoint serves {api}", code="unsupported_api")
        if rule is None and len(speaking) < len(live):
            rule, why = f"capability.{api}", f"only some endpoints serve {api}"
        return speaking, rule, why

    def _ordered(
        self,
        live: list[EndpointState],
        pin: str | None,
        facts: RequestFacts,
        hints: Hints,
        out_tokens: int,
        rule: str | None,
        why: str,
        restricted: bool,
        cloud_spend_usd: float,
    ) -> PlacementDecision:
        if len(live) == 1:
            return PlacementDecision((live[0],), rule or "only", why or "the only endpoint left",
                                     restricted)
        cfg = self.config
        deadline_ms = hints.deadline_ms if hints.deadline_ms is not None else cfg.slo_ms
        deadline_s = deadline_ms / 1000.0 if deadline_ms is not None else None
        budget = cfg.budget.monthly_cloud_usd
        over_budget = budget is not None and cloud_spend_usd >= budget
        prompt_tokens = facts.prompt_tokens_estimate
        queue_above = cfg.offload.edge_queue_above

        # One sort key per endpoint, in chain order; the index makes keys unique, so the
        # endpoint itself is never compared. A plain loop: this runs for every request.
        keyed: list[tuple[bool, bool, bool, float, bool, float, bool, float, int,
                          EndpointState]] = []
        best_cost: tuple[float, bool, int] | None = None
        cheapest_i = 0
        for i, e in enumerate(live):
            c = e.config
            tier = c.tier
            is_edge = tier == "edge"
            over = e.in_flight + e.others_in_flight - c.max_concurrency  # load past the limit
            predicted = e.latency.predict_s(out_tokens, over + 1 if over >= 0 else 0)
            misses = deadline_s is not None and predicted > deadline_s
            price = c.price
            cost = (price.input_per_mtok * prompt_tokens
                    + price.output_per_mtok * out_tokens) / 1e6
            if best_cost is None or (cost, not is_edge, i) < best_cost:
                best_cost, cheapest_i = (cost, not is_edge, i), i
            keyed.append((
                pin is not None and tier != pin,
                over_budget and not is_edge,  # a spent budget makes cloud a last resort
                misses, predicted if misses else 0.0,
                is_edge and over > queue_above,
                cost, not is_edge, predicted, i, e,
            ))
        kc = keyed[cheapest_i]
        keyed.sort()
        order = [k[-1] for k in keyed]
        if rule is None:
            kp = keyed[0]
            cheapest = kc[-1]
            if cheapest is order[0]:
                rule, why = "cost", "the cheapest endpoint that meets the deadline"
            elif kc[1] and not kp[1]:
                rule, why = "cost.budget", "the monthly cloud budget is spent"
            elif kc[2] and not kp[2]:
                rule, why = "deadline", f"predicted to answer within {deadline_ms:.0f} ms"
            elif kc[4] and not kp[4]:
                rule, why = "load.offload", f"{cheapest.name} is queueing; offloaded"
            else:
                rule, why = "deadline", "predicted to answer soonest"
        return PlacementDecision(tuple(order), rule, why, restricted)
