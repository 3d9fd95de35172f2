"""One active-learning cycle of the networked demo, driven the way an operator would: an MQTT
command to the agent, then waits on what each service does in turn."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from dal.demo import AGENT_ID, say
from dal.demo.running import Running
from dal.demo.sheets import picks_tiles, sheet

if TYPE_CHECKING:
    from dal.trainer.jobs import JobResult


def run_cycle(cycle: int, running: Running, args: argparse.Namespace) -> dict[str, Any]:
    """The agent queries its pool and ships the picks, the oracle labels them, the trainer
    fine-tunes and gates, and a promoted model is on the agent, pool re-scored, before the next
    cycle. Returns the cycle's row of results.json."""
    before = running.trainer.store.counts().labelled
    picked = _query(cycle, running, args)
    want = before + len(picked)
    result = _label_and_finetune(cycle, running, want)
    deployed_ap = _deploy(cycle, running, result)
    tiles, captions = picks_tiles(running.trainer, picked)
    sheet(tiles, running.out / f"cycle{cycle}-picks.jpg", captions)
    return {
        "cycle": cycle,
        "labelled": want,
        "AP": deployed_ap,
        "candidate_AP": result.candidate_ap,
        "outcome": result.outcome,
        "model": result.version,
        "agent_model": running.agent.models.version,
        "picked": picked,
        "job_seconds": result.seconds,
    }


def _query(cycle: int, running: Running, args: argparse.Namespace) -> list[str]:
    """Command a cycle; the sample ids the agent picked and is shipping."""
    from dal.link import Command

    link, events = running.link, running.events
    command = Command.new("trigger_cycle", k=args.k)
    say(f"cycle {cycle}: MQTT command trigger_cycle(k={args.k}) to agent {AGENT_ID}")
    link.publish(link.topic("agent_cmd", AGENT_ID), command)
    done = running.wait(
        f"cycle {cycle} on the agent",
        lambda: events.find("cycle_done", lambda e: e.time >= command.time - 1.0),
        300,
    )
    picked = list(done.data.get("samples", []))
    say(f"cycle {cycle}: agent picked {len(picked)} images ({args.strategy}), shipping them")
    return picked


def _label_and_finetune(cycle: int, running: Running, want: int) -> JobResult:
    """Wait until the trainer holds `want` labels, then for the fine-tune job they start."""
    trainer = running.trainer
    running.wait(
        f"the oracle to label cycle {cycle}'s samples",
        lambda: trainer.store.counts().labelled >= want,
        300,
    )
    revision = trainer.store.label_revision()
    say(f"cycle {cycle}: trainer stored and oracle-labelled them ({want} labels): fine-tuning")
    result = running.wait(
        f"the fine-tune job of cycle {cycle}",
        lambda: (
            trainer.last_job
            if trainer.last_job is not None
            and trainer.last_job.label_revision >= revision
            and not trainer.job_running
            else None
        ),
        3600,
    )
    say(
        f"cycle {cycle}: job {result.outcome}: candidate AP {result.candidate_ap or 0:.3f}, "
        f"current {result.current_ap or 0:.3f} ({result.reason})"
    )
    return result


def _deploy(cycle: int, running: Running, result: JobResult) -> float:
    """A promoted model: wait until the agent runs it and has re-scored its pool. The AP of
    the model deployed after the job."""
    if result.outcome != "promoted":
        return result.current_ap or 0.0
    agent, events = running.agent, running.events
    running.wait(
        f"agent to install model {result.version}",
        lambda: agent.models.version == result.version,
        600,
    )
    say(f"cycle {cycle}: agent verified and hot-swapped to {result.version}; re-scoring")
    running.wait(
        f"agent to re-score its pool with {result.version}",
        lambda: events.find("pool_rescored", lambda e: e.data.get("version") == result.version),
        600,
    )
    return result.candidate_ap or 0.0
