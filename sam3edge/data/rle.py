"""Mask and box primitives of COCO / SA-Co files: RLE validation and conversion, IoU, boxes.

Segmentations follow COCO conventions: compressed RLE (``{"size": [h, w], "counts": str}``),
uncompressed RLE (``counts`` as a list of run lengths) or polygons (list of flat ``[x0, y0, x1, y1, ...]``
lists).  Everything is converted to compressed RLE once, validated, and then handed to pycocotools,
whose C routines do the IoU work (the same routines SAM3's evaluator uses, so IoUs are bit-identical).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pycocotools.mask as mask_utils

from sam3edge.runtime.instances import rle_counts_to_runs

__all__ = [
    "to_rle",
    "validate_rle_counts",
    "decode_segmentation",
    "mask_iou_matrix",
    "rle_bbox",
    "validate_bbox",
    "xywh_to_xyxy",
    "box_l1",
    "image_diagonal",
]

def validate_rle_counts(counts: str | bytes, height: int, width: int, where: str) -> None:
    """Check that a compressed COCO RLE ``counts`` string describes exactly ``height * width`` pixels.

    pycocotools does not validate compressed counts: decoding a corrupted string writes past the mask
    buffer (silently producing garbage or crashing), so every string is checked here first.  The
    decoding is the runtime's (:func:`sam3edge.runtime.instances.rle_counts_to_runs`, ``rleFrString`` of
    pycocotools' ``maskApi.c`` vectorised with numpy).

    Raises:
        ValueError: naming ``where`` when the string is not a valid RLE of the expected size.
    """
    expected = int(height) * int(width)
    if not counts:
        raise ValueError(f"{where}: RLE 'counts' is empty; a {height}x{width} mask needs at least one run")
    runs = rle_counts_to_runs(counts, where)
    if (runs >= 2**32).any():
        raise ValueError(f"{where}: RLE 'counts' encodes a run longer than 32 bits; the string is corrupted")
    total = int(runs.sum())
    if total != expected:
        raise ValueError(
            f"{where}: RLE 'counts' covers {total} pixels but the mask is {height}x{width} = {expected}; "
            "the counts do not belong to a mask of this size"
        )


def _check_size(seg: dict, height: int, width: int, where: str) -> None:
    size = seg.get("size")
    if not isinstance(size, Sequence) or len(size) != 2:
        raise ValueError(f"{where}: RLE needs 'size': [height, width], got {size!r}")
    if [int(size[0]), int(size[1])] != [int(height), int(width)]:
        raise ValueError(
            f"{where}: RLE size {list(size)} does not match the image's [height, width] = "
            f"[{height}, {width}]; masks must be encoded at the pair's full resolution"
        )


def to_rle(segmentation: object, height: int, width: int, *, where: str = "segmentation") -> dict:
    """Convert a COCO segmentation (RLE or polygons) to a validated compressed RLE.

    The conversion is the one pycocotools' ``COCO.annToRLE`` performs (which SAM3's evaluator uses):
    polygons are rasterised with ``frPyObjects`` and merged, uncompressed RLEs are compressed, and
    compressed RLEs are kept as they are (counts normalised to ``bytes``).

    Args:
        segmentation: the ``segmentation`` field of an annotation or prediction.
        height, width: size of the image the mask belongs to.
        where: human-readable location used in error messages.

    Returns:
        ``{"size": [height, width], "counts": bytes}``.

    Raises:
        ValueError: when the segmentation is missing, malformed or of the wrong size.
    """
    if isinstance(segmentation, dict):
        _check_size(segmentation, height, width, where)
        counts = segmentation.get("counts")
        if isinstance(counts, (str, bytes)):
            validate_rle_counts(counts, height, width, where)
            raw = counts.encode("ascii") if isinstance(counts, str) else bytes(counts)
            return {"size": [int(height), int(width)], "counts": raw}
        if isinstance(counts, (list, tuple)):
            runs = np.asarray(counts)
            if (
                runs.ndim != 1
                or runs.size == 0
                or not np.issubdtype(runs.dtype, np.integer)
                or (runs < 0).any()
            ):
                raise ValueError(f"{where}: uncompressed RLE 'counts' must be a non-empty list of ints >= 0")
            if int(runs.sum()) != height * width:
                raise ValueError(
                    f"{where}: uncompressed RLE covers {int(runs.sum())} pixels, expected {height * width}"
                )
            return dict(mask_utils.frPyObjects(dict(segmentation), height, width))
        raise ValueError(
            f"{where}: RLE 'counts' must be a string (compressed) or a list of ints, got {counts!r:.60}"
        )
    if isinstance(segmentation, (list, tuple)):
        if not segmentation:
            raise ValueError(f"{where}: polygon list is empty; drop the instance or give it a mask")
        for k, poly in enumerate(segmentation):
            arr = np.asarray(poly, dtype=np.float64) if isinstance(poly, (list, tuple)) else None
            if arr is None or arr.ndim != 1 or arr.size < 6 or arr.size % 2 or not np.isfinite(arr).all():
                raise ValueError(
                    f"{where}: polygon {k} must be a flat list of >= 3 finite (x, y) points, got {poly!r:.60}"
                )
        rles = mask_utils.frPyObjects([list(map(float, p)) for p in segmentation], height, width)
        return dict(mask_utils.merge(rles))
    if segmentation is None:
        raise ValueError(f"{where}: 'segmentation' is missing; every instance needs an RLE or polygon mask")
    raise ValueError(f"{where}: unsupported 'segmentation' of type {type(segmentation).__name__}")


def decode_segmentation(segmentation: object, height: int, width: int) -> np.ndarray:
    """Decode any COCO segmentation to a boolean ``(height, width)`` mask."""
    return mask_utils.decode(to_rle(segmentation, height, width)).astype(bool)


def mask_iou_matrix(dt_rles: Sequence[dict], gt_rles: Sequence[dict]) -> np.ndarray:
    """IoU between every prediction and every (non-crowd) ground-truth mask.

    Returns a float64 array of shape ``(len(dt_rles), len(gt_rles))``; empty inputs give an empty
    array of the right shape (pycocotools returns ``[]`` there, which SAM3's evaluator patches the same way).
    """
    if len(dt_rles) == 0 or len(gt_rles) == 0:
        return np.zeros((len(dt_rles), len(gt_rles)), dtype=np.float64)
    ious = mask_utils.iou(list(dt_rles), list(gt_rles), [0] * len(gt_rles))
    return np.asarray(ious, dtype=np.float64).reshape(len(dt_rles), len(gt_rles))


def rle_bbox(rle: dict) -> np.ndarray:
    """Tight ``[x, y, w, h]`` box of a compressed RLE (all zeros for an empty mask)."""
    return np.asarray(mask_utils.toBbox(rle), dtype=np.float64)


def validate_bbox(bbox: object, where: str) -> np.ndarray:
    """Return ``bbox`` as a float64 ``[x, y, w, h]`` array, or raise ValueError if it is malformed."""
    try:
        arr = np.asarray(bbox, dtype=np.float64)
    except (TypeError, ValueError):
        arr = None
    if arr is None or arr.shape != (4,) or not np.isfinite(arr).all() or arr[2] < 0 or arr[3] < 0:
        raise ValueError(
            f"{where}: 'bbox' must be [x, y, w, h] with finite values and w, h >= 0, got {bbox!r:.60}"
        )
    return arr


def xywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    """Convert ``[..., 4]`` boxes from COCO ``[x, y, w, h]`` to ``[x0, y0, x1, y1]``."""
    boxes = np.asarray(boxes, dtype=np.float64)
    return np.concatenate([boxes[..., :2], boxes[..., :2] + boxes[..., 2:]], axis=-1)


def box_l1(pred_xywh: np.ndarray, gt_xywh: np.ndarray) -> np.ndarray:
    """Mean absolute corner error in pixels: mean over the 4 ``xyxy`` coordinates of ``|pred - gt|``.

    Corners (not centre/size) are compared so that a box that is shifted and one that is resized by
    the same number of pixels score the same.
    """
    return np.abs(xywh_to_xyxy(pred_xywh) - xywh_to_xyxy(gt_xywh)).mean(axis=-1)


def image_diagonal(height: int, width: int) -> float:
    """Length of the image diagonal in pixels, used to make box errors resolution independent."""
    return math.hypot(height, width)
