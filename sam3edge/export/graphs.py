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
* Students with fast heads (``HeadsConfig.head_type == "fast"``) keep these names with other contents:
  ``feat0`` is the shared pixel embeddings [1, m, S/4, S/4], ``feat1`` the coarsest FPN level
  [1, E, S/16, S/16] (exemplar prompts' ROI features; E = ``HeadsConfig.in_width``), ``feat2`` the fusion grid
  [1, C, g, g] and ``text`` [P, L, E]; the
  decoder graph runs only the per-concept part (:class:`~sam3edge.models.heads.fast.FastHeads`).
* :class:`ExemplarGraph` - ``feat2`` (the features exemplar boxes are pooled from: the coarsest level, or the fast
  heads' grid), ``boxes`` [P, K, 4] float (normalised xyxy of the input frame) and ``box_labels`` [P, K] int64
  (1 positive, 0 negative, -10 padding) -> ``tokens`` [P, K + 1, C] and ``tokens_mask`` [P, K + 1] bool: SAM3's
  geometry tokens in the text tokens' space. The runtime appends them to a concept's text tokens along the decoder's
  ``text`` axis (dynamic in bundles that carry this graph); a row of padding only is all False, so it changes
  nothing. P and K are dynamic.
* :class:`TextEncoderGraph` - ``input_ids`` int64 [P, 32] and ``attention_mask`` int64 [P, 32] ->
  ``text`` [P, L, C] and ``text_mask`` [P, L] bool (students with their own text encoder).
"""

from __future__ import annotations

import torch
from torch import nn

from sam3edge.models.heads.layers import xyxy_to_cxcywh

IMAGE_OUTPUTS = ("feat0", "feat1", "feat2")
DECODER_INPUTS = (*IMAGE_OUTPUTS, "text", "text_mask")
DECODER_OUTPUTS = ("scores", "boxes", "presence", "masks", "indices")
EXEMPLAR_INPUTS = ("feat2", "boxes", "box_labels")
EXEMPLAR_OUTPUTS = ("tokens", "tokens_mask")


def is_fast(student) -> bool:
    return student.spec.heads.head_type == "fast"


def frame_positions(student) -> list[torch.Tensor]:
    """The position encodings of the student's FPN levels at its (fixed) input size: graph constants."""
    size = student.image_size
    with torch.no_grad():
        return [p.detach().clone() for p in student.image_encoder(torch.zeros(1, 3, size, size)).pos]


class ImageEncoderGraph(nn.Module):
    def __init__(self, student):
        super().__init__()
        self.encoder = student.image_encoder
        self.heads = student.heads if is_fast(student) else None

    def forward(self, image: torch.Tensor):
        feats = self.encoder.forward_uint8(image, channels_last=True)
        if self.heads is None:
            return tuple(feats.levels)
        pixels, grid, _ = self.heads.image_context(feats.levels, feats.pos)
        return pixels, feats.levels[-1], grid


class DecoderGraph(nn.Module):
    def __init__(self, student, top_k: int | None = None):
        super().__init__()
        self.heads = student.heads
        self.k = int(top_k or student.spec.export.top_k)
        pos = frame_positions(student)
        for i, p in enumerate(pos):
            self.register_buffer(f"pos{i}", p, persistent=False)
        self.fast = is_fast(student)
        if self.fast:
            grid_pos = student.heads.grid_position(pos[-1])
            self.register_buffer("grid_pos", grid_pos.detach().clone(), persistent=False)

    def forward(self, feat0, feat1, feat2, text, text_mask):
        if self.fast:  # feat1 (exemplar ROI features) is unused by text prompts
            top = self.heads.topk_from_context(feat0, feat2, self.grid_pos, text, text_mask, self.k)
            return top.scores, top.boxes, top.presence[:, 0], top.mask_logits, top.indices
        p = text.shape[0]
        levels = [f.expand(p, -1, -1, -1) for f in (feat0, feat1, feat2)]
        pos = [b.expand(p, -1, -1, -1) for b in (self.pos0, self.pos1, self.pos2)]
        top = self.heads.forward_topk(levels, pos, text, text_mask, k=self.k)
        return top.scores, top.boxes, top.presence[:, 0], top.mask_logits, top.indices


class ExemplarGraph(nn.Module):
    """Exemplar boxes on one frame -> prompt tokens in the text tokens' space (see the module docstring)."""

    def __init__(self, student):
        super().__init__()
        self.heads = student.heads
        pos = frame_positions(student)[-1]
        if is_fast(student):
            with torch.no_grad():
                pos = student.heads.grid_position(pos)
        self.register_buffer("pos", pos, persistent=False)

    def forward(self, feat2, boxes, box_labels):
        # a row of padding only (a concept without boxes among others with some) comes out all masked: a no-op
        return self.heads.exemplar_tokens(feat2, self.pos, xyxy_to_cxcywh(boxes), box_labels)


class TextEncoderGraph(nn.Module):
    def __init__(self, student):
        super().__init__()
        if not student.has_text_encoder:
            raise ValueError(f"student {student.spec.name!r} has no text encoder (text mode "
                             f"{student.text_mode!r}); its bundle carries a concept cache instead")
        self.encoder = student.text_encoder

    def forward(self, input_ids, attention_mask):
        feats, mask = self.encoder(input_ids, attention_mask)
        return feats, mask
