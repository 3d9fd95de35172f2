"""Frame sources on real files: Kinect-like MKV, video, image folders; registry; reconnects."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from broker import wait_until
from recordings import make_depth, make_frames, mean_abs_diff, write_kinect_mkv, write_video

from dal import config as cfg
from dal.agent.config import AgentConfig, SourceConfig
from dal.agent.sources import (
    BaseSource,
    FolderSource,
    Frame,
    KinectSource,
    MkvSource,
    ReconnectingSource,
    VideoSource,
    backoff_delay,
    create_source,
    open_source,
)
from dal.agent.sources import reconnect as rc
from dal.coco import load_coco
from dal.errors import ConfigError, DependencyError, SourceError
from dal.procedural import make_tiny

JPEG_TOLERANCE = 4.0  # mean absolute difference per channel after an MJPEG round trip
FPS = 30


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    return make_frames(12, 320, 180)


@pytest.fixture(scope="module")
def kinect_mkv(tmp_path_factory: pytest.TempPathFactory, frames: list[np.ndarray]) -> Path:
    path = tmp_path_factory.mktemp("rec") / "kinect.mkv"
    return write_kinect_mkv(path, frames, fps=FPS, depth=make_depth(len(frames)))


def source_config(kind: str, uri: str | Path, **section: object) -> SourceConfig:
    return cfg.from_dict(AgentConfig, {"source": {"kind": kind, "uri": str(uri), **section}}).source


def assert_same_content(got: list[Frame], want: list[np.ndarray]) -> None:
    assert len(got) == len(want)
    for frame, image in zip(got, want, strict=True):
        assert frame.image.dtype == np.uint8 and frame.image.shape == image.shape
        assert mean_abs_diff(frame.image, image) < JPEG_TOLERANCE
    # the frames differ a lot from each other, so a shifted or repeated frame would fail above
    assert mean_abs_diff(want[0], want[1]) > 5 * JPEG_TOLERANCE


# ---- MKV --------------------------------------------------------------------------------------


def test_mkv_replays_every_colour_frame_with_its_depth(
    kinect_mkv: Path, frames: list[np.ndarray]
) -> None:
    with MkvSource(kinect_mkv, depth=True) as source:
        got = list(source)
    assert_same_content(got, frames)
    assert [f.index for f in got] == list(range(len(frames)))
    steps = np.diff([f.timestamp for f in got])
    np.testing.assert_allclose(steps, 1 / FPS, atol=2e-3)  # media time, not wall time
    want_depth = make_depth(len(frames))
    for frame, depth in zip(got, want_depth, strict=True):
        assert frame.depth is not None and frame.depth.dtype == np.uint16
        np.testing.assert_array_equal(frame.depth, depth)  # FFV1 is lossless
    assert got[0].source_id == f"mkv:{kinect_mkv}"


def test_mkv_colour_only_and_recordings_without_depth(
    tmp_path: Path, kinect_mkv: Path, frames: list[np.ndarray]
) -> None:
    with MkvSource(kinect_mkv) as source:
        assert all(f.depth is None for f in source)
    plain = write_kinect_mkv(tmp_path / "colour.mkv", frames[:3])
    with MkvSource(plain, depth=True) as source:
        got = list(source)
    assert len(got) == 3 and all(f.depth is None for f in got)


def test_mkv_loop_keeps_counting_and_time_moving(
    kinect_mkv: Path, frames: list[np.ndarray]
) -> None:
    n = len(frames)
    with MkvSource(kinect_mkv, loop=True) as source:
        got = [source.read() for _ in range(2 * n + 3)]
        assert source.stats.loops == 2
    assert [f.index for f in got] == list(range(2 * n + 3))  # type: ignore[union-attr]
    stamps = np.array([f.timestamp for f in got])  # type: ignore[union-attr]
    assert np.all(np.diff(stamps) > 0)
    assert mean_abs_diff(got[n].image, frames[0]) < JPEG_TOLERANCE  # type: ignore[union-attr]
    assert mean_abs_diff(got[2 * n + 2].image, frames[2]) < JPEG_TOLERANCE  # type: ignore[union-attr]


def test_mkv_realtime_honours_timestamps(kinect_mkv: Path) -> None:
    with MkvSource(kinect_mkv, realtime=True) as source:
        started = time.monotonic()
        got = list(source)
        elapsed = time.monotonic() - started
    span = (len(got) - 1) / FPS  # 11 frame intervals = 0.367 s
    assert span * 0.8 <= elapsed <= span + 2.0


def test_mkv_wrong_colour_track_is_named(kinect_mkv: Path) -> None:
    with pytest.raises(SourceError, match=r"tracks are \[.COLOR., .DEPTH.\]"):
        MkvSource(kinect_mkv, color_track="RGB").open()


def test_mkv_cut_short_replays_what_is_there(
    tmp_path: Path, kinect_mkv: Path, frames: list[np.ndarray]
) -> None:
    cut = tmp_path / "cut.mkv"  # k4arecorder killed mid-write: no index, a torn last block
    data = kinect_mkv.read_bytes()
    cut.write_bytes(data[: len(data) * 2 // 3])
    with MkvSource(cut, depth=True) as source:
        got = list(source)
    assert 0 < len(got) < len(frames)
    assert_same_content(got, frames[: len(got)])


def test_mkv_that_is_not_a_recording(tmp_path: Path) -> None:
    bad = tmp_path / "bad.mkv"
    bad.write_bytes(b"\x00" * 1000)
    with pytest.raises(SourceError, match="cannot read recording"):
        MkvSource(bad).open()


# ---- video ------------------------------------------------------------------------------------


def test_video_file_replays_and_loops(tmp_path: Path, frames: list[np.ndarray]) -> None:
    path = write_video(tmp_path / "clip.avi", frames[:6], fps=FPS)
    with VideoSource(str(path)) as source:
        got = list(source)
    assert_same_content(got, frames[:6])
    np.testing.assert_allclose(np.diff([f.timestamp for f in got]), 1 / FPS, atol=2e-3)
    with VideoSource(str(path), loop=True) as source:
        looped = [source.read() for _ in range(8)]
    assert mean_abs_diff(looped[6].image, frames[0]) < JPEG_TOLERANCE  # type: ignore[union-attr]


def test_live_video_reports_a_lost_stream(tmp_path: Path, frames: list[np.ndarray]) -> None:
    path = write_video(tmp_path / "clip.avi", frames[:4], fps=FPS)
    source = VideoSource(str(path), live=True, stall_timeout_s=5.0)
    source.open()
    try:
        with pytest.raises(SourceError, match="stopped delivering"):
            for _ in range(10):  # the grabber hands out only the newest frame
                frame = source.read()
                assert frame.image.shape == (180, 320, 3)
    finally:
        source.close()


# ---- folder -----------------------------------------------------------------------------------


def test_folder_carries_coco_ground_truth(tmp_path: Path) -> None:
    json_path = make_tiny(tmp_path / "set", 4)
    dataset = load_coco(json_path)
    with FolderSource(tmp_path / "set" / "images", annotations=json_path, interval_s=0.5) as source:
        got = list(source)
    assert len(got) == 4
    assert np.allclose(np.diff([f.timestamp for f in got]), 0.5)
    by_name = {Path(r.file_name).name: r for r in dataset.images}
    for frame in got:
        rec = by_name[frame.name]
        assert frame.ground_truth is not None
        np.testing.assert_allclose(frame.ground_truth.boxes, rec.boxes)
        assert frame.ground_truth.image_id == rec.id
        assert set(frame.ground_truth.labels.tolist()) <= {1, 2}
        assert frame.image.shape == (rec.height, rec.width, 3)
    assert got[0].ground_truth.to_json()["image_id"] == by_name[got[0].name].id  # type: ignore[union-attr]


def test_folder_skips_and_counts_corrupt_images(tmp_path: Path, frames: list[np.ndarray]) -> None:
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(frames[i]).save(folder / f"{i:02d}_ok.png")
    (folder / "01_garbage.jpg").write_bytes(b"not an image at all")
    good = folder / "00_ok.png"
    (folder / "02_truncated.png").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (folder / "notes.txt").write_text("ignored: not an image extension")
    with FolderSource(folder) as source:
        got = list(source)
        assert source.stats.corrupt == 2
        assert source.stats.frames == 3
    assert [f.name for f in got] == ["00_ok.png", "01_ok.png", "02_ok.png"]
    np.testing.assert_array_equal(got[1].image, frames[1])


def test_folder_loop_lists_the_folder_again(tmp_path: Path, frames: list[np.ndarray]) -> None:
    from PIL import Image

    Image.fromarray(frames[0]).save(tmp_path / "a.png")
    with FolderSource(tmp_path, loop=True) as source:
        first = source.read()
        Image.fromarray(frames[1]).save(tmp_path / "b.png")  # appears during the first pass
        names = [source.read().name for _ in range(3)]  # type: ignore[union-attr]
    assert first.name == "a.png"  # type: ignore[union-attr]
    assert names == ["a.png", "b.png", "a.png"]


# ---- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda p: FolderSource(p / "missing"), "image folder"),
        (lambda p: FolderSource(p), "no images"),
        (lambda p: MkvSource(p / "missing.mkv"), "recording"),
        (lambda p: VideoSource(str(p / "missing.mp4")), "video file"),
    ],
)
def test_missing_inputs_raise_source_error_with_a_hint(tmp_path: Path, make, needle: str) -> None:
    with pytest.raises(SourceError) as err:
        make(tmp_path).open()
    assert needle in str(err.value)
    assert err.value.hint is not None and "[source" in err.value.hint


def test_kinect_without_pyk4a_names_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyk4a", None)  # as if not installed
    with pytest.raises(DependencyError) as err:
        KinectSource(0).open()
    text = str(err.value)
    assert "pyk4a" in text
    assert "pip install 'dal[kinect]'" in text
    assert "libk4a1.4" in text and "k4a-tools" in text


def test_registry_builds_each_kind_and_rejects_unknown_ones(tmp_path: Path) -> None:
    assert isinstance(create_source(source_config("folder", tmp_path)), FolderSource)
    assert isinstance(create_source(source_config("mkv", tmp_path / "a.mkv")), MkvSource)
    assert isinstance(create_source(source_config("video", "rtsp://cam/1")), VideoSource)
    kinect = create_source(source_config("kinect", "", kinect={"device": 1, "fps": 30}))
    assert isinstance(kinect, KinectSource) and (kinect.device, kinect.fps) == (1, 30)
    with pytest.raises(ConfigError, match="did you mean 'mkv'"):
        create_source(source_config("mvk", tmp_path))
    with pytest.raises(ConfigError, match="uri is empty"):
        create_source(source_config("folder", ""))


# ---- reconnect --------------------------------------------------------------------------------


class FlakySource(BaseSource):
    """Delivers frames, then loses the 'camera' once (as a USB unplug would)."""

    kind = "flaky"
    opened = 0

    def __init__(self, fail_after: int) -> None:
        super().__init__("flaky:0")
        self.fail_after = fail_after

    def open(self) -> None:
        FlakySource.opened += 1

    def read(self) -> Frame | None:
        if FlakySource.opened == 1 and self.stats.frames == self.fail_after:
            raise SourceError("device unplugged")
        if self.stats.frames >= 5:
            return None
        return self._frame(np.zeros((4, 4, 3), np.uint8), time.time())


def test_backoff_grows_exponentially_and_is_capped() -> None:
    delays = [backoff_delay(a, 0.5, 2.0, 5.0) for a in range(0, 7)]
    assert delays == [0.0, 0.5, 1.0, 2.0, 4.0, 5.0, 5.0]


def test_lost_source_is_reopened_and_state_reported() -> None:
    FlakySource.opened = 0
    wrapped = ReconnectingSource(lambda: FlakySource(fail_after=2), initial_s=0.01)
    got = list(wrapped)
    assert len(got) == 2 + 5  # two frames, the loss, then a full run after reconnecting
    state = wrapped.state
    assert state.status == rc.ENDED
    assert state.reconnects == 1 and state.attempts == 0
    assert state.last_error == "device unplugged"
    assert state.frames == 7


def test_reconnect_gives_up_after_max_attempts(tmp_path: Path) -> None:
    config = source_config(
        "folder",
        tmp_path / "not-yet",
        reconnect={"initial_s": 0.01, "max_s": 0.02, "max_attempts": 3},
    )
    wrapped = open_source(config)
    with pytest.raises(SourceError, match="after 3 attempts"):
        wrapped.read()
    state = wrapped.state
    assert (state.status, state.attempts) == (rc.FAILED, 3)
    assert "not found" in (state.last_error or "")


def test_source_that_appears_later_connects(tmp_path: Path, frames: list[np.ndarray]) -> None:
    from PIL import Image

    folder = tmp_path / "later"
    states: list[str] = []
    wrapped = ReconnectingSource(lambda: FolderSource(folder), initial_s=0.05, factor=1.0)

    def create_folder() -> None:
        wait_until(lambda: wrapped.state.attempts >= 2, 10, "the source to be retried")
        states.append(wrapped.state.status)
        staging = tmp_path / "staging"
        staging.mkdir()
        Image.fromarray(frames[0]).save(staging / "x.png")
        staging.rename(folder)  # appears complete, as a mounted share or camera would

    worker = threading.Thread(target=create_folder)
    worker.start()
    frame = wrapped.read()
    worker.join()
    assert states == [rc.RECONNECTING]
    assert frame is not None and frame.name == "x.png"
    assert wrapped.state.status == rc.CONNECTED and wrapped.state.attempts == 0


def test_missing_dependency_is_not_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyk4a", None)
    wrapped = ReconnectingSource(lambda: KinectSource(0), initial_s=10.0)
    started = time.monotonic()
    with pytest.raises(DependencyError):
        wrapped.read()
    assert time.monotonic() - started < 1.0


def test_stop_interrupts_the_backoff_wait(tmp_path: Path) -> None:
    stop = threading.Event()
    wrapped = ReconnectingSource(
        lambda: FolderSource(tmp_path / "never"), initial_s=30.0, stop=stop
    )
    threading.Timer(0.2, stop.set).start()
    started = time.monotonic()
    assert wrapped.read() is None
    assert time.monotonic() - started < 5.0
    assert wrapped.state.status == rc.STOPPED
