"""What a concept segmenter returns, whoever computed it (the SAM3 teacher or a student).

Distillation, evaluation and export read teacher and student outputs through this one type
(``ConceptOutputs``), so neither needs to know which model ran.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class ConceptOutputs:
    """Outputs for B images x P phrases.

    image_features / image_pos: the FPN levels the heads consume, each [B, C, h_l, w_l].
    text_features [P, L, D], text_mask [P, L]; scores, logits [B, P, Q]; presence [B, P] (probability);
    boxes [B, P, Q, 4] xyxy in pixels of each original image, clipped to it as the runtime's are
    (``Resize.boxes_to_original``); boxes_normalized the same in [0, 1] of the frame, as the heads gave them
    (not clipped: training targets);
    mask_logits [B, P, Q, h, w] (low resolution); semantic_logits [B, P, h, w].
    """

    image_features: list[torch.Tensor]
    image_pos: list[torch.Tensor]
    text_features: torch.Tensor
    text_mask: torch.Tensor
    scores: torch.Tensor
    logits: torch.Tensor
    presence: torch.Tensor
    boxes: torch.Tensor
    boxes_normalized: torch.Tensor
    mask_logits: torch.Tensor
    semantic_logits: torch.Tensor
    image_sizes: list[tuple[int, int]]
    phrases: list[str]

    def instances(self, b: int, p: int, score_threshold: float = 0.5, mask_threshold: float = 0.5) -> dict:
        """Kept instances of image ``b`` for phrase ``p``: scores [K], boxes [K, 4] (pixels), masks [K, H, W] bool.

        Masks are upsampled to the original size as SAM3's post-processing does (bilinear on
        probabilities, then thresholded).
        """
        keep = self.scores[b, p] >= score_threshold
        h, w = self.image_sizes[b]
        logits = self.mask_logits[b, p][keep]
        if logits.shape[0]:
            probs = F.interpolate(logits[None].float().sigmoid(), size=(h, w), mode="bilinear", align_corners=False)[0]
            masks = probs > mask_threshold
        else:
            masks = torch.zeros(0, h, w, dtype=torch.bool)
        return {"scores": self.scores[b, p][keep], "boxes": self.boxes[b, p][keep], "masks": masks}

    @classmethod
    def from_pairs(cls, outs: list, image_features: list[torch.Tensor], image_pos: list[torch.Tensor],
                   text_features: torch.Tensor, text_mask: torch.Tensor, image_sizes: list[tuple[int, int]],
                   phrases: list[str]) -> ConceptOutputs:
        """Assemble B x P outputs from head outputs of the B * P pairs in image-major order.

        outs: chunks of :class:`~sam3edge.models.heads.outputs.HeadOutputs` (N_i pairs each, sum N_i = B * P;
        boxes normalised xyxy); image_sizes: (H, W) of each original image, which boxes are scaled to.
        """
        b, p = len(image_sizes), len(phrases)

        def cat(name):
            return torch.cat([getattr(o, name) for o in outs]).unflatten(0, (b, p))

        logits, presence_logits, boxes_n = cat("logits"), cat("presence_logits")[..., 0], cat("boxes")
        scale = torch.tensor([[w, h, w, h] for h, w in image_sizes], dtype=boxes_n.dtype, device=boxes_n.device)
        return cls(
            image_features=list(image_features), image_pos=list(image_pos), text_features=text_features,
            text_mask=text_mask, scores=logits.sigmoid() * presence_logits.sigmoid()[..., None], logits=logits,
            presence=presence_logits.sigmoid(), boxes=boxes_n.clamp(0, 1) * scale[:, None, None, :],
            boxes_normalized=boxes_n,
            mask_logits=cat("mask_logits"), semantic_logits=cat("semantic_logits")[:, :, 0],
            image_sizes=[tuple(int(v) for v in s) for s in image_sizes], phrases=list(phrases),
        )
