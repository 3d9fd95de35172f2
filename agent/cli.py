"""The edge agent: capture, score, pool, query, ship, hot-swap models.

  dal agent run --config agent.toml        run the daemon (systemd: Type=notify, watchdog)
  dal agent status [--json] [--check]      is it running; model, source, pool, outbox, link
  dal agent pool [--top N] [--state S]     the highest-scoring pooled candidates
  dal agent select --dry-run [--sheet F]   what a cycle would pick now, as an image sheet with
                                           boxes; without --dry-run the picks are queued and the
                                           running daemon ships them

The config file is TOML; every key, its default and its environment override
(DAL_AGENT__SECTION__KEY) are in docs/config/agent.toml. --config defaults to
$DAL_AGENT_CONFIG, else /etc/dal/agent.toml. The inspection commands only read the pool
database (safe while the daemon runs), except `select` without --dry-run, which writes one
cycle to the outbox. `run` exits with 78 (EX_CONFIG) for a config mistake or a missing
dependency such as the Azure Kinect SDK, so systemd does not restart it in a loop.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

from dal.agent.pool_schema import STATES
from dal.errors import ConfigError, DependencyError, StorageError

DEFAULT_CONFIG = Path("/etc/dal/agent.toml")
EX_CONFIG = 78
NOT_RUNNING = 3  # as `systemctl status` / LSB: program is not running


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="agent_command", metavar="ACTION", required=True)

    def with_config(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument(
            "--config",
            type=Path,
            default=None,
            help=f"agent TOML file (default: $DAL_AGENT_CONFIG or {DEFAULT_CONFIG})",
        )
        return p

    with_config("run", "run the daemon until SIGTERM/SIGINT")
    status = with_config("status", "show whether the agent runs and what it is doing")
    status.add_argument("--json", action="store_true", help="print the full status as JSON")
    status.add_argument("--check", action="store_true", help="also run PRAGMA integrity_check")
    pool = with_config("pool", "list the top candidates of the pool with their scores")
    pool.add_argument("--top", type=int, default=20, help="how many (default 20)")
    pool.add_argument(
        "--state",
        default="pooled",
        choices=STATES,
        help="which samples (default pooled)",
    )
    pool.add_argument("--json", action="store_true", help="print JSON")
    select = with_config("select", "run the query now: show (--dry-run) or queue the picks")
    select.add_argument("--dry-run", action="store_true", help="show the picks, change nothing")
    select.add_argument("--strategy", help="override [query] strategy")
    select.add_argument("-k", type=int, help="override [query] k")
    select.add_argument("--beta", type=float, help="override [query] beta")
    select.add_argument("--seed", type=int, help="override [query] seed")
    select.add_argument(
        "--sheet",
        type=Path,
        default=Path("selection.jpg"),
        help="image sheet of the picks with their boxes (default selection.jpg; '-' = none)",
    )
    select.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    handlers = {"run": _run, "status": _status, "pool": _pool, "select": _select}
    return handlers[args.agent_command](args)


def _config(args: argparse.Namespace) -> Any:
    from dal.agent.config import load_agent_config

    path = args.config or Path(os.environ.get("DAL_AGENT_CONFIG", DEFAULT_CONFIG))
    return load_agent_config(path)


# ---------------------------------------------------------------------------------------------
# run


def _run(args: argparse.Namespace) -> int:
    from dal.agent.daemon import AgentDaemon
    from dal.runtimes import check_single_runtime

    try:
        check_single_runtime()
        daemon = AgentDaemon(_config(args))

        def on_signal(signum: int, frame: Any) -> None:
            daemon.stop_event.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        daemon.run()
    except (ConfigError, DependencyError) as err:
        print(f"dal agent: error: {err}", file=sys.stderr)
        return EX_CONFIG
    return 0


# ---------------------------------------------------------------------------------------------
# read-only access to the pool database


class PoolView:
    """Reads a pool database without opening `Pool` (whose start-up sweep must only run in the
    daemon: it could remove an image the daemon is about to commit). The rows are read with
    sqlite-utils; the query's candidates with the pool's own `read_candidates`."""

    def __init__(self, root: Path) -> None:
        import sqlite_utils

        from dal.agent.pool_schema import DB_NAME

        self.root = root
        db = root / DB_NAME
        if not db.is_file():
            raise StorageError(
                f"no pool database at {db}", hint="has the agent run with this config yet?"
            )
        try:
            self.conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10.0)
            self.conn.execute("PRAGMA busy_timeout=10000")
        except sqlite3.Error as err:
            raise StorageError(f"cannot read {db}: {err}") from None
        self.db = sqlite_utils.Database(self.conn)

    def _read(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except sqlite3.Error as err:
            raise StorageError(f"reading {self.root}: {err}") from None

    def _rows(self, table: str, **kwargs: Any) -> list[dict[str, Any]]:
        return self._read(lambda: list(self.db[table].rows_where(**kwargs)))

    def candidates(self, states: Any = ("pooled",)) -> Any:
        from dal.agent.pool_schema import read_candidates

        return self._read(read_candidates, self.conn, states)

    def samples(self, ids: list[str] | None = None, state: str = "pooled", top: int = 0) -> list:
        cols = "sample_id, score, capture_time, model_version, detections, jpeg_path, state"
        if ids is not None:
            rows = [
                r
                for i in ids
                for r in self._rows("samples", where="sample_id = ?", where_args=[i], select=cols)
            ]
        else:
            rows = self._rows(
                "samples",
                where="state = ?",
                where_args=[state],
                order_by="score DESC, capture_time DESC",
                select=cols,
                limit=top,
            )
        for row in rows:
            row["detections"] = json.loads(row["detections"])
            row["jpeg_path"] = str(self.root / row["jpeg_path"])
        return rows

    def _count_by(self, table: str, column: str) -> dict[str, int]:
        sql = f"SELECT {column}, COUNT(*) FROM {table} GROUP BY {column}"
        return dict(self._read(lambda: self.conn.execute(sql).fetchall()))

    def counts(self) -> dict[str, Any]:
        by_state = self._count_by("samples", "state")
        total = self._read(lambda: self.db["samples"].count)
        size = self._read(lambda: self.conn.execute("SELECT COALESCE(SUM(bytes), 0) FROM samples"))
        outbox: dict[str, int] = {}
        last = None
        if self._read(self.db["outbox"].exists):
            outbox = self._count_by("outbox", "status")
            keys = "cycle, started, reason, strategy, k, beta, selected"
            rows = self._rows("cycles", select=keys, order_by="cycle DESC", limit=1)
            last = rows[0] if rows else None
        return {
            "pool": {"count": total, "bytes": size.fetchone()[0], "by_state": by_state},
            "outbox": outbox,
            "last_cycle": last,
        }

    def next_cycle(self) -> int:
        if not self._read(self.db["sqlite_sequence"].exists):
            return 1
        rows = self._rows("sqlite_sequence", where="name = 'cycles'", select="seq")
        return (int(rows[0]["seq"]) if rows else 0) + 1

    def integrity_check(self) -> list[str]:
        rows = self._read(lambda: self.conn.execute("PRAGMA integrity_check").fetchall())
        return [r[0] for r in rows if r[0] != "ok"]


def _pool_root(config: Any) -> Path:
    from dal.agent.config import resolve_path

    return resolve_path(config, config.pool.dir)


# ---------------------------------------------------------------------------------------------
# status


def _read_status_file(config: Any) -> dict[str, Any] | None:
    from dal.agent.reporting import STATUS_FILE

    path = config.agent.data_dir / STATUS_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        raise StorageError(f"cannot read {path}: {err}") from None


def _is_running(status: dict[str, Any] | None, config: Any) -> bool:
    """A fresh status file from a live process that says it is running."""
    if not status or status.get("state") != "running":
        return False
    max_age = max(10.0, 5 * config.supervisor.status_file_s)
    fresh = time.time() - float(status.get("time", 0)) < max_age
    try:
        os.kill(int(status.get("pid", 0)), 0)
    except PermissionError:
        pass  # runs as another user (the service account): alive
    except (OSError, ValueError):
        return False
    return fresh


def _status(args: argparse.Namespace) -> int:
    config = _config(args)
    status = _read_status_file(config)
    running = _is_running(status, config)
    view = PoolView(_pool_root(config))
    store = view.counts()
    problems = view.integrity_check() if args.check else None
    if args.json:
        out = {"running": running, "daemon": status, **store}
        if problems is not None:
            out["integrity"] = problems or ["ok"]
        print(json.dumps(out, indent=2))
    else:
        _print_status(running, status, store, problems)
    return 0 if running else NOT_RUNNING


def _print_status(
    running: bool, status: dict[str, Any] | None, store: dict[str, Any], problems: list | None
) -> None:
    if status is None:
        print("agent: no status file: it has not run with this config")
    else:
        state = "running" if running else f"not running (last state {status.get('state')})"
        age = time.time() - float(status.get("time", 0))
        print(f"agent {status.get('agent')}: {state}, status {age:.0f} s old")
        model = status.get("model") or {}
        print(f"model: {model.get('version') or '-'} on {model.get('provider') or '-'}")
        if model.get("last_update"):
            print(f"last model update: {model['last_update'].get('message')}")
        source = status.get("source") or {}
        print(
            f"source: {source.get('status')}, {source.get('frames', 0)} frames, "
            f"{source.get('reconnects', 0)} reconnects"
            + (f", last error: {source['last_error']}" if source.get("last_error") else "")
        )
        p = status.get("pipeline") or {}
        print(
            f"pipeline: {p.get('fps', 0):.2f} fps, {p.get('inferred', 0)} inferred, "
            f"{p.get('kept', 0)} kept, {p.get('duplicates', 0)} duplicates, "
            f"{p.get('infer_errors', 0)} errors"
        )
        storage = status.get("storage") or {}
        if storage.get("paused"):
            print(f"capture paused: the pool cannot store ({storage.get('reason')})")
        link = status.get("link") or {}
        if link.get("enabled"):
            up = "connected" if link.get("connected") else "disconnected"
            print(f"link: {up} to {link.get('broker')}")
    by_state = store["pool"]["by_state"]
    states = ", ".join(f"{n} {s}" for s, n in sorted(by_state.items())) or "empty"
    print(f"pool: {states} ({store['pool']['bytes'] / 1e6:.1f} MB)")
    outbox = store["outbox"]
    print(f"outbox: {outbox.get('queued', 0)} waiting, {outbox.get('acked', 0)} acked")
    last = store["last_cycle"]
    if last:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(last["started"]))
        print(
            f"last cycle: {last['cycle']} ({last['reason']}) at {when}: {last['strategy']} "
            f"k={last['k']} beta={last['beta']:g} -> {last['selected']} queued"
        )
    if problems is not None:
        print("integrity: " + ("ok" if not problems else "; ".join(problems)))


# ---------------------------------------------------------------------------------------------
# pool and select


def _pool(args: argparse.Namespace) -> int:
    if args.top < 1:
        raise ConfigError("--top must be ≥ 1")
    view = PoolView(_pool_root(_config(args)))
    samples = view.samples(state=args.state, top=args.top)
    if args.json:
        print(json.dumps(samples, indent=2))
        return 0
    print(f"{'#':>3}  {'score':>8}  {'boxes':>5}  {'captured':19}  {'model':24}  sample")
    for rank, s in enumerate(samples, 1):
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s["capture_time"]))
        print(
            f"{rank:>3}  {s['score']:8.4f}  {len(s['detections']):>5}  {when}  "
            f"{s['model_version'][:24]:24}  {s['sample_id']}"
        )
    if not samples:
        print(f"(no {args.state} samples)")
    return 0


def _settings(args: argparse.Namespace, config: Any) -> Any:
    return config.query.changed(strategy=args.strategy, k=args.k, beta=args.beta, seed=args.seed)


def _select(args: argparse.Namespace) -> int:
    from dal.agent.config import agent_id
    from dal.agent.cycle import plan

    config = _config(args)
    settings = _settings(args, config)
    view = PoolView(_pool_root(config))
    if args.dry_run:
        chosen = plan(view, settings, view.next_cycle())
        picked, cycle = chosen.ids, None
    else:
        from dal.agent.outbox import Outbox

        outbox = Outbox(view.root / "pool.sqlite", agent_id(config), config.pool.synchronous)
        try:
            chosen = plan(view, settings, outbox.next_cycle())
            record, picked = outbox.enqueue_cycle(
                chosen.ids,
                reason="cli",
                strategy=settings.strategy,
                k=settings.k,
                beta=settings.beta,
                seed=chosen.seed,
                model_version="",
                pool_size=chosen.pool_size,
            )
            cycle = record.cycle
        finally:
            outbox.close()
    samples = view.samples(ids=picked)
    sheet = None if str(args.sheet) == "-" or not samples else _write_sheet(samples, args.sheet)
    result = {
        "dry_run": args.dry_run,
        "cycle": cycle,
        "settings": settings.to_dict(),
        "seed": chosen.seed,
        "pool_size": chosen.pool_size,
        "picked": [{"sample_id": s["sample_id"], "score": s["score"]} for s in samples],
        "sheet": str(sheet) if sheet else None,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        verb = "would pick" if args.dry_run else f"cycle {cycle} queued"
        print(
            f"{settings.strategy} (k={settings.k}, beta={settings.beta:g}, seed {chosen.seed}) "
            f"{verb} {len(samples)} of {chosen.pool_size} pooled:"
        )
        for rank, s in enumerate(samples, 1):
            print(f"{rank:>3}  {s['score']:8.4f}  {s['sample_id']}")
        if sheet:
            print(f"sheet: {sheet}")
    return 0


def _write_sheet(samples: list[dict[str, Any]], path: Path) -> Path:
    """The picks with their detections drawn, in one image."""
    from PIL import Image

    from dal.drawing import contact_sheet, draw_detections

    tiles, captions = [], []
    for rank, s in enumerate(samples, 1):
        with Image.open(s["jpeg_path"]) as image:
            records = s["detections"]
            names: dict[int, str] = {r["label"]: r.get("class", str(r["label"])) for r in records}
            class_names = [names.get(i, str(i)) for i in range(1, max(names, default=0) + 1)]
            tiles.append(
                draw_detections(
                    image.convert("RGB"),
                    [r["box"] for r in records],
                    [r["label"] for r in records],
                    [r["score"] for r in records],
                    class_names=class_names,
                )
            )
        captions.append(f"{rank}. score {s['score']:.3f}")
    sheet = contact_sheet(tiles, columns=min(5, len(tiles)), captions=captions)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        sheet.save(path, quality=90)
    except OSError as err:
        raise StorageError(f"cannot write the sheet {path}: {err}") from None
    return path
