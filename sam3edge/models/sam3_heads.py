"""Running a transformers ``Sam3Model``'s heads on (image, phrase) pairs, with every decoder layer.

``Sam3Model.forward`` recomputes the vision trunk for every row of its batch and returns only
the last decoder layer. Concept segmentation asks many phrases of one image, and set-prediction
training needs every layer (auxiliary losses), so this module runs the trunk once per image and
the heads once per pair, following ``Sam3Model.forward`` operation for operation (a test checks
that both agree to 1e-5).
"""

from __future__ import annotations

import torch
from transformers.models.sam3.modeling_sam3 import Sam3VisionEncoderOutput, inverse_sigmoid

from sam3edge.models.heads.outputs import HeadOutputs


def _cxcywh_to_xyxy(b: torch.Tensor) -> torch.Tensor:
    cx, cy, w, h = b.unbind(-1)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


def select_images(vision: Sam3VisionEncoderOutput, index: torch.Tensor) -> Sam3VisionEncoderOutput:
    """The vision outputs of images ``index`` (a pair's image), without recomputing the trunk."""
    return Sam3VisionEncoderOutput(
        last_hidden_state=vision.last_hidden_state[index] if vision.last_hidden_state is not None else None,
        fpn_hidden_states=tuple(f[index] for f in vision.fpn_hidden_states),
        fpn_position_encoding=tuple(p[index] for p in vision.fpn_position_encoding),
    )


def run_heads(model, vision: Sam3VisionEncoderOutput, text_features: torch.Tensor, text_mask: torch.Tensor,
              input_boxes: torch.Tensor | None = None, input_boxes_labels: torch.Tensor | None = None
              ) -> HeadOutputs:
    """Run ``model``'s geometry encoder, DETR encoder/decoder, scoring and mask decoder on N pairs.

    vision: outputs for the N pairs' images (use :func:`select_images`); text_features [N, L, D]
    (projected, ``get_text_features(...).pooler_output``); text_mask [N, L] (True = token);
    input_boxes [N, K, 4] normalised cxcywh exemplar boxes, labels [N, K] (1 positive, 0 negative,
    -10 padding) or None.
    """
    fpn = vision.fpn_hidden_states[:-1]
    fpn_pos = vision.fpn_position_encoding[:-1]
    text_mask = text_mask.bool()
    prompt, prompt_mask = text_features, text_mask
    if input_boxes is not None and input_boxes.numel() > 0:
        n, k = input_boxes.shape[:2]
        labels = input_boxes_labels if input_boxes_labels is not None else torch.ones(
            n, k, dtype=torch.long, device=input_boxes.device)
        geo = model.geometry_encoder(box_embeddings=input_boxes, box_mask=labels != -10,
                                     box_labels=torch.where(labels == -10, 0, labels),
                                     img_feats=fpn, img_pos_embeds=fpn_pos)
        # A row of padding only (a pair without boxes in a batch with some) is text only: its CLS token too is
        # masked (SAM3 would keep it), as in the exported exemplar encoder (sam3edge.export.graphs).
        geo_mask = geo.attention_mask.bool() & (labels != -10).any(dim=1, keepdim=True)
        prompt = torch.cat([text_features, geo.last_hidden_state], dim=1)
        prompt_mask = torch.cat([text_mask, geo_mask], dim=1)

    enc = model.detr_encoder(vision_features=[fpn[-1]], text_features=prompt,
                             vision_pos_embeds=[fpn_pos[-1]], text_mask=prompt_mask)
    dec = model.detr_decoder(vision_features=enc.last_hidden_state, text_features=enc.text_features,
                             vision_pos_encoding=enc.pos_embeds_flattened, text_mask=prompt_mask,
                             spatial_shapes=enc.spatial_shapes)
    offsets = model.detr_decoder.box_head(dec.intermediate_hidden_states)
    aux_boxes = _cxcywh_to_xyxy((inverse_sigmoid(dec.reference_boxes) + offsets).sigmoid())
    aux_logits = model.dot_product_scoring(decoder_hidden_states=dec.intermediate_hidden_states,
                                           text_features=enc.text_features, text_mask=prompt_mask).squeeze(-1)
    masks = model.mask_decoder(decoder_queries=dec.intermediate_hidden_states[-1], backbone_features=list(fpn),
                               encoder_hidden_states=enc.last_hidden_state, prompt_features=prompt,
                               prompt_mask=prompt_mask)
    return HeadOutputs(
        logits=aux_logits[-1], boxes=aux_boxes[-1], presence_logits=dec.presence_logits[-1],
        mask_logits=masks.pred_masks, semantic_logits=masks.semantic_seg,
        aux_logits=aux_logits, aux_boxes=aux_boxes, aux_presence_logits=dec.presence_logits,
        prompt_boxes=input_boxes, prompt_labels=input_boxes_labels,
    )


class Sam3PairModel(torch.nn.Module):
    """Training view of a ``Sam3Model``: a :class:`~sam3edge.distill.targets.PairBatch` in, :class:`HeadOutputs` out.

    The trunk runs once per image of the batch; the text encoder once per pair; heads once per pair.
    """

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, batch) -> HeadOutputs:
        vision = self.model.get_vision_features(pixel_values=batch.pixel_values)
        text = self.model.get_text_features(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
        return run_heads(self.model, select_images(vision, batch.pair_image), text.pooler_output,
                         batch.attention_mask, getattr(batch, "input_boxes", None),
                         getattr(batch, "input_boxes_labels", None))
