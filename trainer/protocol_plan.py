"""Which runs an experiment makes: chains of (setting, mode, strategy, k, seed) cycles.

A chain is the unit that shares one labelled set: a single cycle, or several cycles of a fixed
k that each add k images. `plan` turns the CLI's lists into chains in the order they run; it
is pure, so the plan can be written to experiment.json before anything trains.
"""

from __future__ import annotations

from dataclasses import dataclass

from dal.errors import ConfigError

SETTINGS = ("R", "S+R")
MODES = ("single", "multi")
RANDOM = "random"


@dataclass(frozen=True)
class Chain:
    """Runs that share one labelled set: one cycle ('single') or several ('multi')."""

    setting: str
    mode: str
    strategy: str
    k: int
    seed: int
    cycles: int = 1

    def key(self, cycle: int) -> tuple[str, str, str, int, int, int]:
        return (self.setting, self.mode, self.strategy, self.k, self.seed, cycle)

    @property
    def name(self) -> str:
        setting = self.setting.replace("+", "")
        return f"{setting}-{self.mode}-{self.strategy}-k{self.k}-s{self.seed}"

    def describe(self, cycle: int) -> str:
        text = f"{self.setting} {self.strategy} k={self.k} seed {self.seed}"
        return text + (f" cycle {cycle}/{self.cycles}" if self.mode == "multi" else "")


def plan(
    settings: list[str],
    strategies: list[str],
    ks: list[int],
    seeds: list[int],
    cycles: int = 0,
    cycle_k: int = 0,
    cycle_strategies: list[str] | None = None,
    repeat_all: bool = False,
    initial: int = 0,
) -> list[Chain]:
    """Every chain to run, in order: single-cycle runs by k, then multi-cycle chains.

    `repeat_all` runs the deterministic strategies over every seed too: their picks barely
    change (dbal's k-means seeding does), the training noise is what gets measured. With
    `initial` (R starts from M(L0)), R runs every strategy and its cycles too, and every
    strategy runs over every seed, since the seed changes L0 and the paired comparison with
    random needs each seed."""
    if not seeds:
        raise ConfigError("--seeds: give at least one seed")
    if any(k < 1 for k in ks) or (cycles and cycle_k < 1):
        raise ConfigError("--k and --cycle-k values must be at least 1")
    unknown = [s for s in settings if s not in SETTINGS]
    if unknown:
        raise ConfigError(f"--settings {unknown}: choose from {', '.join(SETTINGS)}")
    every_seed = repeat_all or initial > 0

    def seeds_for(strategy: str) -> list[int]:
        return seeds if strategy == RANDOM or every_seed else seeds[:1]

    def queries(setting: str, strategy: str) -> bool:
        return setting == "S+R" or initial > 0 or strategy == RANDOM

    chains = []
    for k in ks:
        for setting in settings:
            for strategy in strategies:
                if queries(setting, strategy):
                    chains += [
                        Chain(setting, "single", strategy, k, s) for s in seeds_for(strategy)
                    ]
    if cycles:
        for setting in settings:
            for strategy in cycle_strategies or ["dbal"]:
                if setting == "S+R" or initial > 0:
                    chains += [
                        Chain(setting, "multi", strategy, cycle_k, s, cycles)
                        for s in seeds_for(strategy)
                    ]
    return chains


def plan_notes(settings: list[str], strategies: list[str], cycles: int, initial: int) -> list[str]:
    """What the plan leaves out that the command line asked for, said plainly."""
    if "R" not in settings or initial > 0:
        return []
    notes = []
    dropped = [s for s in strategies if s != RANDOM]
    if dropped:
        notes.append(
            "R without --initial starts from the ImageNet backbone alone and runs random only "
            f"({', '.join(dropped)} not run for R: an untrained head has nothing to score "
            "with); give --initial N to start R from a model trained on N random real images"
        )
    if cycles:
        notes.append("R without --initial runs no multi-cycle chains (--cycles is S+R only)")
    return notes
