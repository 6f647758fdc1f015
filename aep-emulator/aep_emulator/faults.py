"""Fault injection: per-route rules drawn from a seeded RNG, with request and fault counters.

A rule (JSON)::

    {"route": "catalog.get_batch" | "*" | "GET /data/core/ups/export/jobs/.*",
     "kind": "429" | "500" | "502" | "503" | "reset" | "truncate" | "latency",
     "probability": 1.0,        # chance per matching request
     "retry_after": 2,          # 429 only: adds "Retry-After: 2" (omit for none)
     "seconds": 0.5,            # latency only: delay before the request is handled (async); it
                                #   ends early when the rules are replaced or cleared (a test
                                #   holds a request, acts, then releases it)
     "times": 3}                # stop after this many injections (omit = unlimited)

``reset`` closes the connection without any response; ``truncate`` sends the headers and part of
the body, then closes it. Both reach the client as connection errors, not as HTTP statuses, and the
request is **not** processed. ``lost_response`` processes the request, then drops the connection
instead of answering (the client cannot tell whether it happened: the idempotency test).
Routes are the stable names listed by ``GET /emulator/routes``; a value containing a space is
``METHOD regex`` matched against the request path (METHOD may be ``*``). Query Service statements
are route ``query_service.query``, method ``QUERY``, "path" the SQL text on one line (``QUERY
.*pmod.*`` holds only partition queries): latency holds the statement, the connection kinds drop
the connection, the status kinds fail the statement (SQLSTATE 57P03).

Draws are seeded per rule and route: how often one route is called (e.g. polls, whose number
depends on timing) never moves the faults another route gets, so a seeded run is repeatable.
Stats count, per route, the requests, the injected faults and the requests still in flight.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("aep_emulator.faults")

QUERY_SERVICE_ROUTE = "query_service.query"
STATUS_KINDS = ("429", "500", "502", "503")
CONNECTION_KINDS = ("reset", "truncate", "lost_response")
KINDS = STATUS_KINDS + CONNECTION_KINDS + ("latency",)
_RULE_KEYS = {"route", "kind", "probability", "retry_after", "seconds", "times"}


@dataclass
class FaultRule:
    route: str
    kind: str
    probability: float = 1.0
    retry_after: float | None = None
    seconds: float = 0.0
    times: int | None = None
    injected: int = 0
    _method: str | None = field(default=None, repr=False)
    _regex: re.Pattern[str] | None = field(default=None, repr=False)

    @classmethod
    def from_json(cls, data: Any) -> FaultRule:
        if not isinstance(data, dict):
            raise ValueError(f"a fault rule must be an object, got {data!r}")
        unknown = set(data) - _RULE_KEYS
        if unknown:
            raise ValueError(f"unknown fault rule keys {sorted(unknown)}; allowed: {sorted(_RULE_KEYS)}")
        route, kind = data.get("route"), str(data.get("kind", ""))
        if not isinstance(route, str) or not route:
            raise ValueError("a fault rule needs 'route' (a route name, '*' or 'METHOD regex')")
        if kind not in KINDS:
            raise ValueError(f"fault kind {kind!r} is not one of {list(KINDS)}")
        rule = cls(
            route=route,
            kind=kind,
            probability=float(data.get("probability", 1.0)),
            retry_after=None if data.get("retry_after") is None else float(data["retry_after"]),
            seconds=float(data.get("seconds", 0.0)),
            times=None if data.get("times") is None else int(data["times"]),
        )
        if not 0.0 <= rule.probability <= 1.0:
            raise ValueError("fault probability must be within [0, 1]")
        if kind == "latency" and rule.seconds <= 0:
            raise ValueError("a latency fault needs 'seconds' > 0")
        if " " in route:
            method, _, pattern = route.partition(" ")
            try:
                rule._method, rule._regex = method.upper(), re.compile(pattern.strip())
            except re.error as exc:
                raise ValueError(f"invalid path regex in fault route {route!r}: {exc}") from None
        return rule

    def matches(self, name: str, method: str, path: str) -> bool:
        if self._regex is not None:
            return self._method in ("*", method) and self._regex.fullmatch(path) is not None
        return self.route in ("*", name)

    def to_json(self) -> dict:
        out: dict[str, Any] = {
            "route": self.route,
            "kind": self.kind,
            "probability": self.probability,
            "injected": self.injected,
        }
        for key in ("retry_after", "times"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.kind == "latency":
            out["seconds"] = self.seconds
        return out


@dataclass
class Decision:
    """What to do with one request: an optional delay, then an optional fault."""

    delay: float = 0.0
    fault: FaultRule | None = None


class FaultInjector:
    def __init__(self, spec: dict[str, Any] | None = None) -> None:
        self._lock = threading.Lock()
        self._seed = 0
        self._rngs: dict[tuple[int, str], random.Random] = {}
        self.rules: list[FaultRule] = []
        self.generation = 0  # bumped whenever the rules change: pending latencies end early
        self.requests: dict[str, int] = defaultdict(int)
        self.injected: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.in_flight: dict[str, int] = defaultdict(int)
        if spec:
            self.configure(spec)

    def _rng(self, rule_index: int, name: str) -> random.Random:
        key = (rule_index, name)
        if key not in self._rngs:
            self._rngs[key] = random.Random(f"{self._seed}:{rule_index}:{name}")
        return self._rngs[key]

    def configure(self, spec: Any, *, replace: bool = True) -> None:
        """``{"seed": 7, "rules": [...]}`` or a bare list of rules. Validates everything first."""
        if isinstance(spec, list):
            spec = {"rules": spec}
        if not isinstance(spec, dict) or not isinstance(spec.get("rules", []), list):
            raise ValueError('faults must be {"seed": n, "rules": [...]} or a list of rules')
        unknown = set(spec) - {"seed", "rules", "replace"}
        if unknown:
            raise ValueError(f"unknown fault settings {sorted(unknown)}")
        rules = [FaultRule.from_json(r) for r in spec.get("rules", [])]
        with self._lock:
            if "seed" in spec:
                self._seed = int(spec["seed"])
            self._rngs.clear()
            self.rules = rules if spec.get("replace", replace) else self.rules + rules
            self.generation += 1
        log.info("fault rules now: %s", [r.to_json() for r in self.rules])

    def unknown_routes(self, known: set[str]) -> list[str]:
        """Route names in the rules that no route has (typos would otherwise never fire)."""
        with self._lock:
            return sorted({r.route for r in self.rules if r._regex is None and r.route != "*"} - known)

    def clear(self) -> None:
        with self._lock:
            self.rules = []
            self.generation += 1
        log.info("fault rules cleared")

    def decide(self, name: str, method: str, path: str) -> Decision:
        decision = Decision()
        with self._lock:
            self.requests[name] += 1
            for index, rule in enumerate(self.rules):
                if not rule.matches(name, method, path):
                    continue
                if rule.times is not None and rule.injected >= rule.times:
                    continue
                if self._rng(index, name).random() >= rule.probability:
                    continue
                if rule.kind == "latency":
                    decision.delay += rule.seconds
                elif decision.fault is None:
                    decision.fault = rule
                else:
                    continue
                rule.injected += 1
                self.injected[name][rule.kind] += 1
        if decision.fault is not None or decision.delay:
            log.info(
                "injecting %s%s on %s %s (%s)",
                decision.fault.kind if decision.fault else "",
                f" after {decision.delay:g}s" if decision.delay else "",
                method,
                path,
                name,
            )
        return decision

    def hold(self, seconds: float) -> None:
        """Block this thread for ``seconds``, or until the rules change (Query Service threads)."""
        generation, deadline = self.generation, time.monotonic() + seconds
        while self.generation == generation and (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, 0.05))

    async def ahold(self, seconds: float) -> None:
        """:meth:`hold` for the event loop (other requests proceed meanwhile)."""
        generation, deadline = self.generation, time.monotonic() + seconds
        # Polls the generation counter as hold() does (clearing the faults bumps it), for at most `seconds`.
        while self.generation == generation and (left := deadline - time.monotonic()) > 0:  # noqa: ASYNC110
            await asyncio.sleep(min(left, 0.05))

    def started(self, name: str) -> None:
        """A request of route ``name`` is being handled (counted until :meth:`finished`)."""
        with self._lock:
            self.in_flight[name] += 1

    def finished(self, name: str) -> None:
        with self._lock:
            self.in_flight[name] -= 1

    def stats(self) -> dict[str, Any]:
        with self._lock:
            routes = sorted(set(self.requests) | set(self.injected))
            return {
                "routes": {
                    r: {
                        "requests": self.requests.get(r, 0),
                        "faults": dict(self.injected.get(r, {})),
                        **({"inFlight": self.in_flight[r]} if self.in_flight.get(r) else {}),
                    }
                    for r in routes
                },
                "rules": [rule.to_json() for rule in self.rules],
            }

    def reset_counters(self) -> None:
        with self._lock:
            self.requests.clear()
            self.injected.clear()
