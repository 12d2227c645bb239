"""Segment a stream of frames, overlapping decoding, inference and post-processing.

``run_stream(segmenter, source, on_result)`` runs every frame of ``source`` through
``segmenter.prepare`` -> ``segmenter.infer`` -> ``segmenter.postprocess`` and hands the
``Instances`` to ``on_result(frame, instances)``, in frame order; ``iter_stream(segmenter, source)`` (also
``Segmenter.stream``) yields them instead, as :class:`StreamResult` (frame, instances, ms of the frame's own
work). Pipelined (the default), three threads work on three frames at once:

* a reader thread decodes the next frame and prepares it (resize into the input frame);
* an inference thread runs the graph (the backends release the GIL while they compute);
* the calling thread post-processes (masks to the original size) and calls ``on_result``, so the
  callback may use GUI calls that must run on the main thread (``cv2.imshow``).

Between them, queues of ``queue_size`` frames: a slow stage makes the others wait instead of
piling frames up, so memory stays flat however long the stream. An error in any stage stops every
thread and is raised to the caller as ``StreamError`` naming the frame; Ctrl-C stops the threads
and re-raises KeyboardInterrupt. ``pipelined=False`` runs the same stages one after the other.

The segmenter is duck-typed: anything with ``prepare(image)``, ``infer(prepared)`` and
``postprocess(raw, prepared, score_threshold=, top_k=, masks=)``. numpy and the standard library only.
"""

from __future__ import annotations

import os
import queue
import random
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from sam3edge.runtime.image import as_rgb_uint8
from sam3edge.runtime.sources import Frame, FrameSource, open_source

__all__ = ["STAGES", "StageStats", "StreamError", "StreamResult", "StreamStats", "current_rss_mb", "iter_stream",
           "peak_rss_mb", "run_stream"]

STAGES = ("decode", "prepare", "infer", "postprocess", "on_result")
"""The stages timed per frame: reading the frame, ``prepare``, ``infer``, ``postprocess``, the callback."""

_POLL_S = 0.05  # how often a blocked thread looks whether the stream was stopped
_SAMPLES = 4096  # per-stage timing samples kept (a reservoir beyond that): flat memory on endless streams
_DONE = object()


class StreamError(RuntimeError):
    """A stage failed on a frame; the original exception is ``__cause__``.

    Attributes: ``stage`` (one of STAGES), ``frame_index`` (None when reading the source failed
    before a frame was produced) and ``frame_name``.
    """

    def __init__(self, message: str, stage: str, frame_index: int | None, frame_name: str | None):
        super().__init__(message)
        self.stage = stage
        self.frame_index = frame_index
        self.frame_name = frame_name


@dataclass(frozen=True)
class StageStats:
    """Milliseconds one stage took per frame: mean, median and 90th percentile, over ``count`` frames."""

    count: int
    mean_ms: float
    p50_ms: float
    p90_ms: float


@dataclass(frozen=True)
class StreamResult:
    """One frame's answer from :func:`iter_stream`: the frame, its ``Instances``, and ``ms``: the milliseconds
    this frame's own work took (decode + prepare + infer + postprocess; not the time it waited in a queue)."""

    frame: Frame
    instances: object
    ms: float


@dataclass
class StreamStats:
    """What a stream did: frames delivered, wall time, frame rate, per-stage times, resident memory.

    ``seconds`` runs from the start of ``run_stream`` to the last callback. In pipelined mode the
    stages overlap, so ``fps`` can exceed ``1000 / sum of stage means``. Memory is the process's
    resident set in MB (2**20 bytes): at the start, at the end, and the highest sampled once per
    frame while streaming (None where the platform does not tell; on macOS the peak is the
    process's lifetime peak from getrusage).
    """

    frames: int
    seconds: float
    fps: float
    pipelined: bool
    stages: dict[str, StageStats] = field(default_factory=dict)
    rss_start_mb: float | None = None
    rss_end_mb: float | None = None
    rss_peak_mb: float | None = None

    def summary(self) -> str:
        """One line: ``"200 frames in 4.1 s, 48.8 fps (pipelined) | infer 18.2/18.0/19.5 ms | ... | RSS ..."``."""
        mode = "pipelined" if self.pipelined else "sequential"
        parts = [f"{self.frames} frames in {self.seconds:.2f} s, {self.fps:.1f} fps ({mode})"]
        parts += [f"{name} {s.mean_ms:.2f}/{s.p50_ms:.2f}/{s.p90_ms:.2f} ms" for name, s in self.stages.items()]
        if self.rss_start_mb is not None:
            parts.append(f"RSS {self.rss_start_mb:.0f} -> {self.rss_end_mb:.0f} MB (peak {self.rss_peak_mb:.0f})")
        return " | ".join(parts) + "  [stage: mean/p50/p90]"


def _proc_status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def current_rss_mb() -> float | None:
    """Resident memory of this process now, in MB (VmRSS of /proc/self/status); None where unknown."""
    kb = _proc_status_kb("VmRSS:")
    return None if kb is None else kb / 1024.0


def peak_rss_mb() -> float | None:
    """Highest resident memory of this process so far, in MB (VmHWM, or getrusage where there is no /proc)."""
    kb = _proc_status_kb("VmHWM:")
    if kb is not None:
        return kb / 1024.0
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024.0  # bytes on macOS, KiB elsewhere


class _StageClock:
    """Per-frame durations of one stage in fixed memory: exact mean, percentiles over a reservoir sample."""

    def __init__(self, seed: int):
        self.count = 0
        self.total = 0.0
        self._samples = np.zeros(_SAMPLES, dtype=np.float64)
        self._rng = random.Random(seed)

    def add(self, seconds: float) -> None:
        if self.count < _SAMPLES:
            self._samples[self.count] = seconds
        else:
            j = self._rng.randrange(self.count + 1)
            if j < _SAMPLES:
                self._samples[j] = seconds
        self.count += 1
        self.total += seconds

    def stats(self) -> StageStats:
        if self.count == 0:
            return StageStats(0, 0.0, 0.0, 0.0)
        kept = self._samples[: min(self.count, _SAMPLES)] * 1000.0
        p50, p90 = np.percentile(kept, [50, 90])
        return StageStats(self.count, self.total * 1000.0 / self.count, float(p50), float(p90))


class _Stages:
    """The per-frame work, timed, with failures turned into StreamError naming the stage and the frame."""

    def __init__(self, segmenter, on_result, postprocess_options: dict):
        self.segmenter = segmenter
        self.on_result = on_result
        self.options = postprocess_options
        self.clocks = {name: _StageClock(seed) for seed, name in enumerate(STAGES)}
        self.last_index: int | None = None
        self._work: dict[int, float] = {}  # id(frame) -> seconds of its own work so far (frames in flight only)

    def _timed(self, stage: str, frame: Frame | None, fn: Callable, *args):
        start = time.perf_counter()
        try:
            result = fn(*args)
        except StopIteration:
            raise
        except Exception as e:
            raise _stream_error(stage, frame, self.last_index, e) from e
        took = time.perf_counter() - start
        self.clocks[stage].add(took)
        if stage != "on_result":  # the caller's callback is not the frame's own work
            key = id(result if frame is None else frame)
            self._work[key] = self._work.get(key, 0.0) + took
        return result

    def read(self, frames: Iterator[Frame]) -> Frame:
        """The next frame (StopIteration at the end)."""
        frame = self._timed("decode", None, next, frames)
        self.last_index = frame.index
        return frame

    def prepare(self, frame: Frame):
        return self._timed("prepare", frame, self.segmenter.prepare, frame.image)

    def infer(self, frame: Frame, prepared):
        return self._timed("infer", frame, self.segmenter.infer, prepared)

    def finish(self, frame: Frame, prepared, raw) -> StreamResult:
        instances = self._timed("postprocess", frame, lambda: self.segmenter.postprocess(raw, prepared, **self.options))
        result = StreamResult(frame, instances, 1000.0 * self._work.pop(id(frame), 0.0))
        if self.on_result is not None:
            self._timed("on_result", frame, self.on_result, frame, instances)
        return result


def _stream_error(stage: str, frame: Frame | None, last_index: int | None, error: Exception) -> StreamError:
    if frame is not None:
        where = f"frame {frame.index} ({frame.name})"
    else:
        where = "the first frame" if last_index is None else f"the frame after frame {last_index}"
    action = "reading" if stage == "decode" else f"{stage} of"
    return StreamError(f"{action} {where} failed: {type(error).__name__}: {error}", stage,
                       None if frame is None else frame.index, None if frame is None else frame.name)


def _as_frames(source) -> tuple[Iterable[Frame], FrameSource | None]:
    """(iterable of Frame, the FrameSource to close afterwards when run_stream opened it)."""
    if isinstance(source, (str, int, os.PathLike)) and not isinstance(source, bool):
        opened = open_source(source)
        return opened, opened
    if isinstance(source, np.ndarray):
        raise ValueError("run_stream: source is one array; pass a list of images, or segmenter.segment(image)")
    try:
        items = iter(source)
    except TypeError as e:
        raise ValueError(f"run_stream: source must be a path, camera index, URL or an iterable of frames, "
                         f"got {type(source).__name__}") from e
    if isinstance(source, FrameSource):
        return items, None
    return _wrap_images(items), None


def _wrap_images(items: Iterator) -> Iterator[Frame]:
    """Frames as they are; images (arrays, PIL images, paths) as Frame(i, rgb, "frame_<i>")."""
    try:
        for i, item in enumerate(items):
            yield item if isinstance(item, Frame) else Frame(i, as_rgb_uint8(item), f"frame_{i:06d}", None)
    finally:
        close = getattr(items, "close", None)
        if close is not None:
            close()


def run_stream(segmenter, source, on_result: Callable | None = None, score_threshold: float = 0.5,
               top_k: int | None = None, masks: bool = True, queue_size: int = 4, pipelined: bool = True,
               stop: threading.Event | None = None) -> StreamStats:
    """Segment every frame of ``source`` and hand each result to ``on_result(frame, instances)``, in order.

    Args:
        segmenter: a Segmenter (``prepare``, ``infer``, ``postprocess``).
        source: anything ``open_source`` accepts (path, folder, video, camera index, URL: opened and
            closed here), a ``FrameSource``, or an iterable of ``Frame`` or of images (uint8 RGB
            [H, W, 3] arrays, PIL images, paths).
        on_result: called in the calling thread as ``on_result(frame, instances)`` for each frame, in
            source order; None to discard the results (benchmarks).
        score_threshold, top_k, masks: passed to ``segmenter.postprocess``.
        queue_size: frames that may wait between two stages (pipelined); at most about
            ``2 * queue_size + 3`` frames are in memory at once.
        pipelined: overlap the stages in threads; False runs them one after the other.
        stop: set this event (from another thread or a signal handler) to end the stream after
            the frames in flight, as if the source had ended; the stats are returned.

    Raises:
        StreamError: a stage failed (``.stage``, ``.frame_index``; the original is ``__cause__``).
            Every frame before it has been handed to ``on_result``, every thread has ended.
        KeyboardInterrupt: re-raised after the threads have ended and the source is closed.
    """
    stages, delivered, owned = _start("run_stream", segmenter, source, on_result, score_threshold, top_k, masks,
                                      queue_size, pipelined, stop)
    rss = _RssSampler()
    start = time.perf_counter()
    count = 0
    try:
        for _ in delivered:
            count += 1
            rss.sample()
    finally:
        delivered.close()  # ends the threads now, also when Ctrl-C lands between two frames
        if owned is not None:
            owned.close()
    seconds = time.perf_counter() - start
    return StreamStats(
        frames=count, seconds=seconds, fps=count / seconds if seconds > 0 else 0.0, pipelined=pipelined,
        stages={name: clock.stats() for name, clock in stages.clocks.items()},
        rss_start_mb=rss.start, rss_end_mb=rss.sample(), rss_peak_mb=rss.peak,
    )


def iter_stream(segmenter, source, score_threshold: float = 0.5, top_k: int | None = None, masks: bool = True,
                queue_size: int = 4, pipelined: bool = True, stop: threading.Event | None = None
                ) -> Iterator[StreamResult]:
    """The frames of ``source`` segmented, one :class:`StreamResult` at a time, in order, as they finish::

        for r in iter_stream(seg, "row.mp4"):
            print(r.frame.index, len(r.instances), f"{r.ms:.1f} ms")

    Arguments as :func:`run_stream`; the same pipelining, flat memory and errors (``StreamError`` naming the
    frame). Leaving the loop early (``break``, an exception, ``close()`` on the iterator) stops the threads and
    closes a source opened here; results already yielded are the caller's.
    """
    _, results, owned = _start("iter_stream", segmenter, source, None, score_threshold, top_k, masks, queue_size,
                               pipelined, stop)  # a bad argument or source fails here, not at the first next()
    return _owned(results, owned)


def _start(who: str, segmenter, source, on_result, score_threshold, top_k, masks, queue_size: int, pipelined: bool,
           stop: threading.Event | None):
    """(stages, the generator of StreamResult, the FrameSource opened here or None) of one stream, checked."""
    if isinstance(queue_size, bool) or not isinstance(queue_size, int) or queue_size < 1:
        raise ValueError(f"{who}: queue_size must be an integer >= 1, got {queue_size!r}")
    frames, owned = _as_frames(source)
    stages = _Stages(segmenter, on_result, {"score_threshold": score_threshold, "top_k": top_k, "masks": masks})
    run = (_run_pipelined if pipelined else _run_sequential)(stages, iter(frames), queue_size,
                                                             stop or threading.Event())
    return stages, run, owned


def _owned(results: Iterator[StreamResult], owned: FrameSource | None) -> Iterator[StreamResult]:
    try:
        yield from results
    finally:
        results.close()
        if owned is not None:
            owned.close()


class _RssSampler:
    def __init__(self):
        self.start = current_rss_mb()
        self.peak = self.start if self.start is not None else peak_rss_mb()

    def sample(self) -> float | None:
        now = current_rss_mb()
        if now is None:
            self.peak = peak_rss_mb()
        elif now > self.peak:
            self.peak = now
        return now


def _run_sequential(stages: _Stages, frames: Iterator[Frame], queue_size: int, stop: threading.Event):
    try:
        while not stop.is_set():
            try:
                frame = stages.read(frames)
            except StopIteration:
                return
            prepared = stages.prepare(frame)
            yield stages.finish(frame, prepared, stages.infer(frame, prepared))
    finally:
        _close(frames)


def _close(frames: Iterator) -> None:
    close = getattr(frames, "close", None)
    if close is not None:
        close()


def _put(q: queue.Queue, item, abort: threading.Event) -> bool:
    """Put ``item`` into ``q``, waiting while it is full; False when the stream was aborted meanwhile."""
    while not abort.is_set():
        try:
            q.put(item, timeout=_POLL_S)
            return True
        except queue.Full:
            pass
    return False


def _get(q: queue.Queue, abort: threading.Event):
    """The next item of ``q``, or _DONE when the stream was aborted while waiting."""
    while not abort.is_set():
        try:
            return q.get(timeout=_POLL_S)
        except queue.Empty:
            pass
    return _DONE


def _reader(stages: _Stages, frames: Iterator[Frame], out: queue.Queue, abort, stop) -> None:
    """Thread 1: read and prepare frames until the source ends, a stop, or an error (forwarded as the item)."""
    try:
        while not stop.is_set() and not abort.is_set():
            try:
                frame = stages.read(frames)
            except StopIteration:
                break
            if not _put(out, (frame, stages.prepare(frame)), abort):
                return
        _put(out, _DONE, abort)
    except BaseException as e:  # everything must reach the caller's thread
        _put(out, e, abort)
    finally:
        _close(frames)


def _inferrer(stages: _Stages, inp: queue.Queue, out: queue.Queue, abort) -> None:
    """Thread 2: run the graph on prepared frames; passes the end or an error on, in order."""
    try:
        while True:
            item = _get(inp, abort)
            if item is _DONE or isinstance(item, BaseException):
                _put(out, item, abort)
                return
            frame, prepared = item
            if not _put(out, (frame, prepared, stages.infer(frame, prepared)), abort):
                return
    except BaseException as e:
        _put(out, e, abort)


def _run_pipelined(stages: _Stages, frames: Iterator[Frame], queue_size: int, stop: threading.Event):
    prepared_q: queue.Queue = queue.Queue(maxsize=queue_size)
    inferred_q: queue.Queue = queue.Queue(maxsize=queue_size)
    abort = threading.Event()
    threads = [
        threading.Thread(target=_reader, args=(stages, frames, prepared_q, abort, stop),
                         name="sam3edge-stream-reader", daemon=True),
        threading.Thread(target=_inferrer, args=(stages, prepared_q, inferred_q, abort),
                         name="sam3edge-stream-infer", daemon=True),
    ]
    for thread in threads:
        thread.start()
    try:
        while True:
            item = _get(inferred_q, abort)
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            frame, prepared, raw = item
            del item  # the queue slot's frame must not outlive its turn
            result = stages.finish(frame, prepared, raw)
            del frame, prepared, raw
            yield result
            del result
    finally:
        abort.set()
        for thread in threads:
            thread.join()
