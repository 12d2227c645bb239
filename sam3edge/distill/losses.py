"""SAM3 set-prediction losses: scores, presence, boxes, masks, semantic map, on every decoder layer.

Following SAM3, the presence token decides *whether* the concept is in the image and the
queries decide *which* regions are its instances; so query scores are supervised only on pairs
whose concept is present, and presence on every pair. Scores use a sigmoid focal loss (``gamma``
0 gives plain BCE, which calibrates scores around SAM3's 0.5 threshold better); with
``iou_aware`` a matched query's target is its IoU with a ground-truth instance - mask IoU on the
last layer (the IoU cgF1 is computed with), box IoU on earlier layers, which have no masks - so a
sloppy instance cannot claim a confident score; a teacher's instance keeps the teacher's score as
its target (that score is already quality-aware). Box L1 + GIoU and (last layer) mask BCE + dice
apply to matched queries.

Exemplar boxes are a user's statement about one object: a positive box says "this is an instance", a negative
one "this is not". With ``boxed`` > 1 the score loss of the box's own instance (the query matched to the true
instance under a positive box; unmatched queries on a box: the rejected object, or a duplicate of the boxed
instance) and the pair's presence loss (a positive box means present) weigh ``boxed`` times as much: with the
plain set loss a model learns to find what the phrase already finds, a box on a missed instance lifts its score
too little to keep it, and a box on a found one adds a second detection of it (issue 16).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from sam3edge.distill.boxes import paired_iou_giou, pairwise_iou_giou
from sam3edge.distill.distributed import global_count
from sam3edge.distill.matcher import MatchCosts, hungarian_match
from sam3edge.distill.targets import PairTarget
from sam3edge.models.heads.layers import cxcywh_to_xyxy
from sam3edge.models.heads.outputs import HeadOutputs


@dataclass
class LossWeights:
    score: float = 2.0
    presence: float = 2.0
    l1: float = 5.0
    giou: float = 2.0
    mask: float = 5.0
    dice: float = 5.0
    semantic: float = 1.0
    aux: float = 1.0  # multiplier of the score/box/presence losses of earlier decoder layers
    focal_gamma: float = 0.0
    focal_alpha: float = -1.0  # < 0: no alpha weighting
    iou_aware: bool = True
    boxed: float = 1.0  # weight of an exemplar box's own instance in the score / presence losses (module doc)
    costs: MatchCosts = field(default_factory=MatchCosts)


def sigmoid_focal(logits: torch.Tensor, targets: torch.Tensor, gamma: float, alpha: float) -> torch.Tensor:
    """Element-wise sigmoid focal loss with soft targets (gamma = 0, alpha < 0: BCE)."""
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    if gamma:
        p = logits.sigmoid()
        ce = ce * ((1 - p) * targets + p * (1 - targets)).abs().pow(gamma)
    if alpha >= 0:
        ce = ce * (alpha * targets + (1 - alpha) * (1 - targets))
    return ce


def mask_iou(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """IoU [n] of binarised mask logits [n, h, w] with soft targets [n, h', w'] (binarised at 0.5)."""
    if targets.shape[-2:] != logits.shape[-2:]:
        targets = F.interpolate(targets[None].float(), size=logits.shape[-2:], mode="bilinear", align_corners=False)[0]
    p, t = logits.flatten(1) > 0, targets.flatten(1) > 0.5
    return (p & t).sum(1).float() / (p | t).sum(1).clamp(min=1).float()


def dice_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-row dice loss of logits [n, P] against soft targets [n, P]."""
    p = logits.sigmoid()
    return 1 - (2 * (p * targets).sum(-1) + 1) / (p.sum(-1) + targets.sum(-1) + 1)


class SetCriterion(torch.nn.Module):
    """Loss of a SAM3-family model's :class:`HeadOutputs` on N pairs against N :class:`PairTarget`."""

    def __init__(self, weights: LossWeights | None = None):
        super().__init__()
        self.w = weights or LossWeights()

    def forward(self, out: HeadOutputs, targets: list[PairTarget]) -> tuple[torch.Tensor, dict[str, float]]:
        w = self.w
        n_layers = out.aux_logits.shape[0]
        # DETR's normaliser: the global batch's instance count (mean over ranks under DDP)
        num_inst = max(1.0, global_count(float(sum(t.num for t in targets))))
        terms: dict[str, torch.Tensor] = {}

        def add(name, value, weight):
            terms[name] = terms.get(name, 0.0) + weight * value

        final_matches = None
        for layer in range(n_layers):
            last = layer == n_layers - 1
            lw = 1.0 if last else w.aux
            logits, boxes = out.aux_logits[layer], out.aux_boxes[layer]
            matches = [
                hungarian_match(logits[i], boxes[i], t.boxes,
                                out.mask_logits[i] if last else None, t.masks if last else None, w.costs)
                for i, t in enumerate(targets)
            ]
            if last:
                final_matches = matches
            score_l, l1_l, giou_l = logits.new_zeros(()), logits.new_zeros(()), logits.new_zeros(())
            presence_w = torch.ones(len(targets), dtype=logits.dtype, device=logits.device)
            for i, (t, (qi, ti)) in enumerate(zip(targets, matches)):
                query_w, presence_w[i] = self.boxed_weights(out, i, t, qi, ti, boxes[i])
                if t.num:
                    iou, giou = paired_iou_giou(boxes[i, qi], t.boxes[ti])
                    quality = mask_iou(out.mask_logits[i, qi], t.masks[ti]) if last else iou
                    l1_l = l1_l + F.l1_loss(boxes[i, qi], t.boxes[ti], reduction="sum")
                    giou_l = giou_l + (1 - giou).sum()
                if t.present > 0.5 or t.num:
                    tgt = torch.zeros_like(logits[i])
                    if t.num:
                        s = t.scores[ti].to(tgt.dtype)
                        # a teacher's score already says how good its instance is: taken as it is (multiplying
                        # it by the student's IoU again biases every score low, and recall with it)
                        tgt[qi] = s * quality.detach().clamp(min=0.05) if w.iou_aware and not t.teacher else s
                    score_l = score_l + (sigmoid_focal(logits[i], tgt, w.focal_gamma, w.focal_alpha) * query_w).sum()
            present = torch.tensor([t.present for t in targets], dtype=logits.dtype, device=logits.device)
            pres_l = F.binary_cross_entropy_with_logits(out.aux_presence_logits[layer][:, 0], present,
                                                        weight=presence_w)
            add("score", score_l / num_inst, lw * w.score)
            add("l1", l1_l / num_inst, lw * w.l1)
            add("giou", giou_l / num_inst, lw * w.giou)
            add("presence", pres_l, lw * w.presence)

        mask_l, dice_l = self._mask_losses(out, targets, final_matches)
        add("mask", mask_l / num_inst, w.mask)
        add("dice", dice_l / num_inst, w.dice)
        add("semantic", self._semantic_loss(out, targets), w.semantic)
        total = sum(terms.values())
        return total, {k: float(v.detach()) if torch.is_tensor(v) else float(v) for k, v in terms.items()} | {
            "total": float(total.detach())}

    def boxed_weights(self, out: HeadOutputs, i: int, t: PairTarget, qi: torch.Tensor, ti: torch.Tensor,
                      pred_boxes: torch.Tensor, own: float = 0.7, on_negative: float = 0.5
                      ) -> tuple[torch.Tensor | float, float]:
        """(score-loss weights [Q] or 1.0, presence weight) of pair ``i`` under ``LossWeights.boxed``.

        A true instance is a positive box's own when their box IoU is >= ``own`` (the box was drawn on it): its
        matched query is weighted. So is every query matched to no true instance whose predicted box
        (``pred_boxes`` [Q, 4] xyxy) overlaps a box at IoU >= ``on_negative``: on a negative box it is the object the
        user rejected; on a positive one, a second detection of the box's instance (one box, one instance)."""
        boxed = self.w.boxed
        if boxed == 1.0 or out.prompt_boxes is None or out.prompt_boxes.shape[1] == 0:
            return 1.0, 1.0
        labels = out.prompt_labels[i] if out.prompt_labels is not None else torch.ones(
            out.prompt_boxes.shape[1], dtype=torch.long, device=out.prompt_boxes.device)
        prompt = cxcywh_to_xyxy(out.prompt_boxes[i].float().detach())
        pos, real = prompt[labels == 1], (labels == 1) | (labels == 0)  # real: not padding
        query_w = torch.ones(pred_boxes.shape[0], dtype=pred_boxes.dtype, device=pred_boxes.device)
        unmatched = torch.ones(pred_boxes.shape[0], dtype=torch.bool, device=pred_boxes.device)
        unmatched[qi] = False
        on_box = pairwise_iou_giou(pred_boxes.detach().float(), prompt)[0] >= on_negative  # [Q, K]
        if len(pos) and t.num and len(qi):
            own_inst = pairwise_iou_giou(t.boxes[ti].float(), pos)[0].max(1).values >= own
            query_w[qi[own_inst]] = boxed
        # unmatched queries on a box: a second detection of the positive box's instance, or the negative box's object
        query_w[unmatched & on_box[:, real].any(1)] = boxed
        return query_w, boxed if len(pos) and t.present > 0.5 else 1.0

    @staticmethod
    def _mask_losses(out: HeadOutputs, targets, matches):
        bce, dice = out.mask_logits.new_zeros(()), out.mask_logits.new_zeros(())
        for i, (t, (qi, ti)) in enumerate(zip(targets, matches)):
            if not t.num:
                continue
            pred = out.mask_logits[i, qi]
            tgt = t.masks[ti].to(pred.dtype)
            if tgt.shape[-2:] != pred.shape[-2:]:
                tgt = F.interpolate(tgt[None], size=pred.shape[-2:], mode="bilinear", align_corners=False)[0]
            bce = bce + F.binary_cross_entropy_with_logits(pred, tgt, reduction="none").flatten(1).mean(1).sum()
            dice = dice + dice_loss(pred.flatten(1), tgt.flatten(1)).sum()
        return bce, dice

    @staticmethod
    def _semantic_loss(out: HeadOutputs, targets) -> torch.Tensor:
        """BCE + dice of the semantic map against the union of the pair's instance masks."""
        sem = out.semantic_logits[:, 0]
        union = []
        for t in targets:
            if t.num:
                m = (t.masks * t.scores[:, None, None]).amax(0)
                if m.shape != sem.shape[-2:]:
                    m = F.interpolate(m[None, None], size=sem.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
            else:
                m = sem.new_zeros(sem.shape[-2:])
            union.append(m.to(sem.dtype))
        u = torch.stack(union)
        bce = F.binary_cross_entropy_with_logits(sem, u)
        return bce + dice_loss(sem.flatten(1), u.flatten(1)).mean()
