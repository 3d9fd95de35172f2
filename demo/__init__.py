"""`dal demo`: the whole system on one machine. It sits above every other folder (renders,
trainer service, agent, broker) and nothing imports it, so it has a folder of its own.

One job per module:

    cli        the command line: options, the plan, offline or networked
    plan       DemoPlan: image counts, size, epochs; the fast and full plans
    training   train a model by the plan; label files that point at the pool's images
    offline    the loop with direct calls on procedural images (no broker, agent or Blender)
    data       the networked demo's data: rendered synthetic and workbench sets, the split
    configs    the trainer's and the agent's configuration for a demo run
    running    the running pieces, bounded waits on them, the agent's events
    cycle      one active-learning cycle driven over MQTT
    networked  the networked demo: data, M0, services up, cycles, baseline, services down
    baseline   random picks from the same M0, pool and budget: the curve to beat
    sheets     what a run leaves behind: contact sheets of the picks, the plot, results.json

This file holds only what they all say and name.
"""

from __future__ import annotations

AGENT_ID = "bench1"
STAND_IN_NOTE = (
    "the 'workbench' frames are rendered stand-ins for real camera frames, not real data"
)


def say(text: str) -> None:
    """One progress line per stage; flushed, so a piped run shows where it is."""
    print(f"[demo] {text}", flush=True)
