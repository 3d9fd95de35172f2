"""docs/grafana/dal.json queries only series the agent and the trainer expose, and every panel
reads the Prometheus data source chosen in the dashboard's variable."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from metrics_scrape import family_types, sample_names

from dal.agent import metrics as agent_metrics
from dal.trainer import metrics as trainer_metrics

DASHBOARD = Path(__file__).resolve().parents[1] / "docs" / "grafana" / "dal.json"
METRIC = re.compile(r"\b(dal_[a-z0-9_]+)")


def exposed() -> set[str]:
    """Every series name a scrape of the agent or the trainer can show (the tests in
    test_metrics_agent.py / test_metrics_trainer.py check these against real scrapes)."""
    families = {
        **family_types(agent_metrics.families()),
        agent_metrics.LATENCY: "histogram",
        **family_types(trainer_metrics.families()),
    }
    return sample_names(families)


def queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, PromQL) of every panel target and query variable."""
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            yield f"${variable['name']}", variable["query"]["query"]


def test_every_queried_metric_is_exposed() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    names = exposed()
    used = set()
    for where, expr in queries(dashboard):
        found = METRIC.findall(expr)
        assert found, f"{where}: {expr!r} queries no dal metric"
        unknown = set(found) - names
        assert not unknown, f"{where}: {sorted(unknown)} are not exposed"
        used.update(found)
    # the panels the issue asks for are there
    for needed in (
        "dal_agent_fps",
        "dal_agent_inference_latency_seconds_bucket",
        "dal_agent_pool_samples",
        "dal_agent_outbox_backlog",
        "dal_agent_transfers_total",
        "dal_agent_model_info",
        "dal_trainer_samples_ingested_total",
        "dal_trainer_jobs_total",
        "dal_trainer_jobs_running",
        "dal_trainer_samples_labelled",
    ):
        assert needed in used, f"no panel shows {needed}"


def test_panels_use_the_datasource_variable_and_have_unique_ids() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    (variable,) = [v for v in dashboard["templating"]["list"] if v["type"] == "datasource"]
    assert variable["query"] == "prometheus"
    ref = {"type": "prometheus", "uid": f"${{{variable['name']}}}"}
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == ref, panel["title"]
        assert all(t["datasource"] == ref for t in panel["targets"]), panel["title"]
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"]), panel["title"]
