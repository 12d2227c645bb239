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

A frame reports the confirmed tracks matched in it. Concepts are tracked apart, except phrases declared
``exclusive`` (states of one kind of object, e.g. ripe / unripe / bruised apple): those share identities, and an
apple the detector calls "ripe" in one frame and "bruised" in the next stays one object, counted under the phrase
it scored highest over its frames.

Unseen tracks (occluded, missed) move with the camera: when most tracks seen in a frame share one velocity (a
robot driving along a row, a pan, a conveyor), that is the scene's motion and an unseen track follows it at its
last size, so it is found again after a long occlusion; otherwise each moves by its own velocity.

Counting: :class:`TrackCounter` (unique identities per concept over the stream), :class:`LineCounter`
(crossings of a line segment, in and out per concept: a track's box centre changing sides across the segment) and
:class:`ZoneCounter` (a polygon: objects inside now, entries, exits and distinct objects seen inside, per concept).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from sam3edge.runtime.instances import Instances

__all__ = ["TRACKERS", "ByteTracker", "LineCounter", "TrackCounter", "TrackerConfig", "ZoneCounter", "create_tracker"]


@dataclass(frozen=True)
class TrackerConfig:
    """ByteTrack's knobs (defaults: the paper's, for detectors whose scores are calibrated probabilities, except
    ``max_missed``: 60 frames, since unseen tracks follow the camera).

    high_score: detections at or above it are matched first and may start tracks. low_score: the floor of the
    second association (below it a detection is ignored). birth_score: the score a detection needs to start a
    track. match_iou / low_match_iou: least box IoU of a match in the first / second association. max_missed:
    frames a confirmed track survives unseen. min_hits: consecutive matched frames before a track gets reported.
    smoothing: weight of the previous velocity in the constant-velocity prediction (0: the last step is the
    velocity; 1: the first velocity forever). nms_iou: duplicate suppression before association, per concept: of two
    detections overlapping at box IoU above it, the lower-scoring one is dropped (1: off). camera_motion: move
    unseen tracks by the motion most tracks share (a moving camera; see ``ByteTracker``) rather than each by its
    own velocity; motion_tracks: how many tracks must move for that estimate. buffer / max_buffer: an unseen track
    and a detection are compared with both boxes widened by ``buffer`` x frames unseen of their size on each side,
    at most ``max_buffer`` (buffered IoU: a track unseen for long, or an apple coming out from behind a leaf in part,
    still matches where it is expected). exclusive: groups of phrases that are
    states of one kind of object ("ripe apple", "unripe apple", "bruised apple"): within a group, identities are
    shared (an apple the detector calls ripe in one frame and bruised in the next keeps one track), duplicates across
    the group's phrases are suppressed, and :class:`TrackCounter` counts each identity once, under the phrase
    with the highest summed score over its frames.
    """

    high_score: float = 0.5
    low_score: float = 0.1
    birth_score: float = 0.6
    match_iou: float = 0.2
    low_match_iou: float = 0.5
    max_missed: int = 60
    min_hits: int = 2
    smoothing: float = 0.6
    nms_iou: float = 0.7
    camera_motion: bool = True
    motion_tracks: int = 3
    buffer: float = 0.05
    max_buffer: float = 0.5
    exclusive: tuple[tuple[str, ...], ...] = ()

    def __post_init__(self):
        groups = self.exclusive
        if isinstance(groups, str) or not isinstance(groups, (tuple, list)):
            raise ValueError(f"TrackerConfig.exclusive={groups!r} must be a list of phrase groups, e.g. "
                             "[('ripe apple', 'unripe apple')]")
        seen: set[str] = set()
        for g in groups:
            if isinstance(g, str) or not isinstance(g, (tuple, list)) or len(g) < 2 or not all(
                    isinstance(p, str) and p.strip() for p in g) or len(set(g)) != len(g):
                raise ValueError(f"TrackerConfig.exclusive: group {g!r} must hold two or more different non-empty "
                                 "phrases")
            if seen & set(g):
                raise ValueError(f"TrackerConfig.exclusive: {sorted(seen & set(g))} in more than one group")
            seen |= set(g)
        object.__setattr__(self, "exclusive", tuple(tuple(g) for g in groups))
        for name in ("high_score", "low_score", "birth_score", "match_iou", "low_match_iou", "smoothing", "nms_iou",
                     "buffer", "max_buffer"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0 or v != v:
                raise ValueError(f"TrackerConfig.{name}={v!r} must be a number in [0, 1]")
        if self.low_score > self.high_score:
            raise ValueError(f"TrackerConfig.low_score={self.low_score} must not exceed high_score={self.high_score}")
        if not isinstance(self.camera_motion, bool):
            raise ValueError(f"TrackerConfig.camera_motion={self.camera_motion!r} must be True or False")
        for name, top in (("max_missed", 100_000), ("min_hits", 1_000), ("motion_tracks", 1_000)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not (0 if name == "max_missed" else 1) <= v <= top:
                raise ValueError(f"TrackerConfig.{name}={v!r} must be an integer from "
                                 f"{0 if name == 'max_missed' else 1} to {top}")


def box_iou_pairs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of xyxy boxes ``a[..., :]`` and ``b[..., :]``, broadcast over the leading axes (a[i] with b[i] for [N, 4]
    each; :func:`box_iou` for every pair). A box with x1 < x0 or y1 < y0 has no area."""
    w = np.maximum(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0.0)
    h = np.maximum(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0.0)
    inter = w * h
    area_a = np.maximum(a[..., 2] - a[..., 0], 0.0) * np.maximum(a[..., 3] - a[..., 1], 0.0)
    area_b = np.maximum(b[..., 2] - b[..., 0], 0.0) * np.maximum(b[..., 3] - b[..., 1], 0.0)
    return inter / np.maximum(area_a + area_b - inter, 1e-12)  # no union -> no intersection -> 0


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix [len(a), len(b)] of xyxy boxes."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    return box_iou_pairs(a[:, None], b[None, :])


_LSA = []  # scipy's linear_sum_assignment, looked up once (None: not installed)


def _solver():
    """scipy's linear_sum_assignment, looked up once (None: scipy is not installed)."""
    if not _LSA:
        try:
            from scipy.optimize import linear_sum_assignment
        except ImportError:
            linear_sum_assignment = None
        _LSA.append(linear_sum_assignment)
    return _LSA[0]


def _match(rows: np.ndarray, cols: np.ndarray, weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one matches among candidate pairs (``rows[k]``, ``cols[k]``) of IoU ``weight[k]``, maximising the
    total IoU: Hungarian with scipy, else greedy by IoU (the same pairs whenever no two candidates compete for one
    box, as between well-separated objects). Where no row or column has two candidates, the candidates are the
    answer."""
    if not len(rows):
        return rows, cols
    free = (np.bincount(rows)[rows] == 1) & (np.bincount(cols)[cols] == 1)  # a pair that competes with none
    if free.all():
        return rows, cols
    r, c = _compete(rows[~free], cols[~free], weight[~free])
    return np.concatenate([rows[free], r]), np.concatenate([cols[free], c])


def _compete(rows: np.ndarray, cols: np.ndarray, weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    solve = _solver()
    if solve is None:
        used_r, used_c, keep = set(), set(), []
        for k in np.argsort(-weight, kind="stable").tolist():
            i, j = int(rows[k]), int(cols[k])
            if i not in used_r and j not in used_c:
                keep.append(k)
                used_r.add(i)
                used_c.add(j)
        keep = np.sort(np.asarray(keep, np.int64))
        return rows[keep], cols[keep]
    r, ri = np.unique(rows, return_inverse=True)
    c, ci = np.unique(cols, return_inverse=True)
    score = np.zeros((len(r), len(c)))
    cand = np.zeros((len(r), len(c)), bool)
    score[ri, ci], cand[ri, ci] = weight, True
    i, j = solve(-score)
    keep = cand[i, j]
    return r[i[keep]], c[j[keep]]


def _same_code_pairs(a: np.ndarray, b: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i, j) with ``a[i] == b[j]``, grouped by code; with ``b`` None, the pairs i < j of ``a`` itself.
    Sorting by code and expanding each group's block costs O(pairs), not O(len(a) * len(b))."""
    same = b is None
    b = a if same else b
    oa, ob = np.argsort(a, kind="stable"), np.argsort(b, kind="stable")
    sa, sb = a[oa], b[ob]
    start = np.searchsorted(sb, sa, "left")  # each a's block of equal codes in sorted b
    stop = np.searchsorted(sb, sa, "right")
    if same:
        start = np.arange(len(a)) + 1  # only the later members of its own block
    n = np.maximum(stop - start, 0)
    total = int(n.sum())
    ia = np.repeat(np.arange(len(a)), n)
    ib = np.arange(total) - np.repeat(np.cumsum(n) - n, n) + np.repeat(start, n)
    return oa[ia], ob[ib]


def _nms(boxes: np.ndarray, scores: np.ndarray, codes: np.ndarray, iou: float) -> np.ndarray:
    """Indices (ascending) kept by greedy NMS within each concept code at box IoU > ``iou``."""
    order = np.argsort(-scores, kind="stable")  # by score: within a code, pairs (i, j) with i ranked first
    ti, di = _same_code_pairs(codes[order])
    hits = box_iou_pairs(boxes[order[ti]], boxes[order[di]]) > iou
    dropped = np.zeros(len(order), bool)
    for i, j in sorted(zip(ti[hits].tolist(), di[hits].tolist())):  # few pairs: actual duplicates, best first
        if not dropped[i]:
            dropped[j] = True
    return np.sort(order[~dropped])


def _edge_steps(new: np.ndarray, old: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """``new - old`` per box edge, except that an edge on the image border (in either box) is not seen: it takes the
    step of the opposite edge (an apple entering the frame grows from the border while it moves at the camera's
    speed; its border edge would say it stands still)."""
    step = new - old
    h, w = image_size
    for lo, hi, size in ((0, 2, w), (1, 3, h)):
        at_lo = (np.minimum(new[:, lo], old[:, lo]) <= 1.0) & (np.maximum(new[:, hi], old[:, hi]) < size - 1.0)
        at_hi = (np.maximum(new[:, hi], old[:, hi]) >= size - 1.0) & (np.minimum(new[:, lo], old[:, lo]) > 1.0)
        step[at_lo, lo] = step[at_lo, hi]
        step[at_hi, hi] = step[at_hi, lo]
    return step


class ByteTracker:
    """ByteTrack per concept (see the module docstring). ``update(instances)`` once per frame, in order."""

    name = "bytetrack"

    def __init__(self, config: TrackerConfig | None = None):
        self.config = config or TrackerConfig()
        self._group_of = {p: g for g in self.config.exclusive for p in g}
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
        self._ghost = np.zeros((0, 4))  # where an unseen track is believed to be now (moved on every frame)
        self._camera: np.ndarray | None = None  # the camera's shift per frame (dx, dy), when the tracks agree on one
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
        det_code = self._concept_codes(instances.phrases)
        keep_score = instances.scores >= cfg.low_score  # below the second association's floor: never used
        rows = np.flatnonzero(keep_score) if not keep_score.all() else np.arange(len(instances))
        if cfg.nms_iou < 1.0 and len(rows) > 1:
            rows = rows[_nms(instances.boxes[rows].astype(np.float64), instances.scores[rows], det_code[rows],
                             cfg.nms_iou)]
        det_code, scores, boxes = det_code[rows], instances.scores[rows], instances.boxes[rows].astype(np.float64)
        predicted = self._predict()
        # One association for every concept at once, over the (track, detection) pairs of one concept only (one
        # Hungarian solve per pass instead of one per concept).
        pt, pd = _same_code_pairs(self._code, det_code)
        iou = box_iou_pairs(*self._buffered(predicted[pt], boxes[pd], self._missed[pt]))
        high = scores >= cfg.high_score
        track_of = np.full(len(self._id), -1, np.int64)  # the detection each track takes
        first = high[pd] & (iou >= cfg.match_iou)
        t, d = _match(pt[first], pd[first], iou[first])
        track_of[t] = d
        second = ~high[pd] & (track_of[pt] < 0) & (iou >= cfg.low_match_iou)
        t, d = _match(pt[second], pd[second], iou[second])
        track_of[t] = d
        hit = track_of >= 0
        # matched tracks: alpha-beta update of the velocity (the first step sets it), then the box
        d = track_of[hit]
        step = _edge_steps(boxes[d], self._box[hit], instances.image_size) / (self._missed[hit] + 1)[:, None]
        first = (self._hits[hit] == 1)[:, None]
        self._vel[hit] = np.where(first, step, cfg.smoothing * self._vel[hit] + (1.0 - cfg.smoothing) * step)
        self._box[hit] = boxes[d]
        self._hits[hit] += 1
        self._missed[hit] = 0
        self._missed[~hit] += 1
        self._ghost[~hit] = predicted[~hit]
        self._estimate_camera(hit)
        self._confirmed |= self._hits >= cfg.min_hits
        ids = np.full(len(rows), -1, np.int64)
        shown = hit & self._confirmed
        ids[track_of[shown]] = self._id[shown]
        # a tentative track that missed, or a confirmed one unseen for more than max_missed frames, ends
        alive = hit | (self._confirmed & (self._missed <= cfg.max_missed))
        taken = np.zeros(len(rows), bool)
        taken[track_of[hit]] = True
        born = np.flatnonzero(high & ~taken & (scores >= cfg.birth_score))
        new_ids = np.arange(self._next_id, self._next_id + len(born))
        self._next_id += len(born)
        confirmed = cfg.min_hits <= 1
        if confirmed:
            ids[born] = new_ids
        self._id = np.concatenate([self._id[alive], new_ids])
        self._code = np.concatenate([self._code[alive], det_code[born]])
        self._box = np.concatenate([self._box[alive], boxes[born]])
        self._vel = np.concatenate([self._vel[alive], np.zeros((len(born), 4))])
        self._ghost = np.concatenate([self._ghost[alive], boxes[born]])
        self._hits = np.concatenate([self._hits[alive], np.ones(len(born), np.int64)])
        self._missed = np.concatenate([self._missed[alive], np.zeros(len(born), np.int64)])
        self._confirmed = np.concatenate([self._confirmed[alive], np.full(len(born), confirmed)])
        keep = ids >= 0
        out = instances.select(rows[keep])
        out.track_ids = ids[keep]
        return out

    def _concept_codes(self, phrases: list[str]) -> np.ndarray:
        """int64 code per phrase: one per concept, shared by the phrases of an exclusive group."""
        codes = self._codes
        try:
            return np.fromiter(map(codes.__getitem__, phrases), np.int64, len(phrases))
        except KeyError:
            for p in phrases:
                if p not in codes:
                    group = self._group_of.get(p)
                    codes[p] = next((codes[q] for q in (group or ()) if q in codes), len(set(codes.values())))
            return np.fromiter(map(codes.__getitem__, phrases), np.int64, len(phrases))

    def _buffered(self, a: np.ndarray, b: np.ndarray, missed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Boxes of (track, detection) pairs, both widened by ``buffer`` x missed frames of their size on each side
        (at most ``max_buffer``) where the track went unseen: the longer unseen, the less sure its position and the
        more a box seen again only in part (coming out from behind a leaf) may differ (buffered IoU, C-BIoU)."""
        cfg = self.config
        if not cfg.buffer or not missed.any():
            return a, b
        grow = np.minimum(cfg.buffer * missed, cfg.max_buffer)[:, None]
        widen = lambda x: x + grow * np.concatenate([x[:, :2] - x[:, 2:], x[:, 2:] - x[:, :2]], 1)  # noqa: E731
        return widen(a), widen(b)

    def _predict(self) -> np.ndarray:
        """Each live track's box in this frame: seen in the last frame, its box moved by its velocity; unseen, where
        it was believed to be in the last frame, shifted by the camera's motion (or its own centre velocity while the
        tracks agree on none), at its last size: a box's size is not extrapolated through an occlusion."""
        predicted = self._box + self._vel
        unseen = self._missed > 0
        if unseen.any():
            if self._camera is not None:
                shift = np.broadcast_to(self._camera, (int(unseen.sum()), 2))
            else:
                v = self._vel[unseen]
                shift = (v[:, :2] + v[:, 2:]) / 2.0
            predicted[unseen] = self._ghost[unseen] + np.tile(shift, 2)
        return predicted

    def _estimate_camera(self, hit: np.ndarray) -> None:
        """The shift per frame that most confirmed tracks seen in this frame share (their smoothed centre
        velocities): the camera's motion over a static scene, a conveyor's, a pan's. It is taken when at least
        ``motion_tracks`` tracks move and two thirds of them agree within 1 px + 25 % of the median; otherwise
        the last estimate is dropped (objects moving on their own: each unseen track keeps its own velocity)."""
        cfg = self.config
        if not cfg.camera_motion:
            return
        moving = hit & self._confirmed & (self._hits >= 3)
        if int(moving.sum()) < cfg.motion_tracks:
            return  # too few to tell: keep the last estimate
        v = self._vel[moving]
        centre = (v[:, :2] + v[:, 2:]) / 2.0
        ordered = np.sort(centre, axis=0)
        n = len(ordered)
        median = (ordered[(n - 1) // 2] + ordered[n // 2]) / 2.0
        off = centre - median
        agree = np.sqrt((off * off).sum(1)) <= 1.0 + 0.25 * float(np.sqrt(median @ median))
        self._camera = median if 3 * int(agree.sum()) >= 2 * n else None

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
    another object), under the phrase with the highest summed score over its frames (one phrase per identity unless
    the tracker shares identities across an ``exclusive`` group)."""

    def __init__(self, min_frames: int = 5):
        if isinstance(min_frames, bool) or not isinstance(min_frames, int) or min_frames < 1:
            raise ValueError(f"TrackCounter: min_frames={min_frames!r} must be an integer >= 1")
        self.min_frames = min_frames
        self._rows = _Rows()  # identity -> row
        self._phrases: dict[str, int] = {}  # phrase -> column
        self._frames = np.zeros(0, np.int64)  # frames each identity was reported in
        self._votes = np.zeros((0, 0))  # summed score per identity and phrase
        self._lock = threading.Lock()

    def update(self, tracked: Instances) -> None:
        if tracked.track_ids is None:
            raise ValueError("TrackCounter.update needs tracked Instances (track_ids set by a tracker)")
        with self._lock:
            rows = self._rows(tracked.track_ids)
            cols = _Rows.lookup(self._phrases, tracked.phrases)
            n, m = max(len(self._rows), len(self._frames)), max(len(self._phrases), self._votes.shape[1])
            if n > len(self._frames) or m > self._votes.shape[1]:  # room for new identities and phrases, doubling
                grown = np.zeros((max(n, 2 * len(self._frames)), m))
                grown[:len(self._frames), :self._votes.shape[1]] = self._votes
                self._votes = grown
                self._frames = np.concatenate([self._frames, np.zeros(len(grown) - len(self._frames), np.int64)])
            np.add.at(self._frames, rows, 1)
            # a frame's vote is its score, plus a sliver so that scores of 0 still count frames (never a tie to
            # whichever phrase came first)
            np.add.at(self._votes, (rows, cols), tracked.scores.astype(np.float64) + 1e-6)

    def _label_columns(self) -> np.ndarray:
        return self._votes[:len(self._rows)].argmax(1) if self._votes.size else np.zeros(0, np.int64)

    def label(self, track_id: int) -> str | None:
        """The phrase identity ``track_id`` is counted under (None: never reported)."""
        with self._lock:
            row = self._rows.get(int(track_id))
            if row is None:
                return None
            col = int(self._votes[row].argmax())
        return next(p for p, c in self._phrases.items() if c == col)

    @property
    def counts(self) -> dict[str, int]:
        """{phrase: identities counted under it}, every phrase reported so far (0 included)."""
        with self._lock:
            counted = self._frames[:len(self._rows)] >= self.min_frames
            per_col = np.bincount(self._label_columns()[counted], minlength=len(self._phrases))
            return {p: int(per_col[c]) for p, c in self._phrases.items()}


class _Rows:
    """Track identity -> dense row (0, 1, 2, ... in order of first sight), for per-identity arrays."""

    def __init__(self):
        self._row: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self._row)

    def get(self, track_id: int) -> int | None:
        return self._row.get(track_id)

    @staticmethod
    def lookup(index: dict, keys: list) -> np.ndarray:
        """int64 ``index[k]`` per key, new keys numbered on from ``len(index)``."""
        try:
            return np.fromiter(map(index.__getitem__, keys), np.int64, len(keys))
        except KeyError:
            return np.fromiter((index.setdefault(k, len(index)) for k in keys), np.int64, len(keys))

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(identities, their rows), int64 each."""
        n = len(self._row)
        return np.fromiter(self._row.keys(), np.int64, n), np.fromiter(self._row.values(), np.int64, n)

    def __call__(self, track_ids: np.ndarray) -> np.ndarray:
        """The rows of ``track_ids``, new identities appended."""
        return self.lookup(self._row, track_ids.tolist())


class _TrackTable:
    """Per-identity arrays of a counter (``columns``: name -> (dtype, shape of one row)), one row per identity,
    zeroed for a new one; ``seen`` holds the frame each row was last updated. ``forget_before(frame)`` drops the
    identities not seen since (flat memory on endless streams)."""

    def __init__(self, **columns: tuple):
        self._columns = {"seen": (np.int64, ()), **columns}
        self._rows = _Rows()
        self.arrays = {k: np.zeros((0, *shape), dtype) for k, (dtype, shape) in self._columns.items()}

    def __len__(self) -> int:
        return len(self._rows)

    def rows(self, track_ids: np.ndarray) -> np.ndarray:
        """The rows of ``track_ids``, new identities added (the arrays grow by doubling)."""
        rows = self._rows(track_ids)
        have = len(self.arrays["seen"])
        if len(self._rows) > have:
            extra = max(len(self._rows), 2 * have) - have
            self.arrays = {k: np.concatenate([a, np.zeros((extra, *a.shape[1:]), a.dtype)])
                           for k, a in self.arrays.items()}
        return rows

    def forget_before(self, frame: int) -> None:
        ids, rows = self._rows.arrays()
        kept = self.arrays["seen"][rows] >= frame
        self._rows = _Rows()
        self._rows(ids[kept])  # rows 0, 1, ... in the order kept
        self.arrays = {k: a[rows[kept]] for k, a in self.arrays.items()}


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
        # per track: last box centre off the line, its side (+1 / -1; 0: not seen off the line yet), frame seen there
        self._tracks = _TrackTable(centre=(np.float64, (2,)), side=(np.float64, ()))
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
        sides = np.sign(d[0] * (centres[:, 1] - self.start[1]) - d[1] * (centres[:, 0] - self.start[0]))
        self._frame += 1
        rows = self._tracks.rows(tracked.track_ids)
        t = self._tracks.arrays
        off = np.flatnonzero(sides != 0)  # on the line: the crossing completes when it leaves on one side
        r, side = rows[off], sides[off]
        before = t["side"][r]
        for k in np.flatnonzero((before != 0) & (before != side)).tolist():
            if self._through_segment(t["centre"][r[k]], centres[off[k]]):
                entry = self.counts.setdefault(tracked.phrases[off[k]], {"in": 0, "out": 0})
                entry["in" if side[k] > 0 else "out"] += 1
        t["centre"][r], t["side"][r], t["seen"][r] = centres[off], side, self._frame
        if self._frame % 256 == 0:  # flat memory on endless streams: forget tracks unseen for 1000 frames
            self._tracks.forget_before(self._frame - 1000)


class ZoneCounter:
    """Objects in the polygon ``points`` ((x, y) pixels, 3 or more, any shape; a track is inside when its box centre
    is, by the even-odd rule). ``counts``: {phrase: {"inside": tracks inside in the last frame, "entered": moves from
    outside to inside, "exited": the other way, "unique": identities seen inside at least once}}. A track first seen
    inside is inside and unique, not an entry (it may have been born there)."""

    def __init__(self, points, name: str = "zone"):
        pts = np.asarray(points, np.float64)
        if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) < 3 or not np.isfinite(pts).all():
            raise ValueError(f"ZoneCounter {name!r}: a zone needs 3 or more finite (x, y) points, got {points!r}")
        x, y = pts[:, 0], pts[:, 1]
        if abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))) < 1e-9:
            raise ValueError(f"ZoneCounter {name!r}: the points {pts.tolist()} enclose no area")
        self.points, self.name = pts, name
        # per track: 0 never seen, 1 outside, 2 inside; seen inside at least once; the frame it was last seen
        self._tracks = _TrackTable(state=(np.int8, ()), ever=(bool, ()))
        self._frame = 0
        self._lock = threading.Lock()
        self.counts: dict[str, dict[str, int]] = {}

    def contains(self, xy: np.ndarray) -> np.ndarray:
        """bool [N]: which points [N, 2] lie inside (even-odd rule; points on an edge may fall either way)."""
        px, py = xy[:, 0:1], xy[:, 1:2]
        x1, y1 = self.points[:, 0], self.points[:, 1]
        x2, y2 = np.roll(x1, -1), np.roll(y1, -1)
        spans = (y1 > py) != (y2 > py)  # [N, edges]: the edge spans the point's row
        with np.errstate(divide="ignore", invalid="ignore"):
            at = x1 + (py - y1) * (x2 - x1) / (y2 - y1)
        return (spans & (px < at)).sum(1) % 2 == 1

    def update(self, tracked: Instances) -> None:
        if tracked.track_ids is None:
            raise ValueError("ZoneCounter.update needs tracked Instances (track_ids set by a tracker)")
        with self._lock:
            self._update(tracked)

    def _update(self, tracked: Instances) -> None:
        self._frame += 1
        inside = self.contains((tracked.boxes[:, :2] + tracked.boxes[:, 2:]).astype(np.float64) / 2.0)
        rows = self._tracks.rows(tracked.track_ids)
        t = self._tracks.arrays
        before = t["state"][rows]
        first_inside = inside & ~t["ever"][rows]
        for c in self.counts.values():
            c["inside"] = 0
        for key, hits in (("entered", inside & (before == 1)), ("exited", ~inside & (before == 2)),
                          ("unique", first_inside), ("inside", inside)):
            for i in np.flatnonzero(hits).tolist():
                entry = self.counts.setdefault(tracked.phrases[i], {"inside": 0, "entered": 0, "exited": 0,
                                                                    "unique": 0})
                entry[key] += 1
        t["state"][rows] = np.where(inside, 2, 1)
        t["ever"][rows] |= inside
        t["seen"][rows] = self._frame
        if self._frame % 256 == 0:  # flat memory on endless streams: forget tracks unseen for 1000 frames
            self._tracks.forget_before(self._frame - 1000)
