"""Streaming: frame order, pipelined == sequential, errors and Ctrl-C stop every thread, bounded memory."""

from __future__ import annotations

import _thread
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pytest

from sam3edge.runtime.image import Resize, as_rgb_uint8
from sam3edge.runtime.instances import Instances
from sam3edge.runtime.sources import Frame
from sam3edge.runtime.stream import STAGES, StreamError, StreamStats, current_rss_mb, run_stream
from sam3edge.runtime.tracking import TrackerConfig


@dataclass
class Prepared:
    frame: np.ndarray  # uint8 [1, S, S, 3]
    resize: Resize
    image_size: tuple[int, int]


class FakeSegmenter:
    """Test double for the stream machinery, not a backend.

    Follows the Segmenter protocol (``prepare`` / ``infer`` / ``postprocess`` / ``segment`` /
    ``concepts``) and does real numpy work on the pixels, so results depend on the frame: concept 0
    ("bright thing") is where the input frame is brighter than 128, concept 1 ("red thing") where
    red exceeds green by 40; masks go back to the original size through ``Resize``. It can sleep
    in a stage (to see overlap) and raise on the ``fail_on``-th call of ``fail_stage`` (the calls of
    a stage come in frame order, so that is frame ``fail_on`` of a stream counted from 0).
    """

    concepts = ["bright thing", "red thing"]

    def __init__(self, size: int = 32, fail_stage: str | None = None, fail_on: int = -1,
                 delays: dict[str, float] | None = None, jitter_s: float = 0.0):
        self.size = size
        self.fail_stage, self.fail_on = fail_stage, fail_on
        self.delays = delays or {}
        self.jitter = np.random.default_rng(0).uniform(0, jitter_s, 10_000) if jitter_s else None
        self.calls = Counter()

    def _enter(self, stage: str) -> None:
        n = self.calls[stage]
        self.calls[stage] += 1
        if stage == self.fail_stage and n == self.fail_on:
            raise ValueError(f"fake {stage} failure")
        delay = self.delays.get(stage, 0.0) + (self.jitter[n % len(self.jitter)] if self.jitter is not None else 0)
        if delay:
            time.sleep(delay)

    def prepare(self, image) -> Prepared:
        self._enter("prepare")
        rgb = as_rgb_uint8(image)
        resize = Resize.fit(rgb.shape[0], rgb.shape[1], self.size)
        return Prepared(resize.apply(rgb)[None], resize, rgb.shape[:2])

    def infer(self, prepared: Prepared) -> dict:
        self._enter("infer")
        f = prepared.frame[0].astype(np.float32)
        logits = np.stack([(f.mean(axis=-1) - 128.0) / 16.0, (f[..., 0] - f[..., 1] - 40.0) / 16.0])
        return {"mask_logits": logits, "presence": 1.0 / (1.0 + np.exp(-logits.max(axis=(1, 2))))}

    def postprocess(self, raw: dict, prepared: Prepared, score_threshold: float = 0.5, top_k: int | None = None,
                    masks: bool = True) -> Instances:
        self._enter("postprocess")
        full = prepared.resize.masks_to_original(raw["mask_logits"])
        keep = [i for i in range(len(full)) if full[i].any()]
        boxes = []
        for i in keep:
            ys, xs = np.nonzero(full[i])
            boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        scores = [float(full[i].mean()) ** 0.25 for i in keep]
        inst = Instances([self.concepts[i] for i in keep], keep, scores, np.asarray(boxes, np.float32).reshape(-1, 4),
                         full[keep], dict(zip(self.concepts, raw["presence"].tolist())), prepared.image_size)
        inst = inst.filter(score_threshold)
        if top_k is not None:
            inst = inst.top_k(top_k)
        if not masks:
            inst.masks = None
        return inst

    def segment(self, image, **options) -> Instances:
        prepared = self.prepare(image)
        return self.postprocess(self.infer(prepared), prepared, **options)


def frame_image(i: int, size: int = 64) -> np.ndarray:
    """A new array per frame, as a decoder gives: a red square moving over a gradient, brightness varying with i."""
    y, x = np.mgrid[0:size, 0:size]
    rgb = np.stack([x * 4 % 256, y * 4 % 256, np.full_like(x, (i * 37) % 256)], -1).astype(np.uint8)
    s = size // 4
    x0 = (5 * i) % (size - s)
    rgb[s:2 * s, x0:x0 + s] = (230, 30, 30)
    return rgb


def synthetic_frames(n: int, size: int = 64, counter: list | None = None):
    """In-memory source of ``n`` frames; appends to ``counter`` each time a frame is produced."""
    for i in range(n):
        if counter is not None:
            counter.append(i)
        yield Frame(i, frame_image(i, size), f"synthetic_{i:06d}", i / 30.0)


def stream_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("sam3edge-stream")]


def collect(segmenter, source, **options) -> tuple[list, StreamStats]:
    results = []
    stats = run_stream(segmenter, source, lambda frame, inst: results.append((frame.index, inst)), **options)
    return results, stats


def test_stream_imports_without_torch_cv2_or_av():
    """The stream, tracking and ROS-bag modules and the orchard video need none of torch, OpenCV, PyAV, scipy or
    rosbags to import (rosbags is imported when a bag is opened; without scipy the tracker matches greedily)."""
    code = (
        "import sys\n"
        "for name in ('torch', 'cv2', 'av', 'scipy', 'rosbags'): sys.modules[name] = None\n"
        "import sam3edge.runtime.stream, sam3edge.runtime.tracking, sam3edge.runtime.rosbag\n"
        "import sam3edge.data.orchard_video\n"
        "from sam3edge.runtime.instances import Instances\n"
        "t = sam3edge.runtime.tracking.ByteTracker(sam3edge.runtime.tracking.TrackerConfig(min_hits=1))\n"
        "out = t.update(Instances(['a'], [0], [0.9], [[0, 0, 4, 4]], None, {}, (8, 8)))\n"
        "assert out.track_ids.tolist() == [1]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ---- order and equality ---------------------------------------------------------------------------


@pytest.mark.parametrize("queue_size", [1, 4])
def test_results_arrive_in_frame_order_even_when_stage_times_vary(queue_size):
    seg = FakeSegmenter(jitter_s=0.003)
    results, stats = collect(seg, synthetic_frames(40), queue_size=queue_size)
    assert [i for i, _ in results] == list(range(40))
    assert stats.frames == 40 and not stream_threads()


def test_pipelined_results_equal_sequential_results():
    pipelined, _ = collect(FakeSegmenter(), synthetic_frames(30), pipelined=True)
    sequential, _ = collect(FakeSegmenter(), synthetic_frames(30), pipelined=False)
    assert [i for i, _ in pipelined] == [i for i, _ in sequential] == list(range(30))
    assert [inst.to_dict() for _, inst in pipelined] == [inst.to_dict() for _, inst in sequential]
    assert any(len(inst) for _, inst in pipelined)  # the fake found something to compare


def test_stream_results_equal_segment_on_each_frame():
    results, _ = collect(FakeSegmenter(), synthetic_frames(5), score_threshold=0.3, top_k=1, masks=False)
    for i, inst in results:
        expected = FakeSegmenter().segment(frame_image(i), score_threshold=0.3, top_k=1, masks=False)
        assert inst.to_dict() == expected.to_dict() and inst.masks is None and len(inst) <= 1


def test_a_list_of_images_is_a_source_with_numbered_frames():
    frames = []
    run_stream(FakeSegmenter(), [frame_image(i) for i in range(3)], lambda f, inst: frames.append(f))
    assert [(f.index, f.name) for f in frames] == [(0, "frame_000000"), (1, "frame_000001"), (2, "frame_000002")]


def test_a_folder_path_is_opened_and_streamed(tmp_path):
    from PIL import Image

    for i in range(3):
        Image.fromarray(frame_image(i)).save(tmp_path / f"{i}.png")
    names = []
    stats = run_stream(FakeSegmenter(), str(tmp_path), lambda f, inst: names.append(f.name))
    assert names == ["0.png", "1.png", "2.png"] and stats.frames == 3


def test_pipelining_overlaps_the_stages():
    delays = {"prepare": 0.01, "infer": 0.01, "postprocess": 0.01}
    _, sequential = collect(FakeSegmenter(delays=delays), synthetic_frames(20), pipelined=False)
    _, pipelined = collect(FakeSegmenter(delays=delays), synthetic_frames(20), pipelined=True)
    assert sequential.seconds > 0.6
    assert pipelined.seconds < 0.7 * sequential.seconds


# ---- stats ----------------------------------------------------------------------------------------


def test_stats_report_frames_rate_stage_times_and_memory():
    _, stats = collect(FakeSegmenter(delays={"infer": 0.002}), synthetic_frames(25))
    assert stats.frames == 25 and stats.pipelined
    assert stats.fps == pytest.approx(25 / stats.seconds)
    assert list(stats.stages) == list(STAGES)
    assert all(s.count == 25 for s in stats.stages.values())
    infer = stats.stages["infer"]
    assert 2.0 <= infer.p50_ms <= infer.p90_ms and infer.mean_ms >= 2.0
    if sys.platform.startswith("linux"):
        assert 0 < stats.rss_start_mb <= stats.rss_peak_mb and stats.rss_end_mb <= stats.rss_peak_mb
    assert "25 frames" in stats.summary() and "infer" in stats.summary()


def test_an_empty_source_gives_zero_frames():
    _, stats = collect(FakeSegmenter(), [])
    assert stats.frames == 0 and stats.fps >= 0 and stats.stages["infer"].count == 0


def test_stage_percentiles_stay_representative_beyond_the_sample_reservoir():
    from sam3edge.runtime.stream import _SAMPLES, _StageClock

    clock = _StageClock(seed=0)
    values = np.random.default_rng(1).permutation(np.linspace(0.0, 0.01, 3 * _SAMPLES))
    for v in values:
        clock.add(float(v))
    stats = clock.stats()
    assert stats.count == 3 * _SAMPLES and stats.mean_ms == pytest.approx(5.0)
    assert stats.p50_ms == pytest.approx(5.0, abs=0.3) and stats.p90_ms == pytest.approx(9.0, abs=0.3)


# ---- errors, Ctrl-C, stop -------------------------------------------------------------------------


@pytest.mark.parametrize("pipelined", [True, False], ids=["pipelined", "sequential"])
@pytest.mark.parametrize("stage", ["prepare", "infer", "postprocess", "on_result"])
def test_an_error_on_frame_5_propagates_with_its_index_and_no_thread_is_left(stage, pipelined):
    seg = FakeSegmenter(fail_stage=None if stage == "on_result" else stage, fail_on=5)
    delivered = []

    def on_result(frame, inst):
        if stage == "on_result" and frame.index == 5:
            raise ValueError("fake on_result failure")
        delivered.append(frame.index)

    with pytest.raises(StreamError, match=rf"{stage} of frame 5 \(synthetic_000005\) failed: ValueError") as info:
        run_stream(seg, synthetic_frames(1000), on_result, queue_size=2, pipelined=pipelined)
    assert (info.value.stage, info.value.frame_index, info.value.frame_name) == (stage, 5, "synthetic_000005")
    assert isinstance(info.value.__cause__, ValueError)
    assert delivered == [0, 1, 2, 3, 4]  # every frame before the failing one was handed over
    assert not stream_threads()


def test_an_error_while_reading_the_source_names_the_last_good_frame():
    def source():
        yield from synthetic_frames(3)
        raise OSError("decoder crashed")

    with pytest.raises(StreamError, match="reading the frame after frame 2 failed: OSError: decoder crashed") as info:
        run_stream(FakeSegmenter(), source())
    assert info.value.stage == "decode" and info.value.frame_index is None
    assert not stream_threads()


def closing_frames(n: int, closed: list):
    """synthetic_frames(n) that appends True to ``closed`` when the generator is closed (or ends)."""
    try:
        yield from synthetic_frames(n)
    finally:
        closed.append(True)


def test_the_source_generator_is_closed_when_the_stream_fails():
    closed = []
    with pytest.raises(StreamError):
        run_stream(FakeSegmenter(fail_stage="infer", fail_on=3), closing_frames(1000, closed), queue_size=1)
    assert closed == [True] and not stream_threads()


@pytest.mark.parametrize("pipelined", [True, False], ids=["pipelined", "sequential"])
def test_keyboard_interrupt_in_the_callback_stops_cleanly(pipelined):
    def on_result(frame, inst):
        if frame.index == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_stream(FakeSegmenter(), synthetic_frames(1000), on_result, pipelined=pipelined)
    assert not stream_threads()


def test_ctrl_c_while_streaming_an_endless_source_stops_every_thread():
    def endless():
        i = 0
        while True:
            yield Frame(i, frame_image(i, 32), f"live_{i}", None)
            i += 1

    safety = threading.Event()  # ends the stream (and fails the test) if the interrupt never came
    timers = [threading.Timer(0.3, _thread.interrupt_main), threading.Timer(20.0, safety.set)]
    for t in timers:
        t.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            run_stream(FakeSegmenter(delays={"infer": 0.002}), endless(), stop=safety)
    finally:
        for t in timers:
            t.cancel()
    assert not safety.is_set()
    assert not stream_threads()


def test_a_stop_event_ends_the_stream_and_returns_the_stats():
    stop = threading.Event()

    def on_result(frame, inst):
        if frame.index == 10:
            stop.set()

    stats = run_stream(FakeSegmenter(), synthetic_frames(10_000), on_result, queue_size=2, stop=stop)
    assert 11 <= stats.frames <= 11 + 2 * 2 + 3
    assert not stream_threads()


def test_queue_size_must_be_positive():
    with pytest.raises(ValueError, match="queue_size"):
        run_stream(FakeSegmenter(), synthetic_frames(1), queue_size=0)


# ---- bounded memory -------------------------------------------------------------------------------


def test_bounded_queues_keep_few_frames_in_flight_behind_a_slow_callback():
    produced, in_flight = [], []

    def on_result(frame, inst):
        in_flight.append(len(produced) - frame.index)
        time.sleep(0.002)

    run_stream(FakeSegmenter(), synthetic_frames(100, counter=produced), on_result, queue_size=2)
    assert max(in_flight) <= 2 * 2 + 3
    assert max(in_flight) >= 4  # the queues did fill up: the bound was exercised


def _rss_growth_over_2000_frames(source, track: bool = False, **options) -> tuple[float, float, float]:
    """(RSS at frame 200, RSS at frame 1999, seconds) of a 2000-frame stream (``track``: with a tracker, a counter
    and a line counter on every frame)."""
    from sam3edge.runtime.tracking import ByteTracker, LineCounter, TrackCounter

    rss = {}
    tracker, counter, line = ByteTracker(TrackerConfig(min_hits=1)), TrackCounter(), LineCounter((16, 0), (16, 64))

    def on_result(frame, inst):
        if track:
            tracked = tracker.update(inst)
            counter.update(tracked)
            line.update(tracked)
        if frame.index in (200, 1999):
            rss[frame.index] = current_rss_mb()

    stats = run_stream(FakeSegmenter(size=64), source, on_result, **options)
    assert stats.frames == 2000
    print(f"\nRSS at frame 200: {rss[200]:.2f} MB, at frame 1999: {rss[1999]:.2f} MB, "
          f"growth {rss[1999] - rss[200]:+.2f} MB; {stats.summary()}")
    return rss[200], rss[1999], stats.seconds


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads VmRSS from /proc")
def test_memory_stays_flat_over_a_2000_frame_stream():
    """With tracking and counting on every frame. Measured in a fresh process: after ~600 tests this one's RSS is
    ~1.9 GB, and allocator noise of that heap
    (+3.6 MB once, with no stream at fault) drowns the stream's own growth (+0.07 MB alone)."""
    from pathlib import Path

    code = ("import sys; sys.path.insert(0, sys.argv[1]); import test_runtime_stream as t; "
            "a, b, _ = t._rss_growth_over_2000_frames(t.synthetic_frames(2000), track=True, queue_size=4); "
            "print(b - a, len(t.stream_threads()))")
    done = subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent)], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    growth, threads_left = done.stdout.split()[-2:]
    assert float(growth) < 3.0 and int(threads_left) == 0


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads VmRSS from /proc")
def test_memory_stays_flat_over_a_2000_frame_video_file(tmp_path):
    cv2 = pytest.importorskip("cv2")
    from sam3edge.runtime.sources import open_source

    path = tmp_path / "long.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (96, 64))
    assert writer.isOpened()
    for i in range(2000):
        writer.write(np.ascontiguousarray(frame_image(i, 96)[:64, :, ::-1]))
    writer.release()
    with open_source(path) as source:
        assert len(source) == 2000
        at_200, at_2000, _ = _rss_growth_over_2000_frames(source, queue_size=4)
    assert at_2000 - at_200 < 3.0
    assert not stream_threads()


# ---- iterator API -----------------------------------------------------------------------------------


@pytest.mark.parametrize("pipelined", [True, False], ids=["pipelined", "sequential"])
def test_iter_stream_yields_what_run_stream_hands_the_callback_with_each_frames_own_ms(pipelined):
    from sam3edge.runtime.stream import iter_stream

    seg = FakeSegmenter(delays={"infer": 0.004}, jitter_s=0.002)
    want, _ = collect(FakeSegmenter(), synthetic_frames(20))
    got = list(iter_stream(seg, synthetic_frames(20), pipelined=pipelined))
    assert [r.frame.index for r in got] == list(range(20))
    for r, (_, inst) in zip(got, want):
        assert r.instances.phrases == inst.phrases and np.array_equal(r.instances.masks, inst.masks)
    # the frame's own work (decode + prepare + infer + postprocess), which includes the 4 ms inference sleep and
    # not the other frames': pipelined, a frame waits in queues too, and that is not counted
    assert all(4.0 <= r.ms < 60.0 for r in got)
    assert not stream_threads()


def test_leaving_an_iter_stream_loop_early_stops_its_threads_and_closes_the_source():
    from sam3edge.runtime.stream import iter_stream

    closed, seen = [], []
    for r in iter_stream(FakeSegmenter(), closing_frames(10_000, closed), queue_size=2):
        seen.append(r.frame.index)
        if r.frame.index == 5:
            break
    assert seen == list(range(6))
    deadline = time.time() + 5
    while (stream_threads() or not closed) and time.time() < deadline:
        time.sleep(0.01)
    assert closed == [True] and not stream_threads()


def test_iter_stream_checks_its_arguments_before_the_first_frame():
    from sam3edge.runtime.stream import iter_stream

    with pytest.raises(ValueError, match="queue_size"):
        iter_stream(FakeSegmenter(), synthetic_frames(1), queue_size=0)
    with pytest.raises(ValueError, match="one array"):
        iter_stream(FakeSegmenter(), frame_image(0))
    with pytest.raises(StreamError, match="infer of frame 2"):
        list(iter_stream(FakeSegmenter(fail_stage="infer", fail_on=2), synthetic_frames(10)))
    assert not stream_threads()


def test_segment_with_tracking_writes_ids_mot_lines_and_counts(tmp_path):
    """segment_source(track=True) wiring: one red square moving right over 12 frames keeps one identity in the
    JSON lines, the COCO JSON and tracks.txt (MOT), is counted once, and crosses the line x = 48 once."""
    import json

    from PIL import Image

    from sam3edge.runtime.segment import segment_source

    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(12):
        rgb = np.zeros((64, 96, 3), np.uint8)
        rgb[20:36, 6 * i:6 * i + 16] = (230, 30, 30)
        Image.fromarray(rgb).save(folder / f"f{i:02d}.png")
    seg = FakeSegmenter()
    seg.backend_name = "fake"
    summary = segment_source(seg, folder, tmp_path / "out", score_threshold=0.3, overlays=False, progress=False,
                             track=True, lines=[((48, 0), (48, 64))], video_out=True,
                             zones=[[(60, 0), (96, 0), (96, 64), (60, 64)]])
    tracking = summary["tracking"]
    with pytest.raises(ValueError, match=r"exclusive phrases \['ripe apple'\] are not among the concepts"):
        segment_source(seg, folder, tmp_path / "out2", track=True, exclusive=[("red thing", "ripe apple")])
    assert not (tmp_path / "out2").exists()
    cv2 = pytest.importorskip("cv2")
    cap = cv2.VideoCapture(summary["video"])
    pictures = []
    while True:
        ok, picture = cap.read()
        if not ok:
            break
        pictures.append(picture)
    assert len(pictures) == 12 and pictures[0].shape == (64, 96, 3)
    # the caption (running counts, white on black) is drawn at the top left once something is counted
    assert pictures[-1][2:10, 2:30].max() > 150 and pictures[0][2:10, 2:30].max() < 60
    assert tracking["unique"] == {"red thing": 1}
    assert tracking["lines"] == [{"red thing": {"in": 0, "out": 1}}]  # down-pointing line; +x is its left side
    assert tracking["zones"] == [{"red thing": {"inside": 1, "entered": 1, "exited": 0, "unique": 1}}]
    records = [json.loads(x) for x in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    ids = [a["track_id"] for r in records for a in r["annotations"]]
    assert len(records) == 12 and len(ids) == 11 and set(ids) == {ids[0]}  # min_hits 2: reported from frame 1
    mot = [line.split(",") for line in (tmp_path / "out" / "tracks.txt").read_text().splitlines()]
    assert [int(m[0]) for m in mot] == list(range(2, 13)) and {int(m[1]) for m in mot} == {ids[0]}
    x, w = float(mot[0][2]), float(mot[0][4])
    assert abs(x - 6) <= 2 and abs(w - 16) <= 3  # frame 1's square, in the frame's own pixels
    coco = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert coco["info"]["tracking"]["unique"] == {"red thing": 1}
    assert [a["track_id"] for a in coco["annotations"]] == ids
    with pytest.raises(ValueError, match="tracking"):
        segment_source(seg, folder, tmp_path / "out2", lines=[((0, 0), (1, 1))], progress=False)
