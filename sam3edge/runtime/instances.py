"""What a segmenter found in one image: ``Instances``, and COCO RLE masks without pycocotools.

``Instances`` holds the detections of one image in original pixels (boxes xyxy, masks at H x W),
whatever backend produced them. ``to_coco`` writes COCO results (the format SAM3's evaluator
reads), with masks as compressed RLE strings made by ``encode_rle``: a numpy port of
pycocotools' ``rleEncode`` + ``rleToString`` that gives byte-identical strings, so the runtime
needs no pycocotools (nor its C build) on a device.

Compressed RLE format (pycocotools ``maskApi.c``): the mask is read in column-major order as
alternating runs of 0s and 1s, starting with 0s (a mask whose first pixel is set starts with a
run of length 0). Each run is written as a signed integer, run ``i >= 3`` as the difference to
run ``i - 2``, in groups of 5 bits, least significant first, each as the character ``48 + bits``
with 0x20 set on every group but the last; 0x10 in the last group is the sign.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass

import numpy as np

__all__ = ["Instances", "decode_rle", "encode_rle", "rle_area"]

# 7 groups of 5 bits hold any 32-bit run (pycocotools stores runs as C uint) plus the sign.
_MAX_GROUPS = 7


def encode_rle(mask) -> dict:
    """COCO compressed RLE ``{"size": [H, W], "counts": str}`` of a bool [H, W] mask (as pycocotools' encode)."""
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"encode_rle: expected one mask [H, W], got shape {m.shape}")
    height, width = m.shape
    flat = m.astype(bool, copy=False).ravel(order="F")
    if flat.size == 0:
        runs = np.zeros(1, dtype=np.int64)  # pycocotools writes "0" for a mask without pixels
    else:
        changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
        bounds = np.concatenate(([0], changes, [flat.size]))
        runs = np.diff(bounds)
        if flat[0]:
            runs = np.concatenate(([0], runs))
    return {"size": [int(height), int(width)], "counts": _runs_to_string(runs)}


def _runs_to_string(runs: np.ndarray) -> str:
    x = runs.astype(np.int64)
    if x.size > 3:
        x[3:] -= runs[1:-2]
    groups = []
    more = np.ones(x.size, dtype=bool)
    # One pass per 5-bit group over all runs at once (rarely more than 2-3 passes), not a loop over runs.
    while more.any():
        c = x & 0x1F
        x = x >> 5  # arithmetic shift: a negative delta ends at -1
        cont = np.where((c & 0x10) != 0, x != -1, x != 0)
        groups.append(np.where(more, (c | np.where(cont, 0x20, 0)) + 48, 0).astype(np.uint8))
        more &= cont
    if not groups:
        return ""
    chars = np.stack(groups, axis=1).ravel()
    return chars[chars != 0].tobytes().decode("ascii")


def rle_counts_to_runs(counts: str | bytes, where: str) -> np.ndarray:
    """int64 run lengths from a compressed COCO counts string (``rleFrString``), or a ValueError naming ``where``.

    The one decoder of COCO's counts strings: the training / evaluation side (``sam3edge.data.rle``) validates
    files with it too (pycocotools does not check counts and writes past its buffer on a corrupted one)."""
    try:
        raw = counts.encode("ascii") if isinstance(counts, str) else bytes(counts)
    except UnicodeEncodeError as e:
        raise ValueError(f"{where}: RLE 'counts' has non-ASCII characters; it is not a COCO RLE string") from e
    if not raw:
        return np.zeros(0, dtype=np.int64)
    c = np.frombuffer(raw, dtype=np.uint8).astype(np.int64) - 48
    if c.min() < 0 or c.max() > 63:
        raise ValueError(f"{where}: RLE 'counts' has characters outside the COCO alphabet ('0'..'o'); it is corrupted")
    more = (c & 0x20) != 0
    if more[-1]:
        raise ValueError(f"{where}: RLE 'counts' is truncated (its last character has the continuation bit)")
    ends = np.flatnonzero(~more)
    starts = np.concatenate(([0], ends[:-1] + 1))
    groups = ends - starts + 1
    if groups.max() > _MAX_GROUPS:
        raise ValueError(f"{where}: RLE 'counts' holds a run of more than 32 bits; it is corrupted")
    shift = 5 * (np.arange(c.size) - np.repeat(starts, groups))
    values = np.add.reduceat((c & 0x1F) << shift, starts)
    values -= ((c[ends] & 0x10) != 0).astype(np.int64) << (5 * groups)  # sign extension
    runs = values.copy()
    runs[1::2] = np.cumsum(values[1::2])  # undo the delta to run i - 2 (for i >= 3)
    runs[2::2] = np.cumsum(values[2::2])
    if (runs < 0).any():
        raise ValueError(f"{where}: RLE 'counts' decodes to negative run lengths; it is corrupted")
    return runs


def _rle_runs(rle, where: str) -> tuple[int, int, np.ndarray]:
    """(H, W, runs) of a compressed (or uncompressed, counts as a list) RLE, checked to cover H * W pixels."""
    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        raise ValueError(f"{where}: expected a COCO RLE {{'size': [H, W], 'counts': str}}, got {rle!r:.80}")
    size = rle["size"]
    try:
        height, width = (int(s) for s in size)
    except (TypeError, ValueError):
        height = width = -1
    if height < 0 or width < 0 or [height, width] != list(size):
        raise ValueError(f"{where}: RLE 'size' must be [height, width] of non-negative ints, got {size!r}")
    counts = rle["counts"]
    if isinstance(counts, (str, bytes)):
        runs = rle_counts_to_runs(counts, where)
    else:
        runs = np.asarray(counts)
        if runs.ndim != 1 or (runs.size and (runs.dtype.kind not in "iu" or (runs < 0).any())):
            raise ValueError(f"{where}: uncompressed RLE 'counts' must be a list of ints >= 0, got {counts!r:.80}")
        runs = runs.astype(np.int64)
    if int(runs.sum()) != height * width:
        raise ValueError(
            f"{where}: RLE 'counts' covers {int(runs.sum())} pixels but 'size' {height} x {width} has "
            f"{height * width}; the counts do not belong to a mask of this size"
        )
    return height, width, runs


def decode_rle(rle: dict) -> np.ndarray:
    """bool [H, W] mask of a COCO RLE (compressed string or bytes counts, or uncompressed list counts)."""
    height, width, runs = _rle_runs(rle, "decode_rle")
    values = (np.arange(runs.size) % 2).astype(bool)
    flat = np.repeat(values, runs)
    return flat.reshape(width, height).T


def rle_area(rle: dict) -> int:
    """Number of set pixels of a COCO RLE, without decoding it."""
    return int(_rle_runs(rle, "rle_area")[2][1::2].sum())


@dataclass
class Instances:
    """Instances found in one image, in its original pixels (N instances, image H x W).

    Attributes:
        phrases: the concept phrase of each instance, N strings.
        concept_ids: int64 [N], index of each instance's concept in the prompts it was asked for.
        scores: float32 [N], detection confidence in [0, 1].
        boxes: float32 [N, 4], xyxy pixel-edge coordinates of the original image (x in [0, W]).
        masks: bool [N, H, W] at the original resolution, or None when masks were not requested.
        presence: phrase -> probability that the concept is in the image at all (every prompt,
            also those with no instance).
        image_size: (H, W) of the original image.
        track_ids: int64 [N], each instance's identity across frames (set by a tracker,
            :mod:`sam3edge.runtime.tracking`), or None for a single image.
    """

    phrases: list[str]
    concept_ids: np.ndarray
    scores: np.ndarray
    boxes: np.ndarray
    masks: np.ndarray | None
    presence: dict[str, float]
    image_size: tuple[int, int]
    track_ids: np.ndarray | None = None

    def __post_init__(self):
        self.phrases = [str(p) for p in self.phrases]
        n = len(self.phrases)
        self.concept_ids = np.asarray(self.concept_ids, dtype=np.int64).reshape(-1)
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        self.boxes = np.asarray(self.boxes, dtype=np.float32)
        if self.boxes.size == 0:
            self.boxes = self.boxes.reshape(0, 4)
        if self.boxes.ndim != 2 or self.boxes.shape[1] != 4:
            raise ValueError(f"Instances: boxes must be [N, 4] xyxy, got shape {self.boxes.shape}")
        self.image_size = (int(self.image_size[0]), int(self.image_size[1]))
        self.presence = {str(k): float(v) for k, v in self.presence.items()}
        lengths = {"concept_ids": len(self.concept_ids), "scores": len(self.scores), "boxes": len(self.boxes)}
        if self.track_ids is not None:
            self.track_ids = np.asarray(self.track_ids, dtype=np.int64).reshape(-1)
            lengths["track_ids"] = len(self.track_ids)
        if self.masks is not None:
            self.masks = np.asarray(self.masks, dtype=bool)
            lengths["masks"] = len(self.masks)
            if self.masks.ndim != 3 or self.masks.shape[1:] != self.image_size:
                raise ValueError(
                    f"Instances: masks must be [N, H, W] = [{n}, {self.image_size[0]}, {self.image_size[1]}], "
                    f"got {self.masks.shape}"
                )
        wrong = {k: v for k, v in lengths.items() if v != n}
        if wrong:
            raise ValueError(f"Instances: {n} phrases but {wrong}; every field needs one entry per instance")

    @classmethod
    def empty(cls, image_size: tuple[int, int], presence: dict[str, float] | None = None,
              with_masks: bool = True) -> Instances:
        """No instances in an image of ``image_size`` (H, W)."""
        h, w = int(image_size[0]), int(image_size[1])
        return cls([], np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros((0, 4), np.float32),
                   np.zeros((0, h, w), bool) if with_masks else None, dict(presence or {}), (h, w))

    def __len__(self) -> int:
        return len(self.phrases)

    def select(self, indices) -> Instances:
        """The instances at ``indices`` (ints, in that order, or a bool [N] keep-mask); presence is kept whole."""
        idx = np.asarray(indices)
        if idx.dtype == bool:
            if idx.shape != (len(self),):
                raise ValueError(f"Instances.select: a bool mask needs shape ({len(self)},), got {idx.shape}")
            idx = np.flatnonzero(idx)
        idx = idx.astype(np.int64).reshape(-1)
        if idx.size and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise IndexError(f"Instances.select: index out of range for {len(self)} instances: {idx.tolist()}")
        out = copy.copy(self)  # rows of valid fields are valid: no second validation (a tracker selects every frame)
        phrases = self.phrases
        out.phrases = [phrases[i] for i in idx.tolist()]
        out.concept_ids, out.scores, out.boxes = self.concept_ids[idx], self.scores[idx], self.boxes[idx]
        out.masks = None if self.masks is None else self.masks[idx]
        out.track_ids = None if self.track_ids is None else self.track_ids[idx]
        out.presence = dict(self.presence)
        return out

    def filter(self, score_threshold: float) -> Instances:
        """The instances with ``score >= score_threshold``, in their order."""
        return self.select(self.scores >= score_threshold)

    def top_k(self, k: int) -> Instances:
        """The ``k`` best-scoring instances, best first (ties keep their order)."""
        if k < 0:
            raise ValueError(f"Instances.top_k: k must be >= 0, got {k}")
        return self.select(np.argsort(-self.scores, kind="stable")[:k])

    def to_coco(self, image_id: int, category_ids: dict[str, int] | None = None) -> list[dict]:
        """COCO results: one dict per instance with image_id, category_id, bbox [x, y, w, h], score,
        segmentation (compressed RLE, only when there are masks), phrase, and track_id when tracked.

        ``category_ids`` maps phrases to COCO category ids; without it the category is ``concept_ids``.
        """
        if category_ids is not None:
            missing = sorted(set(self.phrases) - set(category_ids))
            if missing:
                raise ValueError(
                    f"Instances.to_coco: no category id for phrases {missing}; category_ids has {sorted(category_ids)}"
                )
        results = []
        for i, phrase in enumerate(self.phrases):
            x0, y0, x1, y1 = (float(v) for v in self.boxes[i])
            result = {
                "image_id": image_id,
                "category_id": int(category_ids[phrase] if category_ids is not None else self.concept_ids[i]),
                "bbox": [x0, y0, x1 - x0, y1 - y0],
                "score": float(self.scores[i]),
                "phrase": phrase,
            }
            if self.masks is not None:
                result["segmentation"] = encode_rle(self.masks[i])
            if self.track_ids is not None:
                result["track_id"] = int(self.track_ids[i])
            results.append(result)
        return results

    def to_dict(self) -> dict:
        """JSON-ready dict: image_size, presence and one entry per instance (box xyxy, mask as compressed RLE)."""
        instances = []
        for i, phrase in enumerate(self.phrases):
            entry = {"phrase": phrase, "concept_id": int(self.concept_ids[i]), "score": float(self.scores[i]),
                     "box": [float(v) for v in self.boxes[i]]}
            if self.masks is not None:
                entry["mask"] = encode_rle(self.masks[i])
            if self.track_ids is not None:
                entry["track_id"] = int(self.track_ids[i])
            instances.append(entry)
        return {"image_size": list(self.image_size), "presence": dict(self.presence), "instances": instances}

    def to_json(self, indent: int | None = None) -> str:
        """``to_dict`` as a JSON string."""
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: dict) -> Instances:
        """The inverse of ``to_dict``; masks are None when the entries have none (empty: empty masks)."""
        h, w = data["image_size"]
        entries = data["instances"]
        if not entries:
            return cls.empty((h, w), data.get("presence"))
        masks = np.stack([decode_rle(e["mask"]) for e in entries]) if all("mask" in e for e in entries) else None
        tracks = [e["track_id"] for e in entries] if all("track_id" in e for e in entries) else None
        return cls([e["phrase"] for e in entries], [e["concept_id"] for e in entries],
                   [e["score"] for e in entries], [e["box"] for e in entries], masks, data.get("presence", {}), (h, w),
                   tracks)

    @classmethod
    def from_json(cls, text: str) -> Instances:
        """The inverse of ``to_json``."""
        return cls.from_dict(json.loads(text))
