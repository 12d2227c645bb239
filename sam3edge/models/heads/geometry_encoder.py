"""Exemplar-box prompts -> prompt tokens (SAM3's geometry encoder).

Each box becomes one token: a linear projection of its (cx, cy, w, h), plus the ROI-aligned
image features inside it (through a roi_size x roi_size conv), plus a sine encoding of its centre
and raw size, plus a positive/negative label embedding. A learned CLS token is appended, then a
few pre-norm layers let the tokens attend to each other and to the coarsest image features.

SAM3 (transformers) accepts boxes only - no points - and so does this module.
"""

from __future__ import annotations

import torch
from torch import nn

from sam3edge.models.heads_config import HeadsConfig
from sam3edge.runtime.exemplars import PADDING_LABEL

from .attention import Attention, padding_bias
from .layers import FeedForward, cxcywh_to_xyxy, sine_features
from .roi_align import roi_align


class GeometryEncoderLayer(nn.Module):
    """Pre-norm: self-attention over prompt tokens, cross-attention to image tokens, FFN."""

    def __init__(self, cfg: HeadsConfig):
        super().__init__()
        d = cfg.hidden_size
        self.layer_norm1 = nn.LayerNorm(d)
        self.self_attn = Attention(d, cfg.geometry_heads)
        self.dropout = nn.Dropout(cfg.dropout)
        self.cross_attn = Attention(d, cfg.geometry_heads)
        self.layer_norm2 = nn.LayerNorm(d)
        self.mlp = FeedForward(d, cfg.geometry_ffn_size, cfg.activation, cfg.ffn_dropout)
        self.layer_norm3 = nn.LayerNorm(d)

    def forward(self, prompt: torch.Tensor, prompt_bias: torch.Tensor, image: torch.Tensor,
                image_pos: torch.Tensor) -> torch.Tensor:
        """prompt [N, P, C], prompt_bias [N, 1, 1, P], image and image_pos [N, HW, C] -> [N, P, C]."""
        x = self.layer_norm1(prompt)
        prompt = prompt + self.dropout(self.self_attn(x, x, x, prompt_bias))
        x = self.layer_norm2(prompt)
        # Image tokens are never padded: no bias.
        prompt = prompt + self.dropout(self.cross_attn(x, image + image_pos, image))
        return prompt + self.dropout(self.mlp(self.layer_norm3(prompt)))


class GeometryEncoder(nn.Module):
    """Boxes [N, K, 4] + labels -> prompt tokens [N, K + 1, C] and their validity mask [N, K + 1]."""

    def __init__(self, cfg: HeadsConfig):
        super().__init__()
        d = cfg.hidden_size
        self.hidden_size = d
        self.roi_size = cfg.roi_size
        self.label_embed = nn.Embedding(2, d)
        self.cls_embed = nn.Embedding(1, d)
        self.boxes_direct_project = nn.Linear(4, d)
        self.boxes_pool_project = nn.Conv2d(d, d, cfg.roi_size)
        self.boxes_pos_enc_project = nn.Linear(d + 2, d)
        self.vision_layer_norm = nn.LayerNorm(d)
        self.final_proj = nn.Linear(d, d)
        self.prompt_layer_norm = nn.LayerNorm(d)
        self.layers = nn.ModuleList([GeometryEncoderLayer(cfg) for _ in range(cfg.geometry_layers)])
        self.output_layer_norm = nn.LayerNorm(d)

    def _box_tokens(self, boxes: torch.Tensor, labels: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """boxes [N, K, 4] cxcywh in [0, 1], labels [N, K] in {0, 1}, features [N, C, H, W] -> [N, K, C]."""
        n, k = boxes.shape[:2]
        h, w = features.shape[-2:]
        tokens = self.boxes_direct_project(boxes)
        scale = torch.tensor([w, h, w, h], dtype=boxes.dtype, device=boxes.device)
        pooled = roi_align(features, cxcywh_to_xyxy(boxes) * scale, self.roi_size)  # [N, K, C, s, s]
        pooled = self.boxes_pool_project(pooled.flatten(0, 1))  # [N*K, C, 1, 1]
        tokens = tokens + pooled.reshape(n, k, self.hidden_size)
        cx, cy, bw, bh = boxes.unbind(-1)
        half = self.hidden_size // 2
        # SAM3 encodes the centre with sines but appends height and width raw, in (y, x, h, w) order.
        pos = torch.cat([sine_features(cy, half), sine_features(cx, half), bh[..., None], bw[..., None]], dim=-1)
        tokens = tokens + self.boxes_pos_enc_project(pos)
        return tokens + self.label_embed(labels)

    def _append_cls(self, tokens: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Put the CLS token right after the valid boxes, as transformers' ``concat_padded_sequences``.

        The CLS goes to position ``mask.sum()`` (overwriting whatever padded box sat there) and the
        first ``mask.sum() + 1`` positions become valid. This assumes padding at the end; with a
        padded box *before* a real one, SAM3 overwrites the real box and keeps the padded one, and
        we reproduce that too, for parity. Written with ``where`` instead of a scatter.
        """
        n, k, d = tokens.shape
        num_valid = mask.sum(dim=-1, keepdim=True)  # [N, 1]
        positions = torch.arange(k + 1, device=tokens.device)[None, :]
        is_cls = positions == num_valid  # [N, K + 1]
        tokens = torch.cat([tokens, tokens.new_zeros(n, 1, d)], dim=1)
        tokens = torch.where(is_cls[..., None], self.cls_embed.weight[None], tokens)
        return tokens, positions <= num_valid

    def prompt_tokens(self, boxes: torch.Tensor, labels: torch.Tensor | None, image: torch.Tensor,
                      image_pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`forward` as the heads use it: ``labels`` None = all positive; one frame's ``image`` / ``image_pos``
        [1 or N, C, H, W] serve all N rows; a row of padding only comes out all masked, CLS too (SAM3 would keep
        its CLS token valid), so a prompt without boxes among others with some stays text only."""
        n = boxes.shape[0]
        if labels is None:
            labels = torch.ones(boxes.shape[:2], dtype=torch.long, device=boxes.device)
        tokens, mask = self(boxes, labels, image.expand(n, -1, -1, -1), image_pos.expand(n, -1, -1, -1))
        return tokens, mask & (labels != PADDING_LABEL).any(dim=1, keepdim=True)

    def forward(self, boxes: torch.Tensor, labels: torch.Tensor, image: torch.Tensor,
                image_pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode exemplar boxes.

        boxes [N, K, 4] normalised cxcywh; labels [N, K] (1 positive, 0 negative, -10 padding);
        image, image_pos [N, C, H, W] (the coarsest FPN level and its position encoding).
        Returns tokens [N, K + 1, C] and mask [N, K + 1] (True = valid).
        """
        mask = labels != -10
        labels = torch.where(mask, labels, 0).long()
        # ROI pooling reads layer-normalised features; attention reads the raw ones.
        normed = self.vision_layer_norm(image.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        tokens, mask = self._append_cls(self._box_tokens(boxes, labels, normed), mask)
        tokens = self.prompt_layer_norm(self.final_proj(tokens))
        bias = padding_bias(mask, tokens.dtype)
        image_tokens = image.flatten(2).transpose(1, 2)
        pos_tokens = image_pos.flatten(2).transpose(1, 2)
        for layer in self.layers:
            tokens = layer(tokens, bias, image_tokens, pos_tokens)
        return self.output_layer_norm(tokens), mask
