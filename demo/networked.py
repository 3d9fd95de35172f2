"""The networked demo: rendered data, M0, then broker, trainer service and agent running
together for the cycles, and the random baseline beside them (the steps are in `cli`'s
docstring). Each running piece is stopped on the way out, whatever happened."""

from __future__ import annotations

import argparse
import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from dal.demo import AGENT_ID, STAND_IN_NOTE, say
from dal.demo.baseline import random_baseline
from dal.demo.configs import agent_config, trainer_config
from dal.demo.cycle import run_cycle
from dal.demo.data import DemoFiles, make_data, make_keys
from dal.demo.installation import print_next_steps, wait_until_stopped, write_configs
from dal.demo.plan import DemoPlan
from dal.demo.running import EventWatch, Running
from dal.demo.sheets import write_results
from dal.demo.training import train_model
from dal.errors import DalError

log = logging.getLogger(__name__)


def run_networked(out: Path, plan: DemoPlan, args: argparse.Namespace) -> dict:
    """Data and M0, then the cycles and the baseline with every service up; results.json."""
    started = time.perf_counter()
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    say(f"networked demo in {out}; {STAND_IN_NOTE}")
    synthetic_json, files = make_data(out, plan, args.seed)
    say(f"stage 3/6: training base model M0 on the synthetic set ({plan.base_epochs} epochs)")
    m0 = train_model(
        synthetic_json,
        files.val_json,
        out / "m0",
        plan,
        plan.base_epochs,
        None,
        args.seed,
        args.device,
    )
    make_keys(files)
    with _services(out, plan, args, files, m0.best_path) as running:
        _wait_for_pool(running, plan)
        history = _cycles(running, args)
        say(f"baseline: random picks from the same M0, pool and budget ({args.cycles} cycles)")
        random_rows = random_baseline(
            running.trainer_config, m0.best_path, history[0]["AP"], files, args, out
        )
        doc = _results(running, args, history, random_rows, started)
        write_results(out, doc, "dal demo: agent + trainer over MQTT, DBAL cycles")
        _say_done(out, started)
        if args.keep_running:
            print_next_steps(out, services_running=True)
            wait_until_stopped(running.health)
    if not args.keep_running:
        print_next_steps(out, services_running=False)
    return doc


def _say_done(out: Path, started: float) -> None:
    say(
        f"done in {time.perf_counter() - started:.0f} s: {out / 'ap_vs_labels.png'}, "
        f"{out / 'results.json'}, picks in {out}/cycle*-picks.jpg"
    )


@contextlib.contextmanager
def _services(
    out: Path, plan: DemoPlan, args: argparse.Namespace, files: DemoFiles, m0: Path
) -> Iterator[Running]:
    """Stages 4 to 6: broker, trainer service (M0 released), the demo's client, the agent.
    Whatever started is stopped in reverse order when the block ends, however it ends."""
    from dal.agent.daemon import AgentDaemon
    from dal.broker import start_broker
    from dal.link import Link, LinkConfig
    from dal.trainer.service import TrainerService

    with contextlib.ExitStack() as stops:
        try:
            broker = start_broker(out / "broker", args.broker)
            stops.callback(_stop_quietly, broker.stop)
            say(f"stage 4/6: MQTT broker ({broker.kind}) on {broker.host}:{broker.port}")
            config = trainer_config(out, broker, plan, m0, files, args)
            trainer = TrainerService(config)
            say("stage 5/6: trainer service: registering, exporting and signing M0")
            trainer.start(wait_connected_s=30)
            stops.callback(_stop_quietly, trainer.stop)
            m0_record = trainer.registry.current()
            if m0_record is None or m0_record.onnx is None:
                raise DalError("demo: the trainer has no released M0", hint="see the log above")
            say(
                f"M0 = {m0_record.version}: AP {m0_record.ap or 0:.3f} on the workbench "
                "validation set"
            )
            operator = LinkConfig(
                "demo-operator", host=broker.host, port=broker.port, protocol=broker.protocol
            )
            link = Link(operator).start(15)
            stops.callback(_stop_quietly, link.stop)
            events = EventWatch(link, AGENT_ID)
            agent_settings = agent_config(out, broker, m0_record.onnx, files, args)
            write_configs(out, config, agent_settings, broker)
            agent = AgentDaemon(agent_settings)
            say(
                f"stage 6/6: agent {AGENT_ID} replaying {plan.pool} workbench frames "
                "(folder source)"
            )
            agent.start()
            stops.callback(_stop_quietly, agent.stop)
            yield Running(
                out=out,
                broker=broker,
                trainer_config=config,
                trainer=trainer,
                m0=m0_record,
                link=link,
                events=events,
                agent=agent,
            )
        finally:
            say("stopping agent, trainer and broker")  # before the stack stops them


def _stop_quietly(stop: Callable[[], None]) -> None:
    """Stop one piece; a failure to stop is logged, and the pieces below it still stop."""
    try:
        stop()
    except (DalError, OSError) as err:
        log.warning("stopping %s: %s", stop, err)


def _wait_for_pool(running: Running, plan: DemoPlan) -> None:
    """The agent has replayed the whole pool, every frame scored with M0."""
    running.wait(
        f"{plan.pool} pooled frames on the agent",
        lambda: running.agent.outbox.pooled() >= plan.pool,
        600,
    )
    say(f"agent pooled {plan.pool} frames, scored with M0")


def _cycles(running: Running, args: argparse.Namespace) -> list[dict[str, Any]]:
    """M0's row, then one row per cycle."""
    m0 = running.m0
    history: list[dict[str, Any]] = [
        {"cycle": 0, "labelled": 0, "AP": m0.ap or 0.0, "model": m0.version}
    ]
    for cycle in range(1, args.cycles + 1):
        row = run_cycle(cycle, running, args)
        history.append(row)
        say(f"cycle {cycle}: deployed AP {row['AP']:.3f} with {row['labelled']} labels")
    return history


def _results(
    running: Running,
    args: argparse.Namespace,
    history: list[dict[str, Any]],
    random_rows: list[dict[str, Any]],
    started: float,
) -> dict[str, Any]:
    """The results.json document of a networked run."""
    return {
        "mode": "networked",
        "broker": running.broker.kind,
        "strategy": args.strategy,
        "k": args.k,
        "note": STAND_IN_NOTE,
        "m0_version": running.m0.version,
        "agent_model_version": running.agent.models.version,
        "cycles": history,
        "random": random_rows,
        "seconds": round(time.perf_counter() - started, 1),
    }
