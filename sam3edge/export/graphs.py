"""Export wrappers: the graphs a bundle holds, apart from the training modules (DESIGN.md).

Each wrapper fixes the names, order, dtypes and shapes of its inputs and outputs and contains no
Python control flow that depends on data, so ``torch.onnx.export`` / ``torch.export`` see one
static graph:

* :class:`ImageEncoderGraph` - ``image`` uint8 RGB [1, S, S, 3] (letterboxed by the runtime) ->
  ``feat0`` [1, C, S/4, S/4], ``feat1`` [1, C, S/8, S/8], ``feat2`` [1, C, S/16, S/16].
  Normalisation is inside the graph.
* :class:`DecoderGraph` - the three feature levels + ``text`` [P, L, C] float and ``text_mask``
  [P, L] bool (P prompts, dynamic) -> ``scores`` [P, K], ``boxes`` [P, K, 4] (normalised xyxy),
  ``presence`` [P], ``masks`` [P, K, S/4, S/4] (logits), ``indices`` [P, K] int64 (the query slot
  of each detection: the same slot is the same query in every precision). The position encodings of a fixed input
  size are constants of the graph; only the top-K queries get masks.
* :class:`TextEncoderGraph` - ``input_ids`` int64 [P, 32] and ``attention_mask`` int64 [P, 32] ->
  ``text`` [P, L, C] and ``text_mask`` [P, L] bool (students with their own text encoder).
"""

from __future__ import annotations

import torch
from torch import nn

IMAGE_OUTPUTS = ("feat0", "feat1", "feat2")
DECODER_INPUTS = (*IMAGE_OUTPUTS, "text", "text_mask")
DECODER_OUTPUTS = ("scores", "boxes", "presence", "masks", "indices")


class ImageEncoderGraph(nn.Module):
    def __init__(self, student):
        super().__init__()
        self.encoder = student.image_encoder

    def forward(self, image: torch.Tensor):
        levels = self.encoder.forward_uint8(image, channels_last=True).levels
        return tuple(levels)


class DecoderGraph(nn.Module):
    def __init__(self, student, top_k: int | None = None):
        super().__init__()
        self.heads = student.heads
        self.k = int(top_k or student.spec.export.top_k)
        size = student.image_size
        with torch.no_grad():  # position encodings depend only on the (fixed) input size: graph constants
            pos = student.image_encoder(torch.zeros(1, 3, size, size)).pos
        for i, p in enumerate(pos):
            self.register_buffer(f"pos{i}", p.detach().clone(), persistent=False)

    def forward(self, feat0, feat1, feat2, text, text_mask):
        p = text.shape[0]
        levels = [f.expand(p, -1, -1, -1) for f in (feat0, feat1, feat2)]
        pos = [b.expand(p, -1, -1, -1) for b in (self.pos0, self.pos1, self.pos2)]
        top = self.heads.forward_topk(levels, pos, text, text_mask, k=self.k)
        return top.scores, top.boxes, top.presence[:, 0], top.mask_logits, top.indices


class TextEncoderGraph(nn.Module):
    def __init__(self, student):
        super().__init__()
        if student.text_mode != "encoder":
            raise ValueError(f"student {student.spec.name!r} has no text encoder (text mode "
                             f"{student.text_mode!r}); its bundle carries a concept cache instead")
        self.encoder = student.text_encoder

    def forward(self, input_ids, attention_mask):
        feats, mask = self.encoder(input_ids, attention_mask)
        return feats, mask
