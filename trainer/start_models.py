"""The models every query starts from: M0 for S+R, M(L0) for R with --initial.

- M0 (S+R): trained on the synthetic set only, or a given checkpoint (--base). One per
  experiment, kept.
- M(L0) (R with --initial N): per seed, L0 = N pool images drawn uniformly with that seed, and
  a model trained on them from the backbone (ImageNet weights) for --base-epochs passes over L0
  (at least --steps steps) at the base learning rate. Every R strategy of that seed starts
  from this one model and this one L0, so the strategies differ by their queries alone. The
  row records L0 in `picked`, so a resumed experiment reuses the same L0 without redrawing.

Both get a results row of their own (M0: "S, base, synthetic"; M(L0): "R, start, initial"
with k = N) and their validation detections on disk, like any run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from dal.coco import CocoDataset, load_coco
from dal.errors import ConfigError, DalError
from dal.strategies import select
from dal.trainer.plan_clock import BASE, START, PlanClock
from dal.trainer.pool_scorer import PoolScorer
from dal.trainer.protocol_steps import RunTimes, Steps, fine_tune_steps, result_row
from dal.trainer.results import (
    BASE_MODE,
    BASE_SETTING,
    BASE_STRATEGY,
    START_MODE,
    START_SETTING,
    START_STRATEGY,
    ResultsFile,
)

# L0's draw uses its own stream of the seed, not the one the random strategy queries with.
INITIAL_SEED_OFFSET = 104_729


def start_name(initial: int, seed: int) -> str:
    """Folder of a start model under runs/."""
    return f"R-start-n{initial}-s{seed}"


class StartModels:
    """Trains (once) and hands out M0 and the per-seed M(L0) with their L0."""

    def __init__(
        self,
        steps: Steps,
        results: ResultsFile,
        scorer: PoolScorer,
        clock: PlanClock,
        say: Callable[[str], None],
    ) -> None:
        self.steps = steps
        self.config = steps.config
        self.results = results
        self.scorer = scorer
        self.clock = clock
        self.say = say
        self.out = steps.out
        self._base: Path | None = None

    # ------------------------------------------------------------------ keys

    def base_key(self) -> tuple[str, str, str, int, int, int]:
        return (BASE_SETTING, BASE_MODE, BASE_STRATEGY, 0, self.config.base_seed, 0)

    def start_key(self, seed: int) -> tuple[str, str, str, int, int, int]:
        return (START_SETTING, START_MODE, START_STRATEGY, self.config.initial, seed, 0)

    # ------------------------------------------------------------------ M0

    def _check_classes(self, classes: list[str], source: Path) -> None:
        pool = self.steps.pool.class_names
        if classes != pool:
            raise ConfigError(
                f"{source}: classes {classes} differ from the pool's {pool}",
                hint="render the synthetic set with the pool's class names (--model PATH:CLASS)",
            )

    def base(self) -> Path:
        """M0: the given checkpoint, or one trained on the synthetic set (once; kept)."""
        if self._base is not None:
            return self._base
        c = self.config
        path = c.base if c.base is not None else self.out / "base" / "best.pt"
        if self.results.done(self.base_key()) and path.is_file():
            self._base = path
            return path
        started = time.perf_counter()
        train_s = 0.0
        if c.base is None:
            if c.synthetic is None:
                raise ConfigError(
                    "S+R runs need a synthetic base model",
                    hint="pass --synthetic COCO (rendered with `dal render`) or --base CKPT",
                )
            self._check_classes(load_coco(c.synthetic).class_names, c.synthetic)
            self.say(f"training the base model M0 on {c.synthetic} ({c.base_epochs} epochs)")
            self.steps.train(
                train=c.synthetic,
                out=self.out / "base",
                epochs=c.base_epochs,
                lr=c.base_lr,
                seed=c.base_seed,
            )
            (self.out / "base" / "last.pt").unlink(missing_ok=True)
            train_s = time.perf_counter() - started
        from dal.trainer.checkpoint import load_checkpoint

        self._check_classes(list(load_checkpoint(path).config.class_names), path)
        metrics, detections = self.steps.evaluate(path, self.out / "base")
        wall = time.perf_counter() - started
        times = RunTimes(0.0, train_s, wall - train_s)
        self.results.add(result_row(self.base_key(), 0, metrics, times, wall, 0, [], detections))
        self.clock.finish(BASE, wall)
        what = "given checkpoint" if c.base is not None else "synthetic only"
        self.say(f"base model M0 ({what}): AP {metrics['AP']:.3f} AP50 {metrics['AP50']:.3f}")
        self._base = path
        return path

    # ------------------------------------------------------------------ M(L0)

    def initial_set(self, seed: int) -> list[int]:
        """L0 of this seed: from its start-model row when there is one, else drawn now."""
        row = self.results.done(self.start_key(seed))
        if row is not None:
            return [int(i) for i in str(row["picked"]).split(";") if i]
        picked = select(
            "random",
            self.scorer.unscored(),
            self.config.initial,
            seed=seed + INITIAL_SEED_OFFSET,
        )
        return [int(i) for i in picked]

    def start(self, seed: int) -> tuple[Path, list[int]]:
        """M(L0) and L0 of this seed; trained and evaluated here the first time."""
        c = self.config
        run_dir = self.out / "runs" / start_name(c.initial, seed)
        checkpoint = run_dir / "best.pt"
        labelled = self.initial_set(seed)
        if self.results.done(self.start_key(seed)):
            if not checkpoint.is_file():
                raise DalError(
                    f"{checkpoint}: the start model of seed {seed} is missing, so the R runs "
                    "that start from it cannot run",
                    hint=f"delete the 'R,start' row of seed {seed} from results.csv to train "
                    "it again (its L0 is drawn again with the same seed)",
                )
            return checkpoint, labelled
        steps = fine_tune_steps(len(labelled), c.batch_size, c.base_epochs, c.steps)
        self.say(
            f"training the R start model M(L0) of seed {seed} on {len(labelled)} random pool "
            f"images from the backbone ({steps} steps)"
        )
        started = time.perf_counter()
        extra = {"start_model": {"initial": c.initial, "seed": seed}}
        checkpoint, done_steps = self.steps.train_on(
            run_dir, None, labelled, steps, seed, c.base_lr, extra
        )
        train_s = time.perf_counter() - started
        metrics, detections = self.steps.evaluate(checkpoint, run_dir)
        wall = time.perf_counter() - started
        times = RunTimes(0.0, train_s, wall - train_s)
        row = result_row(
            self.start_key(seed),
            len(labelled),
            metrics,
            times,
            wall,
            done_steps,
            labelled,
            detections,
        )
        self.results.add(row)
        self.clock.finish(START, wall)
        done, eta = self.clock.parts()
        self.say(
            f"{done} R start model seed {seed}: {len(labelled)} labelled, AP {metrics['AP']:.3f} "
            f"AP50 {metrics['AP50']:.3f} ({wall:.0f} s){eta}"
        )
        return checkpoint, labelled


def check_initial(initial: int, pool: CocoDataset) -> None:
    """--initial must leave images to query."""
    if initial < 0:
        raise ConfigError("--initial must be 0 (off) or a number of pool images")
    if initial and initial >= len(pool.images):
        raise ConfigError(
            f"--initial {initial}: the pool has only {len(pool.images)} images, none would be "
            "left to query",
            hint="give a smaller --initial or a larger --real pool",
        )
