"""The candidate pool on real SQLite files and JPEGs in tmp_path."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from broker import wait_until

from dal.agent import pool as pl
from dal.agent.pool import Pool, Scored, decode_jpeg
from dal.agent.pool_schema import InvalidTransitionError
from dal.agent.sources import GroundTruth
from dal.errors import StorageError
from dal.strategies import select

D = 256


def image(seed: int, w: int = 64, h: int = 48) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, size=(h // 8, w // 8, 3), dtype=np.uint8)
    return np.kron(base, np.ones((8, 8, 1), np.uint8))  # blocky: compresses predictably


def feature(seed: int) -> np.ndarray:
    return np.random.default_rng(1000 + seed).normal(size=D).astype(np.float32)


def add(pool: Pool, seed: int, score: float, **kw: object) -> str | None:
    return pool.add(
        capture_time=1000.0 + seed,
        source="test:0",
        model_version="m0",
        score=score,
        feature=feature(seed),
        detections=[{"box": [1, 2, 3, 4]}],
        image=image(seed),
        **kw,
    )


def files_on_disk(pool: Pool) -> set[str]:
    return {
        p.relative_to(pool.root).as_posix()
        for p in (pool.root / pl.IMAGE_DIR).rglob("*")
        if p.is_file()
    }


def rows_paths(pool: Pool) -> set[str]:
    return {r[0] for r in pool.connection.execute("SELECT jpeg_path FROM samples")}


def assert_consistent(pool: Pool) -> None:
    assert files_on_disk(pool) == rows_paths(pool)
    assert pool.integrity_check() == []


def test_add_and_read_back(tmp_path: Path) -> None:
    with Pool(tmp_path / "pool") as pool:
        truth = {"boxes": [[1.0, 2.0, 3.0, 4.0]], "labels": [1]}
        sid = add(pool, 1, 0.75, ground_truth=truth, sample_id="cam1-0001")
        assert sid == "cam1-0001"
        s = pool.get(sid)
        assert s is not None
        assert (s.score, s.state, s.model_version, s.source) == (0.75, "pooled", "m0", "test:0")
        np.testing.assert_array_equal(s.feature, feature(1))
        assert s.feature.dtype == np.float32
        assert s.detections == [{"box": [1, 2, 3, 4]}] and s.ground_truth == truth
        data = s.jpeg_path.read_bytes()
        assert hashlib.sha256(data).hexdigest() == s.sha256 and len(data) == s.bytes
        assert (s.width, s.height) == (64, 48)
        decoded = decode_jpeg(data).astype(int)  # type: ignore[union-attr]
        assert np.abs(decoded - image(1)).mean() < 15  # random colour blocks: chroma blur
        assert np.abs(decoded - image(1)[:, :, ::-1]).mean() > 40  # RGB, not BGR
        jid = pool.add(
            capture_time=1.0,
            source="s",
            model_version="m0",
            score=0.1,
            feature=feature(2),
            detections=[],
            jpeg=data,
        )
        assert pool.get(jid).width == 64  # type: ignore[union-attr]
        mode = pool.connection.execute("PRAGMA journal_mode").fetchone()[0]
        assert mode == "wal"
        assert pool.get("nope") is None
        gt = GroundTruth(np.array([[1, 2, 30, 40]], np.float32), np.array([2]), np.array([7]), 3)
        gid = add(pool, 3, 0.2, ground_truth=gt)
        assert pool.get(gid).ground_truth["category_ids"] == [7]  # type: ignore[union-attr,index]
    with Pool(tmp_path / "pool") as again:  # persisted
        assert len(again) == 3 and again.get("cam1-0001").score == 0.75  # type: ignore[union-attr]


def test_eviction_by_count_drops_the_least_informative(tmp_path: Path) -> None:
    with Pool(tmp_path, max_images=3) as pool:
        ids = [add(pool, i, s) for i, s in enumerate([0.5, 0.1, 0.9])]
        new = add(pool, 3, 0.7)
        assert new is not None and pool.get(ids[1]) is None  # 0.1 went
        assert add(pool, 4, 0.05) is None  # lowest of all: refused
        assert add(pool, 5, 0.5) is None  # ties do not displace
        stats = pool.stats()
        assert (stats.count, stats.evicted, stats.rejected) == (3, 1, 2)
        assert sorted(s.score for s in pool.top(10)) == [0.5, 0.7, 0.9]
        assert_consistent(pool)


def test_eviction_order_and_protected_states(tmp_path: Path) -> None:
    with Pool(tmp_path, max_images=3) as pool:
        a, b, c = (add(pool, i, s) for i, s in enumerate([0.2, 0.3, 0.4]))
        pool.set_state([a], "queued")
        pool.set_state([b], "queued")
        pool.set_state([b], "shipped")  # the trainer holds it: evicted before anything pooled
        d = add(pool, 3, 0.01)
        assert d is not None and pool.get(b) is None and pool.get(c) is not None
        assert add(pool, 4, 0.02) is not None  # now evicts pooled d (0.01 < 0.02)
        assert pool.get(d) is None
        pool.set_state([c], "queued")
        pool.set_state(pool.ids(["pooled"]), "queued")
        assert add(pool, 5, 99.0) is None  # only queued samples left: refused, not evicted
        assert pool.stats().by_state["queued"] == 3
        assert_consistent(pool)


def test_eviction_by_bytes(tmp_path: Path) -> None:
    size = len(pl.encode_jpeg(image(0)))
    with Pool(tmp_path, max_bytes=int(size * 2.5)) as pool:
        for i, s in enumerate([0.3, 0.6, 0.9]):
            add(pool, 0, s, sample_id=f"s{i}")  # same image: same size
        stats = pool.stats()
        assert stats.count == 2 and stats.bytes <= pool.max_bytes
        assert pool.get("s0") is None
        assert_consistent(pool)


def test_state_transitions(tmp_path: Path) -> None:
    with Pool(tmp_path) as pool:
        a, b = add(pool, 1, 0.5), add(pool, 2, 0.6)
        for state in ("queued", "shipped", "labelled"):
            assert pool.set_state([a], state) == 1
        assert pool.set_state([a], "labelled") == 0  # a repeated ack is a no-op
        with pytest.raises(InvalidTransitionError, match="cannot move"):
            pool.set_state([b, a], "shipped")  # b is pooled: not allowed, nothing changes
        assert pool.get(b).state == "pooled"  # type: ignore[union-attr]
        assert pool.set_state([b], "queued") == 1  # what a cycle does
        assert pool.set_state([b], "pooled") == 1  # transfer abandoned
        with pytest.raises(KeyError):
            pool.set_state(["ghost"], "queued")
        with pytest.raises(ValueError, match="unknown pool state"):
            pool.set_state([b], "selected")  # never used, so no longer a state
        with pytest.raises(ValueError, match="unknown pool state"):
            pool.set_state([b], "archived")


def test_candidates_feed_the_query_strategies(tmp_path: Path) -> None:
    with Pool(tmp_path) as pool:
        assert len(pool.candidates()) == 0
        ids = [add(pool, i, 0.1 * (i + 1)) for i in range(8)]
        pool.set_state([ids[0]], "queued")
        cands = pool.candidates()
        assert set(cands.ids) == set(ids[1:])
        assert cands.features.shape == (7, D)
        i = list(cands.ids).index(ids[3])
        assert cands.scores[i] == pytest.approx(0.4)
        np.testing.assert_array_equal(cands.features[i], feature(3))
        picked = select("dbal", cands, 3, seed=0)
        assert len(picked) == 3 and set(picked) <= set(ids[1:])
        assert [s.sample_id for s in pool.top(2)] == [ids[7], ids[6]]


def test_rescore_updates_streams_and_resumes(tmp_path: Path) -> None:
    with Pool(tmp_path) as pool:
        ids = [add(pool, i, 0.0) for i in range(5)]
        pool.set_state([ids[0]], "queued")  # not pooled: left alone by default
        calls: list[int] = []

        def fn(rgb: np.ndarray) -> Scored:
            calls.append(1)
            if len(calls) == 4:
                raise RuntimeError("model crashed")
            return Scored(float(rgb.mean()) / 255, np.full(D, rgb.mean(), np.float32), [{"n": 1}])

        progress: list[tuple[int, int]] = []
        with pytest.raises(RuntimeError):
            pool.rescore(fn, "m1", batch_size=2, progress=lambda d, t: progress.append((d, t)))
        assert progress == [(2, 4)]  # the first batch was committed before the crash
        assert pool.rescore(fn, "m1", batch_size=2) == 2  # resumes with the other two
        assert pool.rescore(fn, "m1") == 0
        for sid in ids[1:]:
            s = pool.get(sid)
            assert s is not None and s.model_version == "m1" and s.detections == [{"n": 1}]
            assert s.score == pytest.approx(
                float(decode_jpeg(s.jpeg_path.read_bytes()).mean()) / 255, rel=1e-5
            )
        assert pool.get(ids[0]).model_version == "m0"  # type: ignore[union-attr]


def test_rescore_drops_samples_whose_jpeg_is_broken(tmp_path: Path) -> None:
    with Pool(tmp_path) as pool:
        good, bad = add(pool, 1, 0.1), add(pool, 2, 0.2)
        pool.get(bad).jpeg_path.write_bytes(b"\xff\xd8garbage")  # type: ignore[union-attr]
        done = pool.rescore(lambda rgb: Scored(1.0, np.zeros(D, np.float32), []), "m1")
        assert done == 1 and pool.get(bad) is None and pool.get(good) is not None
        assert_consistent(pool)


def test_sweep_removes_orphans_at_open(tmp_path: Path) -> None:
    with Pool(tmp_path) as pool:
        keep, lose = add(pool, 1, 0.5), add(pool, 2, 0.6)
        pool.get(lose).jpeg_path.unlink()  # type: ignore[union-attr]
        stray = tmp_path / pl.IMAGE_DIR / "ab" / "abcdef.jpg"
        stray.parent.mkdir(parents=True, exist_ok=True)
        stray.write_bytes(b"left by a crash before the insert")
        (tmp_path / pl.IMAGE_DIR / "ab" / ".abcdef.jpg.123.tmp").write_bytes(b"half")
    with Pool(tmp_path) as pool:
        assert pool.get(lose) is None and pool.get(keep) is not None
        assert not stray.exists()
        assert_consistent(pool)


def test_disk_full_in_the_database_keeps_the_pool_consistent(tmp_path: Path) -> None:
    with Pool(tmp_path) as pool:
        for i in range(3):
            add(pool, i, 0.1 * i)
        pages = pool.connection.execute("PRAGMA page_count").fetchone()[0]
        pool.connection.execute(f"PRAGMA max_page_count = {pages}")  # SQLITE_FULL from now on
        with pytest.raises(StorageError, match="disk full"):
            for i in range(3, 200):  # the WAL grows until SQLite refuses a new page
                add(pool, i, 0.5, sample_id=f"full{i}")
        assert_consistent(pool)  # the JPEG of the failed insert is gone too
        count = len(pool)
        pool.connection.execute("PRAGMA max_page_count = 1073741823")
        assert add(pool, 500, 0.9) is not None and len(pool) == count + 1
        assert_consistent(pool)


def test_low_free_space_refuses_before_writing(tmp_path: Path) -> None:
    with Pool(tmp_path, min_free_bytes=1 << 62) as pool:  # more than any disk has
        with pytest.raises(StorageError, match="disk almost full") as err:
            add(pool, 1, 0.5)
        assert "min_free_bytes" in (err.value.hint or "")
        assert len(pool) == 0 and files_on_disk(pool) == set()


def newest_in(db: Path) -> float:
    """The latest capture time in a pool database another process is writing (-1: none yet)."""
    if not db.exists():
        return -1.0
    with contextlib.closing(sqlite3.connect(db, timeout=5)) as conn:
        return conn.execute("SELECT COALESCE(MAX(capture_time), -1) FROM samples").fetchone()[0]


CHILD = textwrap.dedent("""
    import sys, numpy as np
    from dal.agent.pool import Pool
    pool = Pool(sys.argv[1], max_images=40)
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, size=(120, 160, 3), dtype=np.uint8)
    print("ready", flush=True)
    i = 0
    while True:
        pool.add(capture_time=i, source="crash", model_version="m0", score=float(rng.random()),
                 feature=rng.normal(size=256).astype(np.float32), detections=[], image=img)
        i += 1
""")


def test_kill_during_inserts_leaves_no_row_without_its_file(tmp_path: Path) -> None:
    root = tmp_path / "pool"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(root)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        # until the pool is full and 20 more inserts have had to evict
        wait_until(lambda: newest_in(root / pl.DB_NAME) >= 60, 30, "inserts that evict")
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
    with Pool(root, max_images=40) as pool:
        assert 0 < len(pool) <= 40
        assert_consistent(pool)
        for sid in pool.ids():
            s = pool.get(sid)
            assert hashlib.sha256(s.jpeg_path.read_bytes()).hexdigest() == s.sha256  # type: ignore[union-attr]
