"""Our export-friendly implementation of SAM3's concept-segmentation heads.

``Sam3Heads`` has the parameter layout of transformers' ``Sam3Model`` heads (geometry_encoder,
detr_encoder, detr_decoder, mask_decoder, dot_product_scoring), so a teacher's weights load by
name (:mod:`sam3edge.models.convert`), and it computes the same outputs (a test holds it to
transformers within 1e-5). Unlike transformers it uses no mask factories, no SDPA dispatch, no
torchvision and no data-dependent Python branches, so it traces with ``torch.export``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from sam3edge.models.heads.outputs import HeadOutputs
from sam3edge.models.heads_config import HeadsConfig
from sam3edge.ops.mode import fused_ops_enabled

from .attention import padding_bias
from .detr_decoder import DetrDecoder
from .fusion_encoder import FusionEncoder
from .geometry_encoder import GeometryEncoder
from .layers import check_text, cxcywh_to_xyxy
from .mask_decoder import MaskDecoder
from .scoring import DotProductScoring

__all__ = ["HeadOutputs", "HeadsConfig", "Sam3Heads", "TopKOutputs", "build_heads"]

# torch.export flattens outputs through pytrees; a dataclass must be registered to be one. The
# registration is global, so it is skipped if another module registered HeadOutputs first.
if HeadOutputs not in torch.utils._pytree.SUPPORTED_NODES:
    torch.export.register_dataclass(HeadOutputs, serialized_type_name="sam3edge.models.heads.outputs.HeadOutputs")


class TopKOutputs(NamedTuple):
    """The k best queries of N pairs, best first (k is static: pad nothing, threshold later).

    scores [N, k] = sigmoid(logit) x sigmoid(presence); boxes [N, k, 4] normalised xyxy;
    mask_logits [N, k, h, w]; presence [N, 1] (probability); indices [N, k] (query ids, int64).
    """

    scores: torch.Tensor
    boxes: torch.Tensor
    mask_logits: torch.Tensor
    presence: torch.Tensor
    indices: torch.Tensor


class _Decoded(NamedTuple):
    prompt: torch.Tensor  # [N, P, C]
    prompt_mask: torch.Tensor  # [N, P]
    prompt_bias: torch.Tensor  # [N, 1, 1, P]
    image_tokens: torch.Tensor  # [N, HW, C]
    queries: torch.Tensor  # [L, N, Q, C]
    boxes: torch.Tensor  # [L, N, Q, 4] cxcywh
    presence_logits: torch.Tensor  # [L, N, 1]


class Sam3Heads(nn.Module):
    """SAM3's heads: exemplar encoder, image-prompt fusion, DETR decoder, scoring and mask decoder."""

    def __init__(self, config: HeadsConfig | None = None):
        super().__init__()
        self.config = config or HeadsConfig()
        self.geometry_encoder = GeometryEncoder(self.config)
        self.detr_encoder = FusionEncoder(self.config)
        self.detr_decoder = DetrDecoder(self.config)
        self.mask_decoder = MaskDecoder(self.config)
        self.dot_product_scoring = DotProductScoring(self.config)

    @classmethod
    def from_sam3(cls, model, strict: bool = True) -> Sam3Heads:
        """The heads of a transformers ``Sam3Model`` (config and weights), in the model's train/eval mode."""
        from sam3edge.models.convert import load_sam3_heads

        heads = cls(HeadsConfig.from_sam3_config(model.config))
        load_sam3_heads(heads, model.state_dict(), strict=strict)
        ref = next(model.parameters())
        return heads.to(device=ref.device, dtype=ref.dtype).train(model.training)

    def _check(self, fpn_features, fpn_pos, text_features, text_mask, input_boxes, input_boxes_labels) -> None:
        # Shape checks only (static for a traced graph): a wrong input fails here, named, not deep in a matmul.
        d = self.config.hidden_size
        if len(fpn_features) != 3 or len(fpn_pos) != 3:
            raise ValueError(f"fpn_features and fpn_pos must hold 3 levels (fine to coarse), got "
                             f"{len(fpn_features)} and {len(fpn_pos)}")
        for i, (f, p) in enumerate(zip(fpn_features, fpn_pos)):
            if f.dim() != 4 or f.shape[1] != d or f.shape != p.shape:
                raise ValueError(f"fpn_features[{i}] {tuple(f.shape)} / fpn_pos[{i}] {tuple(p.shape)}: expected "
                                 f"equal shapes [N, {d}, H, W]")
        check_text(text_features, text_mask, d)
        if input_boxes is not None:
            if input_boxes.dim() != 3 or input_boxes.shape[-1] != 4:
                raise ValueError(f"input_boxes {tuple(input_boxes.shape)}: expected [N, K, 4] normalised cxcywh")
            if input_boxes_labels is not None and input_boxes_labels.shape != input_boxes.shape[:2]:
                raise ValueError(f"input_boxes_labels {tuple(input_boxes_labels.shape)} must be [N, K] = "
                                 f"{tuple(input_boxes.shape[:2])}")

    def exemplar_tokens(self, coarse: torch.Tensor, coarse_pos: torch.Tensor, boxes: torch.Tensor,
                        labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Exemplar boxes [N, K, 4] (normalised cxcywh; labels [N, K]: 1 positive, 0 negative, -10 padding, None =
        all positive) on the coarsest level / its position encoding [1 or N, C, H, W] -> prompt tokens
        [N, K + 1, C] and mask [N, K + 1] (SAM3's geometry encoder), appended to the text tokens."""
        return self.geometry_encoder.prompt_tokens(boxes, labels, coarse, coarse_pos)

    def _decode(self, fpn_features, fpn_pos, text_features, text_mask, input_boxes, input_boxes_labels) -> _Decoded:
        self._check(fpn_features, fpn_pos, text_features, text_mask, input_boxes, input_boxes_labels)
        prompt, prompt_mask = text_features, text_mask.bool()
        if input_boxes is not None and input_boxes.shape[1] > 0:
            geo, geo_mask = self.exemplar_tokens(fpn_features[-1], fpn_pos[-1], input_boxes, input_boxes_labels)
            prompt = torch.cat([prompt, geo], dim=1)
            prompt_mask = torch.cat([prompt_mask, geo_mask], dim=1)
        bias = padding_bias(prompt_mask, prompt.dtype)
        coarse, coarse_pos = fpn_features[-1], fpn_pos[-1]
        image_tokens, pos_tokens = self.detr_encoder(coarse, coarse_pos, prompt, bias)
        h, w = coarse.shape[-2:]
        queries, boxes, presence = self.detr_decoder(image_tokens, pos_tokens, h, w, prompt, bias)
        return _Decoded(prompt, prompt_mask, bias, image_tokens, queries, boxes, presence)

    def forward(self, fpn_features: list[torch.Tensor], fpn_pos: list[torch.Tensor], text_features: torch.Tensor,
                text_mask: torch.Tensor, input_boxes: torch.Tensor | None = None,
                input_boxes_labels: torch.Tensor | None = None) -> HeadOutputs:
        """Run the heads on N (image, prompt) pairs.

        fpn_features, fpn_pos: 3 levels [N, C, 4g, 4g], [N, C, 2g, 2g], [N, C, g, g] (SAM3's
        ``fpn_hidden_states[:-1]`` and ``fpn_position_encoding[:-1]``); text_features [N, L, C]
        (projected); text_mask [N, L] (True = token); input_boxes [N, K, 4] normalised cxcywh
        exemplars or None; input_boxes_labels [N, K] (1 positive, 0 negative, -10 padding; None =
        all positive). Returns :class:`HeadOutputs` with masks at 4g x 4g and every decoder layer.
        """
        d = self._decode(fpn_features, fpn_pos, text_features, text_mask, input_boxes, input_boxes_labels)
        logits = self.dot_product_scoring(d.queries, d.prompt, d.prompt_mask)
        boxes = cxcywh_to_xyxy(d.boxes)
        pixels = self.mask_decoder.pixel_embeddings(list(fpn_features), d.image_tokens, d.prompt, d.prompt_bias)
        return HeadOutputs(
            logits=logits[-1], boxes=boxes[-1], presence_logits=d.presence_logits[-1],
            mask_logits=self.mask_decoder.masks(d.queries[-1], pixels),
            semantic_logits=self.mask_decoder.semantic(pixels),
            aux_logits=logits, aux_boxes=boxes, aux_presence_logits=d.presence_logits,
            prompt_boxes=input_boxes, prompt_labels=input_boxes_labels,
        )

    def forward_topk(self, fpn_features: list[torch.Tensor], fpn_pos: list[torch.Tensor], text_features: torch.Tensor,
                     text_mask: torch.Tensor, input_boxes: torch.Tensor | None = None,
                     input_boxes_labels: torch.Tensor | None = None, k: int = 10) -> TopKOutputs:
        """Like :meth:`forward` (same inputs) but only the ``k`` best queries, and masks only for them.

        Queries are ranked by sigmoid(logit) x sigmoid(presence) of the last layer; their features
        are gathered *before* the mask embedding, so mask cost is k x h x w instead of Q x h x w.
        """
        q = self.config.num_queries
        if not 1 <= k <= q:
            raise ValueError(f"k={k} must be between 1 and num_queries={q}")
        d = self._decode(fpn_features, fpn_pos, text_features, text_mask, input_boxes, input_boxes_labels)
        scoring = self.dot_product_scoring
        logits = scoring.score(d.queries[-1], scoring.pooled_prompt(d.prompt, d.prompt_mask))  # [N, Q]
        presence = d.presence_logits[-1].sigmoid()  # [N, 1]
        pixels = self.mask_decoder.pixel_embeddings(list(fpn_features), d.image_tokens, d.prompt, d.prompt_bias)
        if fused_ops_enabled():
            # One op from scores to the k masks: the instance projection is folded into the k kept embeddings.
            proj = self.mask_decoder.instance_projection
            embed = self.mask_decoder.mask_embedder(d.queries[-1])
            scores, idx, masks = torch.ops.sam3edge.mask_topk(
                (logits.sigmoid() * presence).contiguous(), embed.contiguous(), pixels.contiguous(),
                proj.weight.flatten(1), proj.bias, k, pixels.shape[-2], pixels.shape[-1], 0)
            boxes = cxcywh_to_xyxy(d.boxes[-1].gather(1, idx[..., None].expand(-1, -1, 4)))
            return TopKOutputs(scores=scores, boxes=boxes, mask_logits=masks, presence=presence, indices=idx)
        scores, idx = (logits.sigmoid() * presence).topk(k, dim=1)
        queries = d.queries[-1].gather(1, idx[..., None].expand(-1, -1, d.queries.shape[-1]))
        boxes = cxcywh_to_xyxy(d.boxes[-1].gather(1, idx[..., None].expand(-1, -1, 4)))
        return TopKOutputs(scores=scores, boxes=boxes, mask_logits=self.mask_decoder.masks(queries, pixels),
                           presence=presence, indices=idx)


def build_heads(config: HeadsConfig) -> nn.Module:
    """The heads ``config.head_type`` names: :class:`Sam3Heads` ("sam3") or :class:`~.fast.FastHeads` ("fast")."""
    if config.head_type == "fast":
        from .fast import FastHeads

        return FastHeads(config)
    return Sam3Heads(config)
