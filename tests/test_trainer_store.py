"""The trainer's sample store: idempotent, durable before it returns, per-agent state."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from trainer_samples import put_sample, sample_header

from dal.errors import StorageError
from dal.link import AgentStatus, Detection, Event
from dal.trainer.store import Label, SampleStore


@pytest.fixture
def store(tmp_path: Path) -> SampleStore:
    with SampleStore(tmp_path / "store") as s:
        yield s


def test_a_stored_sample_is_committed_and_on_disk_when_store_returns(
    store: SampleStore, tmp_path: Path
) -> None:
    det = Detection(box=(1.0, 2.0, 30.0, 40.0), label=1, score=0.7)
    h = put_sample(store, b"\xff\xd8 not really a jpeg", tmp_path / "spool", detections=(det,))
    # a second connection (another process, or after a crash) sees the row and the file
    with SampleStore(store.folder) as other:
        sample = other.get(h.sample_id)
        assert sample is not None and sample.path.read_bytes() == b"\xff\xd8 not really a jpeg"
        assert sample.detections == [{"box": [1.0, 2.0, 30.0, 40.0], "label": 1, "score": 0.7}]
        assert (sample.width, sample.height) == (None, None)  # not an image: kept, flagged
        assert other.counts().samples == 1
    assert not list((tmp_path / "spool").iterdir()), "the spool file was moved, not copied"


def test_storing_the_same_sample_twice_changes_nothing(store: SampleStore, tmp_path: Path) -> None:
    h = put_sample(store, b"abc" * 100, tmp_path / "spool", name="x1")
    again = tmp_path / "again.part"
    again.write_bytes(b"abc" * 100)
    store.store(h, again)
    assert store.has(h.sample_id)
    assert store.counts().samples == 1
    (agent,) = store.agents()
    assert (agent["agent"], agent["samples"], agent["bytes"]) == ("cam1", 1, 300)
    assert not again.exists()
    assert len([p for p in store.folder.rglob("*") if p.parent.name == "cam1"]) == 1


def test_per_agent_counts_status_and_events(store: SampleStore, tmp_path: Path) -> None:
    for agent, n in (("cam1", 2), ("cam2", 1)):
        for _ in range(n):
            put_sample(store, b"x" * 10, tmp_path / "spool", agent=agent)
    store.record_status(AgentStatus(agent="cam2", state="online", time=1.0, pool_size=7))
    store.record_event(Event(agent="cam3", time=2.0, kind="cycle_done"))
    agents = {a["agent"]: a for a in store.agents()}
    assert agents["cam1"]["samples"] == 2 and agents["cam2"]["samples"] == 1
    assert agents["cam2"]["status"]["pool_size"] == 7
    assert agents["cam3"]["last_event"]["kind"] == "cycle_done" and agents["cam3"]["samples"] == 0


def test_queue_is_unlabelled_most_informative_first(store: SampleStore, tmp_path: Path) -> None:
    ids = [
        put_sample(store, bytes([i]) * 8, tmp_path / "spool", score=s).sample_id
        for i, s in enumerate((0.2, 0.9, 0.5))
    ]
    store.set_labels([Label(ids[1], np.zeros((0, 4)), (), "coco")])
    assert [s.sample_id for s in store.queue()] == [ids[2], ids[0]]
    assert store.counts().labelled == 1 and store.counts().unlabelled == 2


def test_label_writes_are_all_or_nothing_and_numbered(store: SampleStore, tmp_path: Path) -> None:
    h = put_sample(store, b"y" * 8, tmp_path / "spool")
    good = Label(h.sample_id, [[1, 2, 3, 4]], ("washer",), "coco")
    with pytest.raises(StorageError, match="cam1:ghost"):
        store.set_labels([good, Label("cam1:ghost", [], (), "coco")])
    assert store.label(h.sample_id) is None and store.label_revision() == 0
    assert store.set_labels([good]) == 1
    assert store.set_labels([good]) == 2
    assert store.labels_since(1)[0] == 1
    got = store.label(h.sample_id)
    assert got.classes == ("washer",) and got.boxes.tolist() == [[1, 2, 3, 4]]


def test_sweep_removes_files_left_by_a_crash_before_the_commit(
    store: SampleStore, tmp_path: Path
) -> None:
    kept = put_sample(store, b"keep", tmp_path / "spool")
    orphan = store.folder / store.relative_file(sample_header(b"lost"))
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(b"lost")
    assert store.sweep() == 1
    assert not orphan.exists() and store.get(kept.sample_id).path.exists()


def test_weak_sync_modes_are_refused(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="FULL"):
        SampleStore(tmp_path / "s", synchronous="NORMAL")


def test_the_database_is_in_wal_mode(store: SampleStore) -> None:
    import sqlite3

    db = sqlite3.connect(store.folder / "samples.db")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()
