"""What the heads return for N (image, prompt) pairs, whichever heads computed them (SAM3's, ours, fast)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class HeadOutputs:
    """Raw head outputs for N pairs (boxes normalised xyxy in [0, 1]).

    logits [N, Q], boxes [N, Q, 4], presence_logits [N, 1], mask_logits [N, Q, h, w],
    semantic_logits [N, 1, h, w]; ``aux_*`` hold every decoder layer: [L, N, Q], [L, N, Q, 4], [L, N, 1].
    ``prompt_boxes`` [N, K, 4] (normalised cxcywh) / ``prompt_labels`` [N, K]: the exemplar boxes these outputs
    answer (1 positive, 0 negative, -10 padding), None for text prompts; the loss weighs a box's own instance
    with them (:class:`~sam3edge.distill.losses.LossWeights` ``boxed``).
    """

    logits: torch.Tensor
    boxes: torch.Tensor
    presence_logits: torch.Tensor
    mask_logits: torch.Tensor
    semantic_logits: torch.Tensor
    aux_logits: torch.Tensor
    aux_boxes: torch.Tensor
    aux_presence_logits: torch.Tensor
    prompt_boxes: torch.Tensor | None = None
    prompt_labels: torch.Tensor | None = None

    @property
    def scores(self) -> torch.Tensor:
        """SAM3's instance score: sigmoid(logit) x sigmoid(presence), [N, Q]."""
        return self.logits.sigmoid() * self.presence_logits.sigmoid()
