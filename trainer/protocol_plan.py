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
) -> list[Chain]:
    """Every chain to run, in order: single-cycle runs by k, then multi-cycle chains.

    `repeat_all` runs the deterministic strategies over every seed too: their picks barely
    change (dbal's k-means seeding does), the training noise is what gets measured."""
    if not seeds:
        raise ConfigError("--seeds: give at least one seed")
    if any(k < 1 for k in ks) or (cycles and cycle_k < 1):
        raise ConfigError("--k and --cycle-k values must be at least 1")
    unknown = [s for s in settings if s not in SETTINGS]
    if unknown:
        raise ConfigError(f"--settings {unknown}: choose from {', '.join(SETTINGS)}")

    def seeds_for(strategy: str) -> list[int]:
        return seeds if strategy == RANDOM or repeat_all else seeds[:1]

    chains = []
    for k in ks:
        for setting in settings:
            for strategy in strategies:
                if setting == "R" and strategy != RANDOM:
                    continue
                chains += [Chain(setting, "single", strategy, k, s) for s in seeds_for(strategy)]
    if cycles and "S+R" in settings:
        for strategy in cycle_strategies or ["dbal"]:
            chains += [
                Chain("S+R", "multi", strategy, cycle_k, s, cycles) for s in seeds_for(strategy)
            ]
    return chains
