"""The SAM3 teacher: a transformers ``Sam3Model`` behind one call.

``Sam3Teacher(images, phrases)`` returns, for every image x phrase, what the heads consume
(multi-level image features, text embeddings) and what they produce (scores, boxes in pixels of
the original image, mask logits, presence). The vision trunk runs once per image however many
phrases are asked. Pre- and post-processing (resize, normalise, un-resize) are ours, with no
torchvision on this path.

The same loader reads the bundled toy teacher, a local ``facebook/sam3`` download, or - where a
hub is reachable - a hub id.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from sam3edge.data.images import resize_batch
from sam3edge.models.outputs import ConceptOutputs
from sam3edge.models.sam3_heads import run_heads, select_images
from sam3edge.models.sam3_load import load_sam3_model, load_tokenizer

# The teacher's outputs are the shared concept-segmenter outputs; the old name stays for callers.
TeacherOutput = ConceptOutputs


SAM3_MEAN = SAM3_STD = (0.5, 0.5, 0.5)  # SAM3's processor: pixels scaled to [-1, 1]


def sam3_pixel_values(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 RGB [B, H, W, 3] -> float pixel_values [B, 3, H, W] in SAM3's normalisation."""
    x = torch.as_tensor(images).permute(0, 3, 1, 2).float().div(255.0)
    mean = torch.tensor(SAM3_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(SAM3_STD).view(1, 3, 1, 1)
    return (x - mean) / std


class Sam3Teacher(torch.nn.Module):
    """A transformers ``Sam3Model`` with our pre/post-processing and per-image feature reuse."""

    def __init__(self, model, tokenizer, pair_chunk: int = 16):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.pair_chunk = pair_chunk

    @classmethod
    def from_pretrained(cls, source: str | Path, device: str = "cpu", dtype: torch.dtype | None = None,
                        attn_implementation: str | None = None) -> Sam3Teacher:
        """Load from a ``save_pretrained`` directory (the toy teacher, a local ``facebook/sam3``) or a hub id."""
        model = load_sam3_model(source, dtype=dtype, attn_implementation=attn_implementation)
        return cls(model.to(device).eval(), load_tokenizer(source))

    @property
    def config(self):
        return self.model.config

    @property
    def image_size(self) -> int:
        return int(self.model.config.vision_config.backbone_config.image_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ---- pre-processing -------------------------------------------------------------------------
    def preprocess(self, images) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """Images (paths are not accepted here: pass arrays or PIL) -> pixel_values [B, 3, S, S], sizes (H, W).

        Resize to S x S (bilinear, aspect not kept - as SAM3's processor does), scale to [-1, 1].
        """
        batch, sizes = resize_batch(images, self.image_size)
        return sam3_pixel_values(batch).to(self.device, self._dtype), sizes

    @property
    def _dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    # ---- encoders -------------------------------------------------------------------------------
    def encode_images(self, pixel_values: torch.Tensor):
        """Vision trunk + FPN: ``Sam3VisionEncoderOutput`` with ``fpn_hidden_states`` per level."""
        return self.model.get_vision_features(pixel_values=pixel_values)

    def tokenize(self, phrases: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """CLIP token ids and attention mask [P, 32] of ``phrases`` (validated: no empty phrase)."""
        ids, mask = self.tokenizer.encode(list(phrases))
        return torch.from_numpy(ids).to(self.device), torch.from_numpy(mask).to(self.device)

    def encode_text(self, phrases: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Projected text features [P, L, D] and their mask [P, L] (True = token)."""
        ids, mask = self.tokenize(phrases)
        feats = self.model.get_text_features(input_ids=ids, attention_mask=mask).pooler_output
        return feats, mask.bool()

    # ---- the one call ---------------------------------------------------------------------------
    @torch.no_grad()
    def forward(self, images, phrases: list[str], input_boxes: torch.Tensor | None = None,
                input_boxes_labels: torch.Tensor | None = None) -> ConceptOutputs:
        """Segment every phrase in every image.

        images: a list of B images (uint8 HxWx3 arrays or PIL), or pixel_values [B, 3, S, S] already
        preprocessed (then sizes are S x S). phrases: P noun phrases. input_boxes [B, K, 4] optional
        exemplar boxes (normalised cxcywh, per image, applied with every phrase) with labels [B, K].
        """
        if isinstance(phrases, str):
            phrases = [phrases]
        if torch.is_tensor(images) and images.ndim == 4 and images.is_floating_point():
            pixel_values = images.to(self.device, self._dtype)
            sizes = [(images.shape[2], images.shape[3])] * len(images)
        else:
            pixel_values, sizes = self.preprocess(images)
        vision = self.encode_images(pixel_values)
        text, text_mask = self.encode_text(phrases)
        b, p = pixel_values.shape[0], len(phrases)
        img_idx = torch.arange(b, device=self.device).repeat_interleave(p)
        txt_idx = torch.arange(p, device=self.device).repeat(b)
        outs = []
        for s in range(0, b * p, self.pair_chunk):
            ii, tt = img_idx[s:s + self.pair_chunk], txt_idx[s:s + self.pair_chunk]
            boxes = input_boxes[ii].to(self.device, self._dtype) if input_boxes is not None else None
            labels = input_boxes_labels[ii].to(self.device) if input_boxes_labels is not None else None
            outs.append(run_heads(self.model, select_images(vision, ii), text[tt], text_mask[tt], boxes, labels))
        return ConceptOutputs.from_pairs(outs, vision.fpn_hidden_states[:-1], vision.fpn_position_encoding[:-1],
                                         text, text_mask, sizes, list(phrases))


def describe(teacher: Sam3Teacher) -> dict:
    """Size and shape facts of a teacher, for logs and manifests."""
    c = teacher.config
    n = sum(p.numel() for p in teacher.model.parameters())
    return {
        "parameters": n, "image_size": teacher.image_size,
        "num_queries": c.detr_decoder_config.num_queries, "hidden_size": c.detr_decoder_config.hidden_size,
        "text_hidden_size": c.text_config.hidden_size,
        "vision_hidden_size": c.vision_config.backbone_config.hidden_size,
        "config": json.loads(c.to_json_string()),
    }
