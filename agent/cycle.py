"""Active-learning cycles on the edge: when one starts, what it picks, and how that is recorded.

`decide` is the trigger rule as a pure function (a command, pool growth, a timer, drift);
`CycleTrigger` keeps the counters it needs. `plan` runs the configured query strategy on the
pool (read-only: `dal agent select --dry-run` shows it), `run_cycle` also writes the result:
one outbox transaction queues the picks for shipping and logs the cycle (see outbox.py).

The strategy's seed is the configured seed plus the cycle number, so cycles differ from each
other and a cycle is reproducible from its log row.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from dal.agent.config import CycleConfig, QueryConfig
from dal.agent.outbox import CycleRecord, Outbox
from dal.agent.pool import Pool
from dal.agent.pool_schema import LABELLED, POOLED, SHIPPED
from dal.strategies import Candidates, select

logger = logging.getLogger(__name__)

COMMAND, POOL_GROWTH, TIMER, DRIFT = "command", "pool_growth", "timer", "drift"


def decide(
    config: CycleConfig,
    *,
    pooled: int,
    grown: int,
    since_last_s: float,
    drift: bool,
    requested: bool,
) -> str | None:
    """Why a cycle should start now, or None. A command needs one pooled image; the automatic
    triggers need `min_pool` of them."""
    if requested:
        return COMMAND if pooled >= 1 else None
    if pooled < config.min_pool:
        return None
    if config.pool_growth and grown >= config.pool_growth:
        return POOL_GROWTH
    if config.interval_s and since_last_s >= config.interval_s:
        return TIMER
    if config.on_drift and drift:
        return DRIFT
    return None


class CycleTrigger:
    """Counts what `decide` needs. Thread-safe enough: ints and a float, one writer each."""

    def __init__(self, config: CycleConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self._clock = clock
        self.grown = 0
        self._last = clock()
        self._request: dict[str, Any] | None = None

    def added(self, n: int = 1) -> None:
        self.grown += n

    def request(self, **params: Any) -> None:
        """Start a cycle at the next check (an MQTT command); params e.g. k override settings."""
        self._request = dict(params)

    def check(self, pooled: int, drift: bool) -> tuple[str, dict[str, Any]] | None:
        """(reason, command params) when a cycle is due; call `done()` once it ran."""
        request = self._request
        reason = decide(
            self.config,
            pooled=pooled,
            grown=self.grown,
            since_last_s=self._clock() - self._last,
            drift=drift,
            requested=request is not None,
        )
        if reason is None:
            return None
        return reason, dict(request or {}) if reason == COMMAND else {}

    def done(self, reason: str) -> None:
        self.grown = 0
        self._last = self._clock()
        if reason == COMMAND:
            self._request = None

    def cancel_request(self) -> None:
        self._request = None


class CandidateSource(Protocol):
    """What a query reads: the Pool, or the CLI's read-only view of it."""

    def candidates(self, states: Iterable[str] = ...) -> Candidates: ...


@dataclass(frozen=True)
class Plan:
    """What a cycle would pick."""

    ids: list[str]
    settings: QueryConfig
    seed: int
    pool_size: int


def plan(pool: CandidateSource, settings: QueryConfig, cycle_number: int) -> Plan:
    """Run the strategy on the pooled samples (read-only). Shipped and labelled samples are
    passed as the labelled set: core-set starts from them, and `allow_labelled` lets them in."""
    candidates = pool.candidates((POOLED,))
    labelled = pool.candidates((SHIPPED, LABELLED))
    seed = settings.seed + cycle_number
    ids = select(
        settings.strategy,
        candidates,
        settings.k,
        beta=settings.beta,
        seed=seed,
        labelled=labelled if len(labelled) else None,
        allow_labelled=settings.allow_labelled,
    )
    return Plan(ids, settings, seed, len(candidates))


@dataclass(frozen=True)
class CycleResult:
    record: CycleRecord
    queued: list[str]
    seconds: float


def run_cycle(
    pool: Pool, outbox: Outbox, settings: QueryConfig, reason: str, model_version: str
) -> CycleResult:
    """Select and queue for shipping in one transaction; see the module docstring."""
    started = time.perf_counter()
    chosen = plan(pool, settings, outbox.next_cycle())
    record, queued = outbox.enqueue_cycle(
        chosen.ids,
        reason=reason,
        strategy=settings.strategy,
        k=settings.k,
        beta=settings.beta,
        seed=chosen.seed,
        model_version=model_version,
        pool_size=chosen.pool_size,
    )
    seconds = time.perf_counter() - started
    logger.info(
        "cycle %d (%s): %s picked %d of %d pooled (k=%d, beta=%g) in %.2f s",
        record.cycle,
        reason,
        settings.strategy,
        len(queued),
        chosen.pool_size,
        settings.k,
        settings.beta,
        seconds,
    )
    return CycleResult(record, queued, seconds)
