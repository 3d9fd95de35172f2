"""The paper's experiment protocol as runs: (setting, strategy, k, seed, cycle) -> AP.

Pure orchestration over the project's own pieces: `train` fine-tunes, `evaluate` measures
AP@[0.5:0.95] on the validation split, `export_onnx` + the agent's `Detector` score the pool
(max-margin per box, summed per image, and the P2 feature: what the edge agent would compute),
`select` picks the images. Ground truth is the labelling oracle.

- Pool U: the real training split. Validation: a separate split (other scenes).
- S+R: start from the synthetic base model M0 (trained here on the synthetic set, or given).
  R: start from the backbone alone (ImageNet weights) and random picks only; a backbone with an
  untrained head has nothing to score with.
- single: one cycle; the pool is scored once by the starting model, k images are picked,
  labelled and the starting model is fine-tuned on them.
- multi: `cycles` cycles of a fixed k; each cycle re-scores the pool with the latest model,
  adds k new images to the labelled set L and fine-tunes the latest model on all of L.
- random is repeated over every seed; the other strategies run with the first seed only.
  Random picks ignore scores, so the same seed picks the same images for R and S+R.
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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from dal.coco import CocoDataset, load_coco, read_image, write_coco
from dal.errors import ConfigError, DalError
from dal.scoring import image_score
from dal.strategies import Candidates, select
from dal.trainer.protocol_config import ProtocolConfig
from dal.trainer.protocol_plan import RANDOM, Chain
from dal.trainer.report import BASE_MODE, BASE_SETTING, BASE_STRATEGY, ResultsFile

log = logging.getLogger(__name__)

# Each cycle's random picks use another stream of the same seed.
_CYCLE_SEED_STRIDE = 7919


@dataclass
class RunTimes:
    select_s: float = 0.0
    train_s: float = 0.0
    eval_s: float = 0.0


@dataclass
class Outcome:
    """What `Protocol.run` did in this call (tests and the CLI report it)."""

    trained: int = 0
    skipped: int = 0
    rows: list[dict] = field(default_factory=list)


def steps_per_epoch(n_images: int, batch_size: int) -> int:
    """As train()'s DataLoader counts them (drop_last once the set exceeds one batch)."""
    return n_images // batch_size if n_images > batch_size else 1


def fine_tune_steps(labelled: int, batch_size: int, epochs: int, min_steps: int) -> int:
    """`epochs` passes over the labelled set, at least `min_steps`: grows with L."""
    return max(min_steps, epochs * -(-labelled // batch_size))


def repeated_subset(pool: CocoDataset, ids: list[int], samples: int) -> dict[str, Any]:
    """COCO dict of the images `ids`, repeated in turn up to `samples` entries.

    Copies get fresh image ids (the original stays in `source_id`) and point at the same file,
    so one epoch over the result is `samples` draws from the labelled set.
    """
    doc = pool.subset(ids).to_json()
    by_image: dict[int, list[dict]] = {}
    for ann in doc["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    images, annotations = [], []
    for n in range(max(samples, len(ids))):
        src = doc["images"][n % len(ids)]
        images.append({**src, "id": n + 1, "source_id": src["id"]})
        for ann in by_image.get(src["id"], []):
            annotations.append({**ann, "id": len(annotations) + 1, "image_id": n + 1})
    return {"images": images, "annotations": annotations, "categories": doc["categories"]}


class Protocol:
    """Runs chains against one results.csv; finished runs are skipped."""

    def __init__(
        self, config: ProtocolConfig, say: Callable[[str], None] = print, progress: bool = False
    ) -> None:
        self.config = config
        self.say = say
        self.progress = progress
        self.out = Path(config.out)
        self.real = load_coco(config.real)
        self.val = load_coco(config.val)
        self._check_classes()
        self.results = ResultsFile(self.out / "results.csv")
        self._scored: dict[Path, Candidates] = {}
        self._base: Path | None = None
        self._walls: list[float] = []
        self._done = 0
        self._total = 0

    # ------------------------------------------------------------------ set-up

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

    def _check_same_classes(self, classes: list[str], source: Path) -> None:
        if classes != self.real.class_names:
            raise ConfigError(
                f"{source}: classes {classes} differ from the pool's {self.real.class_names}",
                hint="render the synthetic set with the pool's class names (--model PATH:CLASS)",
            )

    def _train(self, **overrides: Any):
        from dal.trainer.train import TrainSettings, train

        c = self.config
        settings = TrainSettings(
            **{
                "arch": c.arch,
                "backbone_weights": c.backbone_weights,
                "input_size": c.input_size,
                "batch_size": c.batch_size,
                "augment": c.augment,
                "proposals": c.proposals,
                "score_threshold": c.score_threshold,
                "progress": self.progress,
                "device": c.device,
                "amp": c.amp,
                **overrides,
            }
        )
        return train(settings)

    def _evaluate(self, checkpoint: Path) -> dict[str, Any]:
        from dal.trainer.checkpoint import load_checkpoint
        from dal.trainer.evaluate import evaluate, torch_predictor

        ckpt = load_checkpoint(checkpoint)
        predictor = torch_predictor(ckpt.build())
        metrics, _ = evaluate(predictor, self.val, list(ckpt.config.class_names), progress=False)
        return metrics

    def base_checkpoint(self) -> Path:
        """M0: the given checkpoint, or one trained on the synthetic set (once; kept)."""
        if self._base is not None:
            return self._base
        c = self.config
        key = (BASE_SETTING, BASE_MODE, BASE_STRATEGY, 0, c.base_seed, 0)
        path = c.base if c.base is not None else self.out / "base" / "best.pt"
        if self.results.done(key) and path.is_file():
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
            self._check_same_classes(load_coco(c.synthetic).class_names, c.synthetic)
            self.say(f"training the base model M0 on {c.synthetic} ({c.base_epochs} epochs)")
            self._train(
                train=c.synthetic,
                out=self.out / "base",
                epochs=c.base_epochs,
                lr=c.base_lr,
                seed=c.base_seed,
            )
            (self.out / "base" / "last.pt").unlink(missing_ok=True)
            train_s = time.perf_counter() - started
        from dal.trainer.checkpoint import load_checkpoint

        self._check_same_classes(list(load_checkpoint(path).config.class_names), path)
        metrics = self._evaluate(path)
        wall = time.perf_counter() - started
        self.results.add(_row(key, 0, metrics, RunTimes(0.0, train_s, wall - train_s), wall, 0, []))
        self.say(f"base model M0: AP {metrics['AP']:.3f} AP50 {metrics['AP50']:.3f}")
        self._base = path
        return path

    # ------------------------------------------------------------------ one cycle

    def _candidates(self, model: Path | None, strategy: str) -> Candidates:
        """The whole pool as candidates; random gets no scores (its picks ignore them)."""
        ids = [str(rec.id) for rec in self.real.images]
        if strategy == RANDOM or model is None:
            return Candidates(ids, np.zeros(len(ids)), np.zeros((len(ids), 1)))
        if model not in self._scored:
            self._scored[model] = self._score(model)
        return self._scored[model]

    def _score(self, checkpoint: Path) -> Candidates:
        """Score every pool image the way the agent does: exported ONNX, letterboxed input."""
        from dal.agent.detector import Detector
        from dal.trainer.export import export_onnx

        c = self.config
        onnx_path = export_onnx(checkpoint, checkpoint.with_suffix(".onnx"))
        import torch

        # onnxruntime gets as many threads as torch was given (--threads): on a shared CPU
        # more threads than free cores spin-wait and run several times slower
        detector = Detector(
            onnx_path,
            providers=("CPUExecutionProvider",),
            warmup=False,
            threads=torch.get_num_threads(),
        )
        try:
            scores, features = [], []
            for rec in self.real.images:
                det = detector.detect(read_image(self.real.image_path(rec)))
                scores.append(image_score(det.probs, c.score_method, c.aggregate))
                features.append(det.feature)
        finally:
            detector.close()
        onnx_path.unlink(missing_ok=True)
        ids = [str(rec.id) for rec in self.real.images]
        return Candidates(ids, np.asarray(scores), np.stack(features))

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

    def _fine_tune(
        self, chain: Chain, cycle: int, init: Path | None, labelled: list[int]
    ) -> tuple[Path, int]:
        c = self.config
        run_dir = self.out / "runs" / chain.name / f"c{cycle}"
        steps = fine_tune_steps(len(labelled), c.batch_size, c.epochs, c.steps)
        samples = steps * c.batch_size
        train_json = write_coco(
            repeated_subset(self.real, labelled, samples), run_dir / "labelled.json"
        )
        result = self._train(
            train=train_json,
            train_images=self.real.image_root,
            out=run_dir,
            init=init,
            epochs=1,
            lr=c.lr,
            seed=chain.seed,
            warmup_steps=max(1, steps // 4),
            extra_summary={"experiment": {"chain": chain.name, "cycle": cycle}},
        )
        (run_dir / "last.pt").unlink(missing_ok=True)  # optimizer state: not needed again
        return result.best_path, steps_per_epoch(max(samples, len(labelled)), c.batch_size)

    # ------------------------------------------------------------------ chains

    def _resume_point(self, chain: Chain) -> tuple[int, list[int], Path | None]:
        """First cycle to run, labelled ids so far and the model to continue from."""
        labelled: list[int] = []
        model: Path | None = None
        for cycle in range(1, chain.cycles + 1):
            row = self.results.done(chain.key(cycle))
            if row is None:
                return cycle, labelled, model
            labelled += [int(i) for i in str(row["picked"]).split(";") if i]
            model = self.out / "runs" / chain.name / f"c{cycle}" / "best.pt"
        return chain.cycles + 1, labelled, model

    def run_chain(self, chain: Chain, outcome: Outcome) -> None:
        first, labelled, model = self._resume_point(chain)
        outcome.skipped += first - 1
        if first > chain.cycles:
            return
        if model is None:
            model = self.base_checkpoint() if chain.setting == "S+R" else None
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

    def _run_cycle(
        self,
        chain: Chain,
        cycle: int,
        model: Path | None,
        labelled: list[int],
        outcome: Outcome,
    ) -> Path:
        started = time.perf_counter()
        times = RunTimes()
        picked = self._pick(chain, model, labelled, cycle)
        labelled += picked
        times.select_s = time.perf_counter() - started
        checkpoint, steps = self._fine_tune(chain, cycle, model, labelled)
        times.train_s = time.perf_counter() - started - times.select_s
        metrics = self._evaluate(checkpoint)
        wall = time.perf_counter() - started
        times.eval_s = wall - times.train_s - times.select_s
        row = _row(chain.key(cycle), len(labelled), metrics, times, wall, steps, picked)
        self.results.add(row)
        outcome.trained += 1
        outcome.rows.append(row)
        self._walls.append(wall)
        self._done += 1
        left = (self._total - self._done) * sum(self._walls) / len(self._walls)
        self.say(
            f"[{self._done}/{self._total}] {chain.describe(cycle)}: {len(labelled)} labelled, "
            f"AP {metrics['AP']:.3f} AP50 {metrics['AP50']:.3f} "
            f"({wall:.0f} s: select {times.select_s:.0f}, train {times.train_s:.0f}, "
            f"eval {times.eval_s:.0f}); about {left / 60:.0f} min left"
        )
        return checkpoint

    def run(self, chains: list[Chain]) -> Outcome:
        outcome = Outcome()
        self._total = sum(ch.cycles for ch in chains)
        pending = sum(
            1 for ch in chains for t in range(1, ch.cycles + 1) if not self.results.done(ch.key(t))
        )
        self._done = self._total - pending
        self.say(f"{self._total} runs planned, {self._done} already in results.csv")
        if any(ch.setting == "S+R" for ch in chains) and pending:
            self.base_checkpoint()
        for chain in chains:
            self.run_chain(chain, outcome)
        return outcome


def _row(
    key: tuple[str, str, str, int, int, int],
    labelled: int,
    metrics: dict[str, Any],
    times: RunTimes,
    wall: float,
    steps: int,
    picked: list[int],
) -> dict[str, Any]:
    setting, mode, strategy, k, seed, cycle = key
    return {
        "setting": setting,
        "mode": mode,
        "strategy": strategy,
        "k": k,
        "seed": seed,
        "cycle": cycle,
        "labelled": labelled,
        "AP": metrics["AP"],
        "AP50": metrics["AP50"],
        "AP75": metrics["AP75"],
        "wall_s": round(wall, 2),
        "select_s": round(times.select_s, 2),
        "train_s": round(times.train_s, 2),
        "eval_s": round(times.eval_s, 2),
        "steps": steps,
        "picked": ";".join(str(i) for i in picked),
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
    }
