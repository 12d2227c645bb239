"""Exemplars placed on the model's own mistakes, SAM3's interactive training of exemplar prompts.

SAM3 does not teach exemplars with random boxes only: it simulates a user who corrects the model, a positive box
on an instance the phrase missed, a negative box on something it wrongly found. With random boxes on ground-truth
instances the phrase alone already names every target, so a small model learns to ignore the boxes (the bundled
toy teacher, fine-tuned that way, reached text + 1 exemplar <= text; CHANGELOG, issue 16). A box on an error is
information the phrase did not carry.

:class:`InteractivePairModel` is a :class:`~sam3edge.models.sam3_heads.Sam3PairModel` for training: for the pairs
of a batch that ask text + exemplars, it first runs the heads on the phrase alone (no gradient, the trunk's
features reused), finds the errors against the pair's ground truth (score 0.5, box IoU 0.5) and, with probability
``rate``, replaces the pair's boxes by one box on an error: the highest-scoring clear false positive (negative
box on its predicted box; one that overlaps no true instance, not a near miss of one) or a missed instance
(positive box on its true box), a coin flip when the pair has both. Pairs without errors keep the boxes the batch
drew. Targets are unchanged: the boxes only say where the phrase went wrong. The choice is seeded by the batch's
content, so a resumed run repeats it.
"""

from __future__ import annotations

import torch

from sam3edge.distill.boxes import pairwise_iou_giou
from sam3edge.models.heads.layers import xyxy_to_cxcywh
from sam3edge.models.sam3_heads import Sam3PairModel, run_heads, select_images
from sam3edge.runtime.exemplars import PADDING_LABEL

__all__ = ["InteractivePairModel", "error_boxes"]


def error_boxes(scores: torch.Tensor, boxes: torch.Tensor, gt_boxes: torch.Tensor, threshold: float = 0.5,
                iou: float = 0.5, clear: float = 0.1, negative_threshold: float | None = None
                ) -> tuple[torch.Tensor | None, list[int]]:
    """(best clear false positive's box or None, indices of missed ground-truth instances) of one pair.

    scores [Q], boxes [Q, 4] normalised xyxy predictions; gt_boxes [n, 4] normalised xyxy. A kept prediction
    (score >= ``threshold``) is a clear false positive when its IoU with every true box is < ``clear``: a near
    miss of a true instance (IoU between ``clear`` and ``iou``) is a localisation error of a target, and a
    negative box on it would contradict the target that stays. A true instance is missed when no kept prediction
    reaches ``iou`` with it. ``negative_threshold`` (default ``threshold``): the score from which a prediction off
    every target counts as a false positive to put a negative box on; below ``threshold`` it is a *near* false
    positive, something the phrase half-believes (hard-negative mining: clear false positives above 0.5 are too
    rare in the orchard for a model to learn what a negative box means from them alone)."""
    kept = torch.nonzero(scores >= threshold).flatten()
    low = threshold if negative_threshold is None else negative_threshold
    candidates = torch.nonzero(scores >= low).flatten()
    if len(gt_boxes):
        fp = candidates[pairwise_iou_giou(boxes[candidates], gt_boxes)[0].max(1).values < clear] \
            if len(candidates) else candidates
        missed = (torch.nonzero(pairwise_iou_giou(boxes[kept], gt_boxes)[0].max(0).values < iou).flatten().tolist()
                  if len(kept) else list(range(len(gt_boxes))))
    else:
        fp, missed = candidates, []
    worst = boxes[fp[scores[fp].argmax()]] if len(fp) else None
    return worst, missed


class InteractivePairModel(Sam3PairModel):
    """:class:`Sam3PairModel` whose text + exemplar pairs get, with probability ``rate``, one box on the phrase's
    own error (see the module docstring). Same parameters and state-dict keys as ``Sam3PairModel(model)``."""

    def __init__(self, model, rate: float = 0.5, visual_phrase: str = "visual", negative_threshold: float = 0.5):
        super().__init__(model)
        if not 0.0 <= float(rate) <= 1.0:
            raise ValueError(f"rate is a probability in [0, 1], got {rate!r}")
        if not 0.0 < float(negative_threshold) <= 0.5:
            raise ValueError(f"negative_threshold is a score in (0, 0.5], got {negative_threshold!r}")
        self.rate, self.visual_phrase = float(rate), visual_phrase
        self.negative_threshold = float(negative_threshold)
        self.last_counts = {"negative": 0, "positive": 0, "kept": 0}
        self.total_counts = dict(self.last_counts)  # over this process's batches (a resumed run counts anew)

    def forward(self, batch):
        vision = self.model.get_vision_features(pixel_values=batch.pixel_values)
        text = self.model.get_text_features(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
        vis = select_images(vision, batch.pair_image)
        boxes, labels = getattr(batch, "input_boxes", None), getattr(batch, "input_boxes_labels", None)
        if self.training and boxes is not None and self.rate > 0:
            boxes, labels = self.exemplars_on_errors(batch, vis, text.pooler_output)
        return run_heads(self.model, vis, text.pooler_output, batch.attention_mask, boxes, labels)

    @torch.no_grad()
    def exemplars_on_errors(self, batch, vis=None, text_features=None) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's exemplar (boxes, labels) with error boxes in place (see the class); ``vis`` (per pair) and
        ``text_features`` are computed when not given. ``last_counts``: how many pairs got a negative box, a
        positive one, or kept theirs."""
        boxes, labels = batch.input_boxes, batch.input_boxes_labels
        if boxes is None:
            raise ValueError("the batch has no exemplar boxes (OrchardBatches prompt_mix with text + boxes)")
        if vis is None:
            vis = select_images(self.model.get_vision_features(pixel_values=batch.pixel_values), batch.pair_image)
        if text_features is None:
            text_features = self.model.get_text_features(input_ids=batch.input_ids,
                                                         attention_mask=batch.attention_mask).pooler_output
        phrases = batch.phrases or [""] * len(batch.targets)
        refined = batch.refined or [False] * len(batch.targets)
        asks = [i for i, t in enumerate(batch.targets)  # a refined pair's targets hold only with its own boxes
                if (labels[i] != PADDING_LABEL).any() and phrases[i] != self.visual_phrase and not refined[i]]
        counts = {"negative": 0, "positive": 0, "kept": 0}
        if not asks:
            self.last_counts = counts
            return boxes, labels
        seed = int(batch.input_ids.sum()) * 1_000_003 + int(sum(t.num for t in batch.targets))
        gen = torch.Generator().manual_seed(seed)
        idx = torch.tensor(asks, device=batch.attention_mask.device)
        sub = select_images(vis, idx)
        out = run_heads(self.model, sub, text_features.detach()[idx], batch.attention_mask[idx])
        scores = (out.logits.float().sigmoid() * out.presence_logits.float().sigmoid()).cpu()
        pred = out.boxes.float().cpu()
        new = {}
        for row, i in enumerate(asks):
            if float(torch.rand((), generator=gen)) >= self.rate:
                counts["kept"] += 1
                continue
            gt = batch.targets[i].boxes.float().cpu()
            fp, missed = error_boxes(scores[row], pred[row], gt, negative_threshold=self.negative_threshold)
            use_fp = fp is not None and (not missed or float(torch.rand((), generator=gen)) < 0.5)
            if use_fp:
                new[i] = (xyxy_to_cxcywh(fp), 0)
            elif missed:
                k = missed[int(torch.randint(len(missed), (), generator=gen))]
                new[i] = (xyxy_to_cxcywh(gt[k]), 1)
            else:
                counts["kept"] += 1
                continue
            counts["negative" if use_fp else "positive"] += 1
        self.last_counts = counts
        for k, v in counts.items():
            self.total_counts[k] += v
        if not new:
            return boxes, labels
        boxes, labels = boxes.clone(), labels.clone()
        for i, (box, lab) in new.items():
            boxes[i] = 0.0
            labels[i] = PADDING_LABEL
            boxes[i, 0] = box.to(boxes)
            labels[i, 0] = lab
        return boxes, labels
