"""Identities across frames: a ByteTrack-style tracker per concept, and counters on top of it.

Torch-free, numpy only (scipy's Hungarian solver where installed). A tracker takes one frame's
:class:`~sam3edge.runtime.instances.Instances` at a time and returns the instances it reports, with
``track_ids`` set; identities are unique across concepts within one tracker.

Why our own and not a tracking package: the kept ByteTrack implementations sit in packages a robot's runtime
should not carry (Roboflow ``trackers`` requires the GUI build ``opencv-python``, which OpenCV says must not be
installed beside ``opencv-python-headless``, our ``[video]`` extra; ``supervision`` dropped its ByteTrack in
0.27 for ``trackers``; ``boxmot`` requires torch). The algorithm is ByteTrack's (Zhang et al., 2022):

1. every live track predicts its box one frame ahead (constant velocity, smoothed: an alpha-beta filter);
2. detections scoring >= ``high_score`` are matched to the tracks by box IoU (Hungarian, IoU >= ``match_iou``);
3. tracks left over get a second chance with the low-score detections (``low_score`` <= score < ``high_score``,
   IoU >= ``low_match_iou``): an apple half hidden by a leaf keeps its identity instead of being dropped;
4. unmatched detections scoring >= ``birth_score`` start tentative tracks, confirmed after ``min_hits``
   consecutive frames (a one-frame false positive never gets an id); a tentative track that misses is dropped,
   a confirmed one is kept ``max_missed`` frames (occlusion, a missed detection) before it ends.

A frame reports the confirmed tracks matched in it. Concepts are tracked apart (an apple that is "ripe" in one
frame and "unripe" in the next is two objects to a per-concept count; ask one concept to count them once).

Counting: :class:`TrackCounter` (unique identities per concept over the stream) and :class:`LineCounter`
(crossings of a line segment, in and out per concept: a track's box centre changing sides across the segment).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from sam3edge.runtime.instances import Instances

__all__ = ["TRACKERS", "ByteTracker", "LineCounter", "TrackCounter", "TrackerConfig", "create_tracker"]


@dataclass(frozen=True)
class TrackerConfig:
    """ByteTrack's knobs (defaults: the paper's, for detectors whose scores are calibrated probabilities).

    high_score: detections at or above it are matched first and may start tracks. low_score: the floor of the
    second association (below it a detection is ignored). birth_score: the score a detection needs to start a
    track. match_iou / low_match_iou: least box IoU of a match in the first / second association. max_missed:
    frames a confirmed track survives unseen. min_hits: consecutive matched frames before a track gets reported.
    smoothing: weight of the previous velocity in the constant-velocity prediction (0: the last step is the
    velocity; 1: the first velocity forever). nms_iou: duplicate suppression before association, per concept: of two
    detections overlapping at box IoU above it, the lower-scoring one is dropped (1: off).
    """

    high_score: float = 0.5
    low_score: float = 0.1
    birth_score: float = 0.6
    match_iou: float = 0.2
    low_match_iou: float = 0.5
    max_missed: int = 30
    min_hits: int = 2
    smoothing: float = 0.6
    nms_iou: float = 0.7

    def __post_init__(self):
        for name in ("high_score", "low_score", "birth_score", "match_iou", "low_match_iou", "smoothing", "nms_iou"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0 or v != v:
                raise ValueError(f"TrackerConfig.{name}={v!r} must be a number in [0, 1]")
        if self.low_score > self.high_score:
            raise ValueError(f"TrackerConfig.low_score={self.low_score} must not exceed high_score={self.high_score}")
        for name, top in (("max_missed", 100_000), ("min_hits", 1_000)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not (0 if name == "max_missed" else 1) <= v <= top:
                raise ValueError(f"TrackerConfig.{name}={v!r} must be an integer from "
                                 f"{0 if name == 'max_missed' else 1} to {top}")


def box_iou_pairs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of xyxy boxes ``a[..., :]`` and ``b[..., :]``, broadcast over the leading axes (a[i] with b[i] for [N, 4]
    each; :func:`box_iou` for every pair)."""
    lt, rb = np.maximum(a[..., :2], b[..., :2]), np.minimum(a[..., 2:], b[..., 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area = lambda x: np.clip(x[..., 2] - x[..., 0], 0, None) * np.clip(x[..., 3] - x[..., 1], 0, None)  # noqa: E731
    union = area(a) + area(b) - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix [len(a), len(b)] of xyxy boxes."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    return box_iou_pairs(a[:, None], b[None, :])


_LSA = []  # scipy's linear_sum_assignment, looked up once (None: not installed)


def _assign(iou: np.ndarray, least: float) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of the pairs maximising total IoU, each with IoU >= ``least``: Hungarian with scipy, else greedy
    by IoU (the same pairs whenever no two candidates compete for one box, as between well-separated objects).
    Only rows and columns with a candidate enter the solver; where every one has exactly one, that is the answer."""
    empty = np.zeros(0, np.int64)
    if iou.size == 0:
        return empty, empty
    cand = iou >= least
    r, c = np.flatnonzero(cand.any(1)), np.flatnonzero(cand.any(0))
    if not len(r):
        return empty, empty
    sub = cand[np.ix_(r, c)]
    if (sub.sum(1) == 1).all() and (sub.sum(0) == 1).all():  # no competition: the candidates are the matches
        i, j = np.nonzero(sub)
        return r[i], c[j]
    score = np.where(sub, iou[np.ix_(r, c)], 0.0)
    if not _LSA:
        try:
            from scipy.optimize import linear_sum_assignment
        except ImportError:
            linear_sum_assignment = None
        _LSA.append(linear_sum_assignment)
    if _LSA[0] is None:
        pairs, used_r, used_c = [], set(), set()
        for flat in np.argsort(-score, axis=None, kind="stable"):
            i, j = divmod(int(flat), score.shape[1])
            if score[i, j] < least:
                break
            if i not in used_r and j not in used_c:
                pairs.append((i, j))
                used_r.add(i)
                used_c.add(j)
        pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
        return r[pairs[:, 0]], c[pairs[:, 1]]
    i, j = _LSA[0](-score)
    keep = sub[i, j]
    return r[i[keep]], c[j[keep]]


def _nms(boxes: np.ndarray, scores: np.ndarray, codes: np.ndarray, iou: float) -> np.ndarray:
    """Indices (ascending) kept by greedy NMS within each concept code at box IoU > ``iou``."""
    order = np.argsort(-scores, kind="stable")
    c, b = codes[order], boxes[order]
    ti, di = np.nonzero(c[:, None] == c[None, :])
    first = ti < di  # same concept, i ranked before j
    ti, di = ti[first], di[first]
    hits = box_iou_pairs(b[ti], b[di]) > iou
    dropped = np.zeros(len(order), bool)
    for i, j in zip(ti[hits].tolist(), di[hits].tolist()):  # few pairs: only actual duplicates, best first
        if not dropped[i]:
            dropped[j] = True
    return np.sort(order[~dropped])


class ByteTracker:
    """ByteTrack per concept (see the module docstring). ``update(instances)`` once per frame, in order."""

    name = "bytetrack"

    def __init__(self, config: TrackerConfig | None = None):
        self.config = config or TrackerConfig()
        self._lock = threading.Lock()  # calls from several threads run one at a time (in the order they get it)
        self.reset()

    def reset(self) -> None:
        """Forget every track (a new video); identities restart at 1."""
        with self._lock:
            self._reset()

    def _reset(self) -> None:
        # the live tracks, one row each: identity, concept code, last box (xyxy), velocity per frame, hits, frames
        # missed since the last hit, confirmed
        self._id = np.zeros(0, np.int64)
        self._code = np.zeros(0, np.int64)
        self._box = np.zeros((0, 4))
        self._vel = np.zeros((0, 4))
        self._hits = np.zeros(0, np.int64)
        self._missed = np.zeros(0, np.int64)
        self._confirmed = np.zeros(0, bool)
        self._codes: dict[str, int] = {}  # phrase -> small int, for the same-concept test
        self._next_id = 1
        self.frames = 0

    def update(self, instances: Instances) -> Instances:
        """This frame's instances -> the tracked ones (confirmed tracks matched in this frame), ``track_ids`` set,
        in the order of ``instances``. Instances must carry every detection down to ``config.low_score``."""
        if not isinstance(instances, Instances):
            raise TypeError(f"ByteTracker.update takes Instances, got {type(instances).__name__}")
        with self._lock:
            return self._update(instances)

    def _update(self, instances: Instances) -> Instances:
        cfg = self.config
        self.frames += 1
        codes = self._codes
        for p in instances.phrases:
            codes.setdefault(p, len(codes))
        det_code = np.fromiter((codes[p] for p in instances.phrases), np.int64, len(instances))
        rows = np.arange(len(instances))  # the detections taken (rows of ``instances``)
        if cfg.nms_iou < 1.0 and len(instances) > 1:
            rows = _nms(instances.boxes.astype(np.float64), instances.scores, det_code, cfg.nms_iou)
        det_code, scores, boxes = det_code[rows], instances.scores[rows], instances.boxes[rows].astype(np.float64)
        predicted = self._box + self._vel * (self._missed + 1)[:, None]
        # One association for every concept at once: IoU only between a track and detections of its own concept
        # (one Hungarian solve per pass instead of one per concept).
        ti, di = np.nonzero(self._code[:, None] == det_code[None, :])
        iou = np.zeros((len(self._id), len(rows)))
        iou[ti, di] = box_iou_pairs(predicted[ti], boxes[di])
        high = np.flatnonzero(scores >= cfg.high_score)
        low = np.flatnonzero((scores >= cfg.low_score) & (scores < cfg.high_score))
        track_of = np.full(len(self._id), -1, np.int64)  # the detection each track takes
        t, d = _assign(iou[:, high], cfg.match_iou)
        track_of[t] = high[d]
        left = np.flatnonzero(track_of < 0)
        t, d = _assign(iou[np.ix_(left, low)], cfg.low_match_iou)
        track_of[left[t]] = low[d]
        hit = track_of >= 0
        # matched tracks: alpha-beta update of the velocity (the first step sets it), then the box
        d = track_of[hit]
        step = (boxes[d] - self._box[hit]) / (self._missed[hit] + 1)[:, None]
        first = (self._hits[hit] == 1)[:, None]
        self._vel[hit] = np.where(first, step, cfg.smoothing * self._vel[hit] + (1.0 - cfg.smoothing) * step)
        self._box[hit] = boxes[d]
        self._hits[hit] += 1
        self._missed[hit] = 0
        self._missed[~hit] += 1
        self._confirmed |= self._hits >= cfg.min_hits
        ids = np.full(len(rows), -1, np.int64)
        shown = hit & self._confirmed
        ids[track_of[shown]] = self._id[shown]
        # a tentative track that missed, or a confirmed one unseen for more than max_missed frames, ends
        alive = hit | (self._confirmed & (self._missed <= cfg.max_missed))
        taken = np.zeros(len(rows), bool)
        taken[track_of[hit]] = True
        born = high[~taken[high] & (scores[high] >= cfg.birth_score)]
        new_ids = np.arange(self._next_id, self._next_id + len(born))
        self._next_id += len(born)
        confirmed = cfg.min_hits <= 1
        if confirmed:
            ids[born] = new_ids
        self._id = np.concatenate([self._id[alive], new_ids])
        self._code = np.concatenate([self._code[alive], det_code[born]])
        self._box = np.concatenate([self._box[alive], boxes[born]])
        self._vel = np.concatenate([self._vel[alive], np.zeros((len(born), 4))])
        self._hits = np.concatenate([self._hits[alive], np.ones(len(born), np.int64)])
        self._missed = np.concatenate([self._missed[alive], np.zeros(len(born), np.int64)])
        self._confirmed = np.concatenate([self._confirmed[alive], np.full(len(born), confirmed)])
        keep = ids >= 0
        out = instances.select(rows[keep])
        out.track_ids = ids[keep]
        return out

    @property
    def live_tracks(self) -> int:
        """Tracks alive now (tentative, or confirmed and seen within ``max_missed`` frames)."""
        return len(self._id)


TRACKERS = {"bytetrack": ByteTracker}
"""Tracker name -> class; every one has ``update(instances) -> Instances`` with ``track_ids``, and ``reset()``."""


def create_tracker(name: str = "bytetrack", **config) -> ByteTracker:
    """A tracker by name (``TRACKERS``) with :class:`TrackerConfig` fields as keywords."""
    if name not in TRACKERS:
        raise ValueError(f"unknown tracker {name!r}; trackers: {', '.join(TRACKERS)}")
    return TRACKERS[name](TrackerConfig(**config))


class TrackCounter:
    """Unique identities per concept over a stream: ``update(tracked)`` per frame, ``counts`` {phrase: n}; an identity
    counts once it was reported in ``min_frames`` frames (a fragment of a broken track, a few frames long, is not
    another object)."""

    def __init__(self, min_frames: int = 5):
        if isinstance(min_frames, bool) or not isinstance(min_frames, int) or min_frames < 1:
            raise ValueError(f"TrackCounter: min_frames={min_frames!r} must be an integer >= 1")
        self.min_frames = min_frames
        self._frames: dict[tuple[str, int], int] = {}
        self._lock = threading.Lock()

    def update(self, tracked: Instances) -> None:
        if tracked.track_ids is None:
            raise ValueError("TrackCounter.update needs tracked Instances (track_ids set by a tracker)")
        with self._lock:
            for key in zip(tracked.phrases, tracked.track_ids.tolist()):
                self._frames[key] = self._frames.get(key, 0) + 1

    @property
    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        with self._lock:
            frames = list(self._frames.items())
        for (phrase, _), n in frames:
            out[phrase] = out.get(phrase, 0) + (n >= self.min_frames)
        return out


class LineCounter:
    """Crossings of the segment ``start`` -> ``end`` (pixels, x y): a track whose box centre moves from one side
    to the other, through the segment, counts once per crossing: "in" from the left of start -> end to its
    right (image coordinates, y down), "out" the other way. ``counts``: {phrase: {"in": n, "out": m}}."""

    def __init__(self, start: tuple[float, float], end: tuple[float, float], name: str = "line"):
        self.start, self.end = np.asarray(start, np.float64), np.asarray(end, np.float64)
        if self.start.shape != (2,) or self.end.shape != (2,) or not np.isfinite([*self.start, *self.end]).all():
            raise ValueError(f"LineCounter {name!r}: start and end must be finite (x, y) points, got {start}, {end}")
        if np.allclose(self.start, self.end):
            raise ValueError(f"LineCounter {name!r}: start and end are the same point {tuple(self.start)}")
        self.name = name
        self._last: dict[int, tuple[np.ndarray, float, int]] = {}  # track id -> last centre off the line, side, frame
        self._frame = 0
        self._lock = threading.Lock()
        self.counts: dict[str, dict[str, int]] = {}

    def _through_segment(self, a: np.ndarray, b: np.ndarray) -> bool:
        """Whether the move a -> b crosses the segment itself, not only its line."""
        d, m = self.end - self.start, b - a
        den = d[0] * m[1] - d[1] * m[0]
        if den == 0:
            return False
        t = ((a[0] - self.start[0]) * m[1] - (a[1] - self.start[1]) * m[0]) / den  # along the segment
        return 0.0 <= t <= 1.0

    def update(self, tracked: Instances) -> None:
        if tracked.track_ids is None:
            raise ValueError("LineCounter.update needs tracked Instances (track_ids set by a tracker)")
        with self._lock:
            self._update(tracked)

    def _update(self, tracked: Instances) -> None:
        centres = (tracked.boxes[:, :2] + tracked.boxes[:, 2:]).astype(np.float64) / 2.0
        d = self.end - self.start
        sides = np.sign(d[0] * (centres[:, 1] - self.start[1]) - d[1] * (centres[:, 0] - self.start[0])).tolist()
        self._frame += 1
        last = self._last
        for i, (tid, side) in enumerate(zip(tracked.track_ids.tolist(), sides)):
            if side == 0:  # on the line: the crossing completes when it leaves on one side
                continue
            before = last.get(tid)
            last[tid] = (centres[i], side, self._frame)
            if before is not None and before[1] != side and self._through_segment(before[0], centres[i]):
                entry = self.counts.setdefault(tracked.phrases[i], {"in": 0, "out": 0})
                entry["in" if side > 0 else "out"] += 1
        if self._frame % 256 == 0:  # flat memory on endless streams: forget tracks unseen for 1000 frames
            self._last = {k: v for k, v in self._last.items() if self._frame - v[2] < 1000}
