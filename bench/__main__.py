"""Run every benchmark script in bench/ and print one JSON document with all their figures.

    python -m bench                      # small settings: a few minutes on a 2-core CPU
    python -m bench --full               # each script's own defaults (the figures to quote)
    python -m bench --only query pool    # some of them (names without the bench_ prefix)

Each `bench/bench_*.py` runs in its own process (a crash or a hang in one cannot take the others
down) and prints one JSON object; the runner merges them under "benchmarks". A script that
fails, times out or prints no JSON becomes an entry with "error" and the tail of its stderr; the
runner goes on. "headline" picks the figures the design asks for out of the merged results
(null where the script that measures it is missing or failed). Exit status 0, or 1 with
--strict when any script failed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

# Small settings per script: enough to give a meaningful figure in seconds to a minute or two.
# DBAL keeps its 100k pool: that pool size is the figure.
SMALL_ARGS: dict[str, list[str]] = {
    "agent": ["--frames", "20", "--rounds", "2", "--no-before"],
    "detector": ["--arch", "mobilenet_v2_fpn", "--steps", "3", "--runs", "5"],
    "fleet": ["--agents", "10", "--samples", "20", "--procs", "2", "--cycle-s", "0.2"],
    "mqtt": ["--size-mb", "16", "--repeat", "1"],
    "pool": ["--n", "60"],
    "query": ["--pool", "100000", "--repeats", "2", "--score-images", "2000"],
    "render": ["--count", "3", "--samples", "16"],
    "runtimes": ["--frames", "8", "--rounds", "1", "--calibration-frames", "4"],
}

# headline figure -> (script, path of keys into its JSON); a number index picks a list item
HEADLINE: dict[str, tuple[str, tuple[str | int, ...]]] = {
    "agent_fps_over_bare_onnxruntime_fps": ("agent", ("median", "ratio_keep_all")),
    "agent_fps_over_bare_onnxruntime_fps_dedup": ("agent", ("median", "ratio_dedup")),
    "agent_cpu_ratio_bare_over_agent": ("agent", ("median", "cpu_ratio_keep_all")),
    "dbal_query_s_100k_pool": ("query", ("dbal_s",)),
    "pool_inserts_per_s": ("pool", ("inserts_per_s_jpeg_normal",)),
    "mqtt_sample_transfer_mb_s": ("mqtt", ("sample_transfer_mb_s",)),
    "mqtt_model_download_mb_s": ("mqtt", ("model_download_mb_s",)),
    "fleet_samples_per_s": ("fleet", ("samples_per_s",)),
    "fleet_enqueue_to_ack_p99_s": ("fleet", ("enqueue_to_ack_p99_s",)),
    "training_steps_per_s_mobilenet_v2_fpn": (
        "detector",
        ("archs", "mobilenet_v2_fpn", "training", "steps_per_s"),
    ),
    "render_images_per_min": ("render", ("results", 0, "images_per_min")),
    "cpu_int8_fps_over_cpu_fp32": ("runtimes", ("table", "cpu_int8", "speed_over_cpu_fp32")),
    "openvino_int8_fps_over_cpu_fp32": (
        "runtimes",
        ("table", "openvino_int8", "speed_over_cpu_fp32"),
    ),
}
STDERR_TAIL_LINES = 20


def discover(folder: Path = HERE) -> dict[str, Path]:
    """bench_<name>.py scripts by name, sorted."""
    return {p.stem.removeprefix("bench_"): p for p in sorted(folder.glob("bench_*.py"))}


def last_json_object(text: str) -> dict[str, Any] | None:
    """The last JSON object whose "{" opens a line at column 0 (scripts may print other lines;
    the objects nested in a pretty-printed one are indented, so they do not count)."""
    decoder = json.JSONDecoder()
    found = None
    offset = 0
    for line in text.splitlines(keepends=True):
        if line.startswith("{"):
            try:
                value, _ = decoder.raw_decode(text, offset)
            except json.JSONDecodeError:
                value = None
            if isinstance(value, dict):
                found = value
        offset += len(line)
    return found


def _tail(text: str) -> str:
    return "\n".join(text.strip().splitlines()[-STDERR_TAIL_LINES:])


def run_script(path: Path, args: list[str], timeout_s: float) -> dict[str, Any]:
    """One script in its own process: {"args", "seconds", "result"} or {..., "error"}."""
    started = time.perf_counter()
    entry: dict[str, Any] = {"script": str(path.relative_to(REPO)), "args": args}
    try:
        proc = subprocess.run(
            [sys.executable, str(path), *args],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
    except subprocess.TimeoutExpired as err:
        stderr = err.stderr or ""  # bytes or str, depending on how far the child got
        if isinstance(stderr, bytes):
            stderr = stderr.decode(errors="replace")
        entry.update(error=f"timed out after {timeout_s:g} s", stderr_tail=_tail(stderr))
        entry["seconds"] = round(time.perf_counter() - started, 1)
        return entry
    entry["seconds"] = round(time.perf_counter() - started, 1)
    result = last_json_object(proc.stdout)
    if proc.returncode != 0:
        entry.update(error=f"exit status {proc.returncode}", stderr_tail=_tail(proc.stderr))
    elif result is None:
        entry.update(error="printed no JSON object", stdout_tail=_tail(proc.stdout))
    else:
        entry["result"] = result
    return entry


def _dig(value: Any, path: tuple[str | int, ...]) -> Any:
    for key in path:
        try:
            value = value[key]
        except (KeyError, IndexError, TypeError):
            return None
    return value


def headline(benchmarks: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {
        figure: _dig(benchmarks.get(script, {}).get("result"), path)
        for figure, (script, path) in HEADLINE.items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--full", action="store_true", help="each script's default settings")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these scripts")
    parser.add_argument(
        "--timeout", type=float, default=900.0, help="seconds per script (default 900)"
    )
    parser.add_argument("--out", type=Path, help="also write the JSON document here")
    parser.add_argument("--strict", action="store_true", help="exit 1 when any script failed")
    args = parser.parse_args(argv)

    scripts = discover()
    if args.only:
        unknown = sorted(set(args.only) - set(scripts))
        if unknown:
            parser.error(f"no bench script for {unknown}; have {sorted(scripts)}")
        scripts = {name: scripts[name] for name in args.only}
    started = time.perf_counter()
    benchmarks = {}
    for name, path in scripts.items():
        script_args = [] if args.full else SMALL_ARGS.get(name, [])
        print(f"[bench] {name} {' '.join(script_args)}".rstrip(), file=sys.stderr, flush=True)
        benchmarks[name] = run_script(path, script_args, args.timeout)
        status = benchmarks[name].get("error", "ok")
        print(f"[bench] {name}: {status} ({benchmarks[name]['seconds']} s)", file=sys.stderr)
    failed = sorted(name for name, entry in benchmarks.items() if "error" in entry)
    document = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "settings": "full" if args.full else "small",
        "machine": {
            "machine": platform.machine(),
            "processor": platform.processor(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_average": os.getloadavg(),
        },
        "headline": headline(benchmarks),
        "failed": failed,
        "seconds": round(time.perf_counter() - started, 1),
        "benchmarks": benchmarks,
    }
    text = json.dumps(document, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n", encoding="utf-8")
    return 1 if args.strict and failed else 0


if __name__ == "__main__":
    sys.exit(main())
