"""What a SAM3-family model is trained against, whatever produced it (ground truth or a teacher).

A :class:`PairTarget` describes one (image, phrase) pair: its instances (boxes, masks, soft
scores) and whether the concept is present. Ground truth gives hard targets (score 1, present
1); a teacher gives soft ones (its scores and presence), so one criterion serves both.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class PairTarget:
    """Targets of one pair. boxes [n, 4] normalised xyxy; masks [n, h, w] in [0, 1] at the model's
    mask resolution; scores [n] (1 for ground truth); present: 0..1 scalar. ``teacher``: the scores are
    a (calibrated) teacher's, used as score targets as they are; ground-truth targets get the
    IoU-aware target instead (see :class:`~sam3edge.distill.losses.SetCriterion`)."""

    boxes: torch.Tensor
    masks: torch.Tensor
    scores: torch.Tensor
    present: float
    teacher: bool = False

    @property
    def num(self) -> int:
        return int(self.boxes.shape[0])

    def to(self, device) -> PairTarget:
        return PairTarget(self.boxes.to(device), self.masks.to(device), self.scores.to(device), self.present,
                          self.teacher)


@dataclass
class PairBatch:
    """A training batch: B images, N pairs. pixel_values [B, 3, S, S]; input_ids / attention_mask [N, L];
    pair_image [N] (which image each pair asks); targets: N PairTargets."""

    pixel_values: torch.Tensor
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    pair_image: torch.Tensor
    targets: list[PairTarget]
    phrases: list[str] | None = None
    # exemplar prompts (SAM3's geometry encoder): [N, K, 4] normalised cxcywh, labels [N, K] (1 positive,
    # 0 negative, -10 padding); None: text prompts only
    input_boxes: torch.Tensor | None = None
    input_boxes_labels: torch.Tensor | None = None
    # per pair: its targets depend on its boxes (a negative exemplar narrowed the phrase: "apple" minus the kind
    # under the box), so nothing may replace those boxes; None: no such pair
    refined: list[bool] | None = None

    def to(self, device) -> PairBatch:
        boxes = None if self.input_boxes is None else self.input_boxes.to(device)
        labels = None if self.input_boxes_labels is None else self.input_boxes_labels.to(device)
        return PairBatch(self.pixel_values.to(device), self.input_ids.to(device), self.attention_mask.to(device),
                         self.pair_image.to(device), [t.to(device) for t in self.targets], self.phrases, boxes, labels,
                         self.refined)


def masks_to_target(masks: torch.Tensor, mask_size: tuple[int, int]) -> PairTarget:
    """Ground-truth target from boolean full-resolution masks [n, H, W].

    Boxes are the masks' tight boxes (normalised); masks are area-downsampled to ``mask_size``, so
    a boundary pixel of the low-resolution grid carries the fraction of it that is inside.
    """
    n, h, w = masks.shape
    if n == 0:
        return PairTarget(torch.zeros(0, 4), torch.zeros(0, *mask_size), torch.zeros(0), 0.0)
    m = masks.bool()
    ys = m.any(dim=2)
    xs = m.any(dim=1)
    ar_y = torch.arange(h, dtype=torch.float32)
    ar_x = torch.arange(w, dtype=torch.float32)
    y0 = torch.where(ys, ar_y, float("inf")).amin(1)
    y1 = torch.where(ys, ar_y, -1.0).amax(1) + 1
    x0 = torch.where(xs, ar_x, float("inf")).amin(1)
    x1 = torch.where(xs, ar_x, -1.0).amax(1) + 1
    boxes = torch.stack([x0 / w, y0 / h, x1 / w, y1 / h], dim=1)
    low = F.interpolate(m[None].float(), size=mask_size, mode="area")[0]
    return PairTarget(boxes, low, torch.ones(n), 1.0)
