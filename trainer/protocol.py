"""The paper's experiment protocol as runs: (setting, strategy, k, seed, cycle) -> AP.

Pure orchestration over the project's own pieces: `train` fine-tunes, `evaluate` measures
AP@[0.5:0.95] on the validation split, `export_onnx` + the agent's `Detector` score the pool
(max-margin per box, summed per image, and the P2 feature: what the edge agent would compute),
`select` picks the images. Ground truth is the labelling oracle.

- Pool U: the real training split. Validation: a separate split (other scenes).
- S+R: start from the synthetic base model M0 (trained here on the synthetic set, or given).
- R with --initial N (the standard real-only protocol): per seed, start from M(L0), a model
  trained from the backbone on N random pool images L0 (start_models.py); every strategy
  queries from the rest of the pool with L = L0.
- R without --initial: start from the backbone alone (ImageNet weights) and random picks only;
  a backbone with an untrained head has nothing to score with.
- single: one cycle; the pool is scored once by the starting model, k images are picked,
  labelled and the starting model is fine-tuned on them (plus L0 for R with --initial).
- multi: `cycles` cycles of a fixed k; each cycle re-scores the pool with the latest model,
  adds k new images to the labelled set L and fine-tunes the latest model on all of L.
- Seeds: a chain's seed is its training seed (weights' init of new layers, data order,
  augmentation) and its query seed (random's draw, DBAL's k-means seeding; cycle c uses
  seed + 7919·(c-1)); with --initial it also draws L0.
- A fine-tuning run's budget grows with the labelled set L: `epochs` passes over L, and at
  least `steps` SGD steps (batch `batch_size`; the labelled images repeat to fill them), so a
  larger k is not trained less per image. The final model is evaluated once: the validation
  split never picks an epoch or stops a run (it would leak into the reported AP).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dal.coco import load_coco
from dal.errors import ConfigError, DalError
from dal.strategies import Candidates, select
from dal.trainer.plan_clock import BASE, RUN, START, PlanClock
from dal.trainer.pool_scorer import PoolScorer
from dal.trainer.protocol_config import ProtocolConfig
from dal.trainer.protocol_plan import RANDOM, Chain
from dal.trainer.protocol_steps import RunTimes, Steps, fine_tune_steps, result_row
from dal.trainer.results import ResultsFile
from dal.trainer.start_models import StartModels, check_initial

log = logging.getLogger(__name__)

# Each cycle's picks use another stream of the same seed.
_CYCLE_SEED_STRIDE = 7919


@dataclass
class Outcome:
    """What `Protocol.run` did in this call (tests and the CLI report it)."""

    trained: int = 0
    skipped: int = 0
    rows: list[dict] = field(default_factory=list)


class Protocol:
    """Runs chains against one results.csv; finished runs are skipped."""

    def __init__(
        self, config: ProtocolConfig, say: Callable[[str], None] = print, progress: bool = False
    ) -> None:
        self.config = config
        self.say = say
        self.out = Path(config.out)
        self.real = load_coco(config.real)
        self.val = load_coco(config.val)
        self._check_classes()
        check_initial(config.initial, self.real)
        self.results = ResultsFile(self.out / "results.csv")
        self.steps = Steps(config, self.real, self.val, progress)
        self.scorer = PoolScorer(self.real, config.score_method, config.aggregate, progress)
        self.clock = PlanClock()
        self.starts = StartModels(self.steps, self.results, self.scorer, self.clock, say)

    def _check_classes(self) -> None:
        real, val = self.real.class_names, self.val.class_names
        if real != val:
            raise ConfigError(
                f"{self.config.val}: classes {val} differ from the pool's {real} "
                f"({self.config.real})",
                hint="import both splits with the same --classes",
            )
        if not self.real.images:
            raise ConfigError(f"{self.config.real}: the pool has no images")

    # ------------------------------------------------------------------ one cycle

    def _candidates(self, model: Path | None, strategy: str) -> Candidates:
        """The whole pool as candidates; random gets no scores (its picks ignore them)."""
        if strategy == RANDOM or model is None:
            return self.scorer.unscored()
        return self.scorer.scored(model)

    def _pick(self, chain: Chain, model: Path | None, labelled: list[int], cycle: int) -> list[int]:
        pool = self._candidates(model, chain.strategy)
        taken = {str(i) for i in labelled}
        mask = np.array([i in taken for i in pool.ids], dtype=bool)
        known = None
        if mask.any():
            known = Candidates(
                [i for i in pool.ids if i in taken], pool.scores[mask], pool.features[mask]
            )
        seed = chain.seed + _CYCLE_SEED_STRIDE * (cycle - 1)
        picked = select(
            chain.strategy,
            pool,
            chain.k,
            beta=self.config.beta,
            seed=seed,
            labelled=known,
            allow_labelled=self.config.allow_labelled,
        )
        return [int(i) for i in picked]

    def _run_dir(self, chain: Chain, cycle: int) -> Path:
        return self.out / "runs" / chain.name / f"c{cycle}"

    def _run_cycle(
        self,
        chain: Chain,
        cycle: int,
        model: Path | None,
        labelled: list[int],
        outcome: Outcome,
    ) -> Path:
        c = self.config
        started = time.perf_counter()
        times = RunTimes()
        picked = self._pick(chain, model, labelled, cycle)
        labelled += picked
        times.select_s = time.perf_counter() - started
        run_dir = self._run_dir(chain, cycle)
        steps = fine_tune_steps(len(labelled), c.batch_size, c.epochs, c.steps)
        extra = {"chain": chain.name, "cycle": cycle}
        checkpoint, steps = self.steps.train_on(
            run_dir, model, labelled, steps, chain.seed, c.lr, extra
        )
        times.train_s = time.perf_counter() - started - times.select_s
        metrics, detections = self.steps.evaluate(checkpoint, run_dir)
        wall = time.perf_counter() - started
        times.eval_s = wall - times.train_s - times.select_s
        row = result_row(
            chain.key(cycle), len(labelled), metrics, times, wall, steps, picked, detections
        )
        self.results.add(row)
        outcome.trained += 1
        outcome.rows.append(row)
        self.clock.finish(RUN, wall)
        done, eta = self.clock.parts()
        self.say(
            f"{done} {chain.describe(cycle)}: {len(labelled)} labelled, "
            f"AP {metrics['AP']:.3f} AP50 {metrics['AP50']:.3f} "
            f"({wall:.0f} s: select {times.select_s:.0f}, train {times.train_s:.0f}, "
            f"eval {times.eval_s:.0f}){eta}"
        )
        return checkpoint

    # ------------------------------------------------------------------ chains

    def _from_start(self, chain: Chain) -> bool:
        return chain.setting == "R" and self.config.initial > 0

    def _resume_point(self, chain: Chain) -> tuple[int, list[int], Path | None]:
        """First cycle to run, labelled ids so far and the model to continue from."""
        labelled = self.starts.initial_set(chain.seed) if self._from_start(chain) else []
        model: Path | None = None
        for cycle in range(1, chain.cycles + 1):
            row = self.results.done(chain.key(cycle))
            if row is None:
                return cycle, labelled, model
            labelled += [int(i) for i in str(row["picked"]).split(";") if i]
            model = self._run_dir(chain, cycle) / "best.pt"
        return chain.cycles + 1, labelled, model

    def _start_model(self, chain: Chain) -> Path | None:
        if chain.setting == "S+R":
            return self.starts.base()
        if self._from_start(chain):
            return self.starts.start(chain.seed)[0]
        return None

    def run_chain(self, chain: Chain, outcome: Outcome) -> None:
        first, labelled, model = self._resume_point(chain)
        outcome.skipped += first - 1
        if first > chain.cycles:
            return
        if model is None:
            model = self._start_model(chain)
        elif not model.is_file():
            raise DalError(
                f"{model}: checkpoint of a finished cycle of {chain.name} is missing, so its "
                "next cycle cannot start",
                hint=f"delete the {chain.name} rows from results.csv to run the chain again",
            )
        for cycle in range(first, chain.cycles + 1):
            previous = model
            model = self._run_cycle(chain, cycle, model, labelled, outcome)
            ours = previous is not None and previous.parent.parent == self.out / "runs" / chain.name
            if chain.mode == "multi" and ours and not self.config.keep_checkpoints:
                previous.unlink(missing_ok=True)
        if chain.mode == "single" and not self.config.keep_checkpoints and model is not None:
            model.unlink(missing_ok=True)

    def _plan_clock(self, chains: list[Chain]) -> int:
        """Count the plan (start models included) on the clock; returns the runs pending."""
        keys = [ch.key(t) for ch in chains for t in range(1, ch.cycles + 1)]
        pending = sum(1 for key in keys if not self.results.done(key))
        self.clock.plan(RUN, len(keys), len(keys) - pending)
        if any(ch.setting == "S+R" for ch in chains):
            self.clock.plan(BASE, 1, 1 if self.results.done(self.starts.base_key()) else 0)
        seeds = sorted({ch.seed for ch in chains if self._from_start(ch)})
        started = sum(1 for s in seeds if self.results.done(self.starts.start_key(s)))
        self.clock.plan(START, len(seeds), started)
        return pending

    def run(self, chains: list[Chain]) -> Outcome:
        outcome = Outcome()
        pending = self._plan_clock(chains)
        starts = self.clock.planned[START]
        self.say(
            f"{self.clock.total} runs planned ({self.clock.planned[RUN]} query runs"
            + (f", {starts} R start models" if starts else "")
            + (", the base model M0" if self.clock.planned[BASE] else "")
            + f"), {self.clock.done} already in results.csv"
        )
        if any(ch.setting == "S+R" for ch in chains) and pending:
            self.starts.base()
        for chain in chains:
            self.run_chain(chain, outcome)
        return outcome
