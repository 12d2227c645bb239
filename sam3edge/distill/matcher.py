"""Hungarian matching of predicted queries to target instances, per pair (DETR / SAM3 style).

The cost mixes classification (how likely the query says "instance"), box L1, generalised IoU
and, when masks are given, mask BCE + dice. ``scipy.optimize.linear_sum_assignment`` solves the
one-to-one assignment exactly; with more targets than queries the surplus targets stay unmatched.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from sam3edge.distill.boxes import pairwise_iou_giou


@dataclass
class MatchCosts:
    cls: float = 2.0
    l1: float = 5.0
    giou: float = 2.0
    mask: float = 2.0
    dice: float = 2.0
    mask_cost_size: int = 32  # masks are compared at this resolution: matching needs ranks, not detail


def _mask_costs(pred: torch.Tensor, tgt: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """BCE and dice cost [Q, n] between mask logits [Q, h, w] and targets [n, h', w'] (resized to size)."""
    p = F.interpolate(pred[None], size=(size, size), mode="bilinear", align_corners=False)[0].flatten(1)
    t = F.interpolate(tgt[None], size=(size, size), mode="bilinear", align_corners=False)[0].flatten(1)
    hw = p.shape[1]
    pos = F.binary_cross_entropy_with_logits(p, torch.ones_like(p), reduction="none")
    neg = F.binary_cross_entropy_with_logits(p, torch.zeros_like(p), reduction="none")
    bce = (pos @ t.T + neg @ (1 - t).T) / hw
    s = p.sigmoid()
    dice = 1 - (2 * s @ t.T + 1) / (s.sum(-1)[:, None] + t.sum(-1)[None] + 1)
    return bce, dice


@torch.no_grad()
def hungarian_match(logits: torch.Tensor, boxes: torch.Tensor, tgt_boxes: torch.Tensor,
                    mask_logits: torch.Tensor | None = None, tgt_masks: torch.Tensor | None = None,
                    costs: MatchCosts | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Match Q queries of one pair to its n targets.

    logits [Q], boxes [Q, 4] (normalised xyxy), tgt_boxes [n, 4]; optional mask_logits [Q, h, w] and
    tgt_masks [n, h, w]. Returns (query indices, target indices), each [min(Q, n)] int64.
    """
    costs = costs or MatchCosts()
    n = tgt_boxes.shape[0]
    if n == 0:
        empty = torch.zeros(0, dtype=torch.long)
        return empty, empty
    prob = logits.float().sigmoid()[:, None]
    c = -costs.cls * prob.expand(-1, n)
    c = c + costs.l1 * torch.cdist(boxes.float(), tgt_boxes.float(), p=1)
    c = c - costs.giou * pairwise_iou_giou(boxes.float(), tgt_boxes.float())[1]
    if mask_logits is not None and tgt_masks is not None and (costs.mask or costs.dice):
        bce, dice = _mask_costs(mask_logits.float(), tgt_masks.float(), costs.mask_cost_size)
        c = c + costs.mask * bce + costs.dice * dice
    c = torch.nan_to_num(c, nan=1e4, posinf=1e4, neginf=-1e4).cpu().numpy()
    qi, ti = linear_sum_assignment(c)
    return torch.from_numpy(np.asarray(qi, dtype=np.int64)), torch.from_numpy(np.asarray(ti, dtype=np.int64))
