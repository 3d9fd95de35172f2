"""The paper's loop end to end, on one machine, on data this project makes itself.

Default (networked): the whole system on CPU, no camera, no external broker.
1. a part mesh (`dal.blender.parts`) is rendered twice with Cycles: a synthetic training set
   (preset 'paper') and "workbench" frames (preset 'workbench'). The workbench frames are
   RENDERED STAND-INS for real camera frames, not real data: the point is the loop;
2. the base model M0 is trained on the synthetic set;
3. a local MQTT broker starts (mosquitto when installed, else an embedded amqtt), then the
   trainer service (ground-truth oracle = the workbench pool's COCO, promotion gate, signed
   model publishing) and the edge agent (folder source replaying the workbench pool);
4. each cycle: an MQTT command makes the agent query its pool (DBAL), ship the picks; the oracle
   labels them; the trainer fine-tunes, gates, publishes; the agent verifies the signature,
   hot-swaps the model and re-scores its pool before the next cycle.
Writes results.json, ap_vs_labels.png and cycleN-picks.jpg (the picks with their labels).

`--offline`: the same loop without network, broker or Blender (procedural images, direct calls).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from dal.coco import load_coco, read_image, write_coco
from dal.errors import DalError
from dal.strategies import STRATEGIES, Candidates, select
from dal.trainer.device import add_device_arguments

log = logging.getLogger(__name__)

AGENT_ID = "bench1"
STAND_IN_NOTE = (
    "the 'workbench' frames are rendered stand-ins for real camera frames, not real data"
)


@dataclass(frozen=True)
class DemoPlan:
    size: tuple[int, int]
    synthetic: int
    pool: int
    val: int
    base_epochs: int
    cycle_epochs: int
    samples: int = 4  # Cycles samples per pixel (networked mode)
    cycle_min_steps: int = 60  # fewest SGD steps per fine-tune, however few the labels


PLANS = {
    "fast": DemoPlan(
        size=(320, 192),
        synthetic=24,
        pool=24,
        val=8,
        base_epochs=2,
        cycle_epochs=1,
        cycle_min_steps=6,
    ),
    "full": DemoPlan(
        size=(320, 192), synthetic=80, pool=60, val=20, base_epochs=6, cycle_epochs=3, samples=8
    ),
}


def _say(text: str) -> None:
    print(f"[demo] {text}", flush=True)


# ---------------------------------------------------------------------------------------------
# shared pieces


def _train(
    train_json: Path,
    val_json: Path,
    out: Path,
    plan: DemoPlan,
    epochs: int,
    init: Path | None,
    seed: int,
    device: str = "auto",
):
    from dal.trainer.train import TrainSettings, train

    w, h = plan.size
    return train(
        TrainSettings(
            train=train_json,
            val=val_json,
            out=out,
            init=init,
            backbone_weights="imagenet" if init is None else "none",
            input_size=f"{w}x{h}",
            epochs=epochs,
            patience=epochs,
            seed=seed,
            warmup_steps=10,
            device=device,
        )
    )


def _sheet(tiles: list[np.ndarray], path: Path, captions: list[str] | None = None) -> None:
    from dal.drawing import contact_sheet

    if tiles:
        contact_sheet(tiles, columns=5, tile_width=240, captions=captions).save(path)


def _coco_tiles(pool_json: Path, picked: list[int]) -> list[np.ndarray]:
    from dal.drawing import draw_detections

    coco = load_coco(pool_json)
    tiles = []
    for image_id in picked:
        rec = coco.by_id(image_id)
        image = read_image(coco.image_path(rec))
        tiles.append(
            draw_detections(image, rec.boxes, coco.labels(rec), class_names=coco.class_names)
        )
    return tiles


def _plot(history: list[dict], path: Path, title: str, baseline: list[dict] | None = None) -> None:
    """Deployed AP against labels; the random baseline beside it when there is one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    curves = [(history, "o-", "deployed model (agent's query)")]
    if baseline:
        curves.append((baseline, "s--", "random picks, same M0, pool and budget"))
    for rows, style, label in curves:
        ax.plot([r["labelled"] for r in rows], [r["AP"] for r in rows], style, label=label)
    ax.set_xlabel("labelled workbench images")
    ax.set_ylabel("AP@[0.5:0.95] on workbench validation")
    ax.set_ylim(bottom=0)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _write_results(out: Path, doc: dict[str, Any], title: str) -> None:
    (out / "results.json").write_text(json.dumps(doc, indent=2, default=str))
    _plot(doc["cycles"], out / "ap_vs_labels.png", title, doc.get("random"))


# ---------------------------------------------------------------------------------------------
# offline: procedural data, direct calls


def _score_pool(onnx_path: Path, pool_json: Path, unlabelled: list[int]) -> Candidates:
    from dal.agent.detector import Detector
    from dal.scoring import image_score

    detector = Detector(onnx_path)
    coco = load_coco(pool_json)
    ids, scores, features = [], [], []
    for image_id in unlabelled:
        det = detector.detect(read_image(coco.image_path(coco.by_id(image_id))))
        ids.append(str(image_id))
        scores.append(image_score(det.probs, "margin", "sum"))
        features.append(det.feature)
    detector.close()
    return Candidates(ids=ids, scores=np.asarray(scores, np.float32), features=np.stack(features))


def labels_json_with_root(labels_json: Path, pool_json: Path) -> Path:
    """The oracle's label file lives beside the pool's: rewrite file names to point at it."""
    doc = json.loads(labels_json.read_text())
    rel = os.path.relpath(pool_json.parent, labels_json.parent)
    for image in doc["images"]:
        image["file_name"] = os.path.join(rel, image["file_name"])
    return write_coco(doc, labels_json)


def run_offline(out: Path, plan: DemoPlan, cycles: int, k: int, strategy: str, seed: int) -> dict:
    from dal.procedural import make_dataset
    from dal.trainer.export import export_onnx

    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    _say(f"offline mode: making procedural data in {out} ({STAND_IN_NOTE})")
    w, h = plan.size
    made = [
        make_dataset(out / name, n, classes=2, width=w, height=h, seed=seed + i, style=style)
        for i, (name, n, style) in enumerate(
            (
                ("synthetic", plan.synthetic, "synthetic"),
                ("workbench-pool", plan.pool, "workbench"),
                ("workbench-val", plan.val, "workbench"),
            )
        )
    ]
    synthetic, pool_json, val_json = made
    _say(f"training base model M0 on {plan.synthetic} synthetic images")
    result = _train(synthetic, val_json, out / "m0", plan, plan.base_epochs, None, seed)
    model_path = export_onnx(result.best_path, out / "m0.onnx")
    history = [{"cycle": 0, "labelled": 0, "AP": result.best_ap or 0.0, "model": str(model_path)}]
    _say(f"M0: AP {history[0]['AP']:.3f} on the workbench validation set")
    pool = load_coco(pool_json)
    labelled: list[int] = []
    checkpoint = result.best_path
    for cycle in range(1, cycles + 1):
        unlabelled = [rec.id for rec in pool.images if rec.id not in labelled]
        candidates = _score_pool(model_path, pool_json, unlabelled)
        picked = [int(i) for i in select(strategy, candidates, k, seed=seed + cycle)]
        labelled += picked
        _sheet(_coco_tiles(pool_json, picked), out / f"cycle{cycle}-picks.jpg")
        labels_json = write_coco(pool.subset(labelled).to_json(), out / f"labels-c{cycle}.json")
        _say(
            f"cycle {cycle}: {strategy} picked {len(picked)} images, oracle labelled them; "
            f"fine-tuning on {len(labelled)} labelled images"
        )
        result = _train(
            labels_json_with_root(labels_json, pool_json),
            val_json,
            out / f"m{cycle}",
            plan,
            plan.cycle_epochs,
            checkpoint,
            seed,
        )
        checkpoint = result.best_path
        model_path = export_onnx(checkpoint, out / f"m{cycle}.onnx")
        ap = result.best_ap or 0.0
        history.append(
            {"cycle": cycle, "labelled": len(labelled), "AP": ap, "model": str(model_path)}
        )
        _say(f"cycle {cycle}: AP {ap:.3f} with {len(labelled)} labels")
    doc = {"mode": "offline", "strategy": strategy, "note": STAND_IN_NOTE, "cycles": history}
    _write_results(out, doc, "dal demo --offline: synthetic M0 + active-learning cycles")
    _say(f"done in {time.perf_counter() - started:.0f} s: results in {out}")
    return doc


# ---------------------------------------------------------------------------------------------
# networked: rendered data, broker, trainer service, agent daemon


def _render(out_dir: Path, mesh: Path, preset: str, count: int, plan: DemoPlan, seed: int) -> Path:
    from dal import config as dal_config
    from dal.blender.config import RenderConfig
    from dal.blender.job import ModelSpec, RenderJob
    from dal.blender.presets import PRESETS, merged
    from dal.blender.render import render_dataset

    w, h = plan.size
    quick = {
        "render": {
            "width": w,
            "height": h,
            "samples": plan.samples,
            "denoise": False,
            "max_bounces": 3,
            "device": "cpu",
        }
    }
    cfg = dal_config.from_dict(RenderConfig, merged(PRESETS[preset], quick), f"preset {preset}")
    job = RenderJob(cfg, (ModelSpec(mesh.resolve(), "bracket"),), count, out_dir.resolve(), seed)
    # worker processes keep bpy out of this process (torch and the services live here)
    return render_dataset(job, workers=min(2, count), progress=True).coco_path


def _split(coco_json: Path, out: Path, n_pool: int) -> tuple[Path, Path, Path]:
    """Pool and validation folders of their own (the agent replays a whole folder)."""
    coco = load_coco(coco_json)
    ids = [rec.id for rec in coco.images]
    made = []
    for name, part in (("workbench-pool", ids[:n_pool]), ("workbench-val", ids[n_pool:])):
        folder = out / name
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        doc = coco.subset(part).to_json()
        for image in doc["images"]:
            source = coco.image_path(coco.by_id(image["id"]))
            target = folder / source.name
            try:
                os.link(source, target)
            except OSError:
                shutil.copyfile(source, target)
            image["file_name"] = source.name
        made.append(write_coco(doc, folder / "annotations.json"))
    return made[0].parent, made[0], made[1]


def _wait(what: str, predicate: Callable[[], Any], timeout_s: float, health: Callable[[], None]):
    """Poll until `predicate()` is truthy; DalError naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        health()
        if time.monotonic() > deadline:
            raise DalError(
                f"demo: timed out after {timeout_s:.0f} s waiting for {what}",
                hint="see the log lines above; rerun with --verbose for more",
            )
        time.sleep(0.25)


class EventWatch:
    """The agent's events, as any MQTT client sees them."""

    def __init__(self, link: Any, agent: str) -> None:
        from dal.link import Event

        self.events: list[Any] = []
        self._lock = threading.Lock()
        link.subscribe_message(link.topic("agent_events", agent), Event, self._on_event)

    def _on_event(self, _topic: str, event: Any) -> None:
        with self._lock:
            self.events.append(event)

    def find(self, kind: str, where: Callable[[Any], bool] = lambda e: True) -> Any:
        with self._lock:
            return next((e for e in reversed(self.events) if e.kind == kind and where(e)), None)


def _trainer_config(out: Path, broker: Any, plan: DemoPlan, m0: Path, paths: dict, args: Any):
    from dal.config import from_dict
    from dal.trainer.config import TrainerConfig

    return from_dict(
        TrainerConfig,
        {
            "trainer": {
                "id": "trainer",
                "data_dir": str(out / "trainer"),
                "status_interval_s": 2.0,
            },
            "mqtt": {"host": broker.host, "port": broker.port, "protocol": broker.protocol},
            "labels": {"oracle": str(paths["pool_json"])},
            "finetune": {
                "auto": True,
                "min_new_labels": 1,
                "settle_s": 2.0,
                "val": str(paths["val_json"]),
                "tolerance": args.tolerance,
                "relative_tolerance": args.relative_tolerance,
                "device": args.device,
                "epochs": plan.cycle_epochs,
                "min_steps": plan.cycle_min_steps,
                "patience": plan.cycle_epochs,
                "verify_images": 1,
                "seed": args.seed,
            },
            "models": {
                "initial_checkpoint": str(m0),
                "private_key": str(paths["private_key"]),
                "public_key": str(paths["public_key"]),
            },
        },
        "demo trainer config",
    )


def _agent_config(out: Path, broker: Any, model: Path, paths: dict, args: Any):
    from dal.agent.config import AgentConfig
    from dal.config import from_dict

    return from_dict(
        AgentConfig,
        {
            "agent": {"id": AGENT_ID, "data_dir": str(out / "agent")},
            "source": {
                "kind": "folder",
                "uri": str(paths["pool_dir"]),
                "realtime": False,
                "loop": False,
                "folder": {"annotations": str(paths["pool_json"]), "interval_s": 0.5},
            },
            "detector": {"model": str(model), "providers": ["CPUExecutionProvider"]},
            "policy": {"min_interval_s": 0.0, "dedup_window": 0},
            "drift": {"enabled": False},
            "pool": {"min_free_bytes": 0},
            "query": {"strategy": args.strategy, "k": args.k, "beta": 2.0, "seed": args.seed},
            "cycle": {"pool_growth": 0, "min_pool": args.k, "on_drift": False},
            "mqtt": {"host": broker.host, "port": broker.port, "protocol": broker.protocol},
            "link": {
                "ack_timeout_s": 15.0,
                "retry_max_s": 2.0,
                "status_interval_s": 2.0,
                "metrics_interval_s": 5.0,
            },
            "update": {
                "public_key": str(paths["public_key"]),
                "smoke_images": 2,
                "max_latency_s": 30.0,
                "probation_frames": 0,
            },
            "supervisor": {"stall_s": 600.0},
        },
        "demo agent config",
    )


def _picks_tiles(trainer: Any, sample_ids: list[str]) -> tuple[list[np.ndarray], list[str]]:
    """The picked samples as the trainer stored them, with the oracle's boxes, captioned with
    their pick rank and the agent's uncertainty score."""
    from dal.drawing import draw_detections

    tiles, captions = [], []
    for rank, sample_id in enumerate(sample_ids, start=1):
        sample, label = trainer.store.get(sample_id), trainer.store.label(sample_id)
        if sample is None:
            continue
        boxes = np.zeros((0, 4), np.float32) if label is None else label.boxes
        names = list(label.classes) if label is not None else []
        classes = sorted(set(names))
        ids = [classes.index(n) + 1 for n in names]  # labels are 1..C
        tiles.append(draw_detections(read_image(sample.path), boxes, ids, class_names=classes))
        captions.append(f"pick #{rank}  score {sample.score:.2f}")
    return tiles, captions


def _random_baseline(
    trainer_config: Any, m0: Path, m0_ap: float, paths: dict, args: Any, out: Path
) -> list[dict[str, Any]]:
    """Random picks from the same pool and M0, fine-tuned and gated exactly like the trainer's
    jobs: the curve the agent's query has to beat."""
    from dal.trainer.jobs import evaluate_checkpoint, finetune_settings, gate
    from dal.trainer.train import train

    pool, val = load_coco(paths["pool_json"]), load_coco(paths["val_json"])
    rng = np.random.default_rng(args.seed)
    order = [int(i) for i in rng.permutation([rec.id for rec in pool.images])]
    ft = trainer_config.finetune
    deployed, deployed_ap = m0, m0_ap
    rows = [{"cycle": 0, "labelled": 0, "AP": m0_ap}]
    for cycle in range(1, args.cycles + 1):
        labelled = order[: cycle * args.k]
        run_dir = out / "random-baseline" / f"c{cycle}"
        labels = write_coco(pool.subset(labelled).to_json(), run_dir / "labels.json")
        settings = finetune_settings(
            trainer_config,
            labels_json_with_root(labels, paths["pool_json"]),
            None,
            deployed,
            run_dir / "run",
        )
        candidate = train(settings).best_path
        candidate_ap = evaluate_checkpoint(candidate, val, ft.device)["AP"]
        ok, why = gate(candidate_ap, deployed_ap, ft.tolerance, ft.relative_tolerance)
        if ok:
            deployed, deployed_ap = candidate, candidate_ap
        _say(f"random baseline, cycle {cycle}: {why}")
        rows.append(
            {
                "cycle": cycle,
                "labelled": len(labelled),
                "AP": deployed_ap,
                "candidate_AP": candidate_ap,
            }
        )
    return rows


def _run_cycle(cycle: int, ctx: dict[str, Any], args: Any, plan: DemoPlan) -> dict[str, Any]:
    from dal.link import Command

    trainer, agent, link, events, health = (
        ctx["trainer"],
        ctx["agent"],
        ctx["link"],
        ctx["events"],
        ctx["health"],
    )
    before = trainer.store.counts().labelled
    command = Command.new("trigger_cycle", k=args.k)
    _say(f"cycle {cycle}: MQTT command trigger_cycle(k={args.k}) to agent {AGENT_ID}")
    link.publish(link.topic("agent_cmd", AGENT_ID), command)
    done = _wait(
        f"cycle {cycle} on the agent",
        lambda: events.find("cycle_done", lambda e: e.time >= command.time - 1.0),
        300,
        health,
    )
    picked = list(done.data.get("samples", []))
    _say(f"cycle {cycle}: agent picked {len(picked)} images ({args.strategy}), shipping them")
    want = before + len(picked)
    _wait(
        f"the oracle to label cycle {cycle}'s samples",
        lambda: trainer.store.counts().labelled >= want,
        300,
        health,
    )
    revision = trainer.store.label_revision()
    _say(f"cycle {cycle}: trainer stored and oracle-labelled them ({want} labels): fine-tuning")
    result = _wait(
        f"the fine-tune job of cycle {cycle}",
        lambda: (
            trainer.last_job
            if trainer.last_job is not None
            and trainer.last_job.label_revision >= revision
            and not trainer.job_running
            else None
        ),
        3600,
        health,
    )
    _say(
        f"cycle {cycle}: job {result.outcome}: candidate AP {result.candidate_ap or 0:.3f}, "
        f"current {result.current_ap or 0:.3f} ({result.reason})"
    )
    deployed_ap = result.current_ap or 0.0
    if result.outcome == "promoted":
        deployed_ap = result.candidate_ap or 0.0
        _wait(
            f"agent to install model {result.version}",
            lambda: agent.models.version == result.version,
            600,
            health,
        )
        _say(f"cycle {cycle}: agent verified and hot-swapped to {result.version}; re-scoring")
        _wait(
            f"agent to re-score its pool with {result.version}",
            lambda: events.find("pool_rescored", lambda e: e.data.get("version") == result.version),
            600,
            health,
        )
    tiles, captions = _picks_tiles(trainer, picked)
    _sheet(tiles, ctx["out"] / f"cycle{cycle}-picks.jpg", captions)
    return {
        "cycle": cycle,
        "labelled": want,
        "AP": deployed_ap,
        "candidate_AP": result.candidate_ap,
        "outcome": result.outcome,
        "model": result.version,
        "agent_model": agent.models.version,
        "picked": picked,
        "job_seconds": result.seconds,
    }


def run_networked(out: Path, plan: DemoPlan, args: argparse.Namespace) -> dict:
    from dal.agent.daemon import AgentDaemon
    from dal.blender.parts import write_bracket
    from dal.broker import start_broker
    from dal.link import Link, LinkConfig
    from dal.link.signing import generate_keypair
    from dal.trainer.service import TrainerService

    started = time.perf_counter()
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    _say(f"networked demo in {out}; {STAND_IN_NOTE}")
    mesh = write_bracket(out / "part" / "bracket.obj")
    _say(f"stage 1/6: rendering {plan.synthetic} synthetic images (Cycles, preset 'paper')")
    synthetic_json = _render(out / "synthetic", mesh, "paper", plan.synthetic, plan, args.seed)
    _say(
        f"stage 2/6: rendering {plan.pool + plan.val} workbench stand-in frames "
        "(preset 'workbench'; rendered, NOT real camera frames)"
    )
    wb_json = _render(
        out / "workbench-render", mesh, "workbench", plan.pool + plan.val, plan, args.seed + 1
    )
    pool_dir, pool_json, val_json = _split(wb_json, out, plan.pool)
    _say(f"stage 3/6: training base model M0 on the synthetic set ({plan.base_epochs} epochs)")
    m0 = _train(
        synthetic_json, val_json, out / "m0", plan, plan.base_epochs, None, args.seed, args.device
    )
    keys = out / "trainer" / "keys"
    paths = {
        "pool_dir": pool_dir,
        "pool_json": pool_json,
        "val_json": val_json,
        "private_key": keys / "model-signing.key",
        "public_key": keys / "model-signing.pub",
    }
    if not paths["private_key"].exists():
        generate_keypair(paths["private_key"], paths["public_key"])
    stack: list[Callable[[], None]] = []
    try:
        broker = start_broker(out / "broker", args.broker)
        stack.append(broker.stop)
        _say(f"stage 4/6: MQTT broker ({broker.kind}) on {broker.host}:{broker.port}")
        trainer_config = _trainer_config(out, broker, plan, m0.best_path, paths, args)
        trainer = TrainerService(trainer_config)
        _say("stage 5/6: trainer service: registering, exporting and signing M0")
        trainer.start(wait_connected_s=30)
        stack.append(trainer.stop)
        m0_record = trainer.registry.current()
        if m0_record is None or m0_record.onnx is None:
            raise DalError("demo: the trainer has no released M0", hint="see the log above")
        _say(
            f"M0 = {m0_record.version}: AP {m0_record.ap or 0:.3f} on the workbench validation set"
        )
        operator = LinkConfig(
            "demo-operator", host=broker.host, port=broker.port, protocol=broker.protocol
        )
        link = Link(operator).start(15)
        stack.append(link.stop)
        events = EventWatch(link, AGENT_ID)
        agent = AgentDaemon(_agent_config(out, broker, m0_record.onnx, paths, args))
        _say(f"stage 6/6: agent {AGENT_ID} replaying {plan.pool} workbench frames (folder source)")
        agent.start()
        stack.append(agent.stop)

        def health() -> None:
            if agent.fatal is not None:
                raise agent.fatal
            if agent.wait(0):
                raise DalError("demo: the agent stopped", hint="see the log above")

        ctx = {
            "trainer": trainer,
            "agent": agent,
            "link": link,
            "events": events,
            "health": health,
            "out": out,
        }
        _wait(
            f"{plan.pool} pooled frames on the agent",
            lambda: agent.outbox.pooled() >= plan.pool,
            600,
            health,
        )
        _say(f"agent pooled {plan.pool} frames, scored with M0")
        history: list[dict[str, Any]] = [
            {"cycle": 0, "labelled": 0, "AP": m0_record.ap or 0.0, "model": m0_record.version}
        ]
        for cycle in range(1, args.cycles + 1):
            row = _run_cycle(cycle, ctx, args, plan)
            history.append(row)
            _say(f"cycle {cycle}: deployed AP {row['AP']:.3f} with {row['labelled']} labels")
        _say(f"baseline: random picks from the same M0, pool and budget ({args.cycles} cycles)")
        random_rows = _random_baseline(
            trainer_config, m0.best_path, history[0]["AP"], paths, args, out
        )
        doc = {
            "mode": "networked",
            "broker": broker.kind,
            "strategy": args.strategy,
            "k": args.k,
            "note": STAND_IN_NOTE,
            "m0_version": m0_record.version,
            "agent_model_version": agent.models.version,
            "cycles": history,
            "random": random_rows,
            "seconds": round(time.perf_counter() - started, 1),
        }
        _write_results(out, doc, "dal demo: agent + trainer over MQTT, DBAL cycles")
    finally:
        _say("stopping agent, trainer and broker")
        for stop in reversed(stack):
            try:
                stop()
            except (DalError, OSError) as err:
                log.warning("stopping %s: %s", stop, err)
    _say(
        f"done in {time.perf_counter() - started:.0f} s: {out / 'ap_vs_labels.png'}, "
        f"{out / 'results.json'}, picks in {out}/cycle*-picks.jpg"
    )
    return doc


# ---------------------------------------------------------------------------------------------
# command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("demo-output"))
    parser.add_argument("--fast", action="store_true", help="tiny counts, 1-2 epochs (~4 min)")
    parser.add_argument(
        "--offline", action="store_true", help="no broker/agent/trainer, procedural images"
    )
    parser.add_argument("--cycles", type=int, default=2)
    parser.add_argument("--k", type=int, default=5, help="images labelled per cycle")
    parser.add_argument("--strategy", choices=sorted(STRATEGIES), default="dbal")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--broker",
        choices=("auto", "mosquitto", "amqtt"),
        default="auto",
        help="local broker: mosquitto when installed, else embedded amqtt (default auto)",
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=0.0,
        help="promotion gate: a candidate may be this much AP below the current model",
    )
    parser.add_argument(
        "--relative-tolerance",
        type=float,
        default=0.05,
        help="promotion gate: ... or this fraction of the current AP, whichever is larger",
    )
    add_device_arguments(parser, amp=False)
    parser.add_argument("--synthetic", type=int, help="synthetic images (overrides the plan)")
    parser.add_argument("--pool", type=int, help="workbench pool images")
    parser.add_argument("--val", type=int, help="workbench validation images")
    parser.add_argument("--epochs", type=int, help="base model epochs")
    parser.add_argument("--cycle-epochs", type=int, help="fine-tune epochs per cycle")
    parser.add_argument("--samples", type=int, help="Cycles samples per pixel")
    parser.add_argument("--verbose", action="store_true", help="log INFO from every component")


def _plan(args: argparse.Namespace) -> DemoPlan:
    plan = PLANS["fast" if args.fast else "full"]
    changes = {
        field: getattr(args, attr)
        for field, attr in (
            ("synthetic", "synthetic"),
            ("pool", "pool"),
            ("val", "val"),
            ("base_epochs", "epochs"),
            ("cycle_epochs", "cycle_epochs"),
            ("samples", "samples"),
        )
        if getattr(args, attr, None) is not None
    }
    return replace(plan, **changes)


def run(args: argparse.Namespace) -> int:
    from dal.trainer.device import set_cpu_threads

    if args.verbose:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    set_cpu_threads(None)
    plan = _plan(args)
    if plan.pool < args.k * args.cycles:
        raise DalError(
            f"--pool {plan.pool} is too small for {args.cycles} cycles of k={args.k}",
            hint="raise --pool or lower --k/--cycles",
        )
    if args.offline:
        run_offline(args.out, plan, args.cycles, args.k, args.strategy, args.seed)
    else:
        run_networked(args.out, plan, args)
    return 0
