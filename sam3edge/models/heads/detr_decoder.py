"""SAM3's DETR decoder: object queries + a presence token, box relative-position bias (BoxRPB)
and iterative box refinement, with the outputs of every layer kept.

The presence token rides along as query 0: it attends like the others but has no box, so its
position encoding and its BoxRPB row are zero. Its head predicts whether the concept is in the
image at all; each query's own logit then only has to say "which one".
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from sam3edge.models.heads_config import HeadsConfig
from sam3edge.ops.mode import fused_ops_enabled

from .attention import Attention
from .layers import MLP, FeedForward, cxcywh_to_xyxy, inverse_sigmoid, sine_box_embedding


class BoxRPB(NamedTuple):
    """What the BoxRPB bias is computed from: boxes [N, Q, 4] cxcywh, the grid, the per-axis MLPs."""

    boxes: torch.Tensor
    height: int
    width: int
    embed_x: nn.Module
    embed_y: nn.Module

    def attend(self, attn: Attention, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """``attn(query, key, value, bias)`` with the bias of these boxes, via ``sam3edge::box_attention``."""
        mx, my = self.embed_x, self.embed_y
        k, v = attn.k_proj(key), attn.v_proj(value)
        if k.shape[0] != query.shape[0]:  # image tokens shared by every prompt: projected once, then broadcast
            k, v = (t.expand(query.shape[0], -1, -1).contiguous() for t in (k, v))
        out = torch.ops.sam3edge.box_attention(
            attn.q_proj(query), k, v, self.boxes.contiguous(), self.height,
            self.width, mx.layer1.weight, mx.layer1.bias, mx.layer2.weight, mx.layer2.bias,
            my.layer1.weight, my.layer1.bias, my.layer2.weight, my.layer2.bias, attn.num_heads, attn.scaling)
        return attn.o_proj(out)


class DetrDecoderLayer(nn.Module):
    """Post-norm: query self-attention, cross-attention to prompt tokens, to image tokens (with BoxRPB), FFN."""

    def __init__(self, cfg: HeadsConfig):
        super().__init__()
        d, heads = cfg.hidden_size, cfg.decoder_heads
        self.self_attn = Attention(d, heads)
        self.self_attn_dropout = nn.Dropout(cfg.dropout)
        self.self_attn_layer_norm = nn.LayerNorm(d)
        self.text_cross_attn = Attention(d, heads)
        self.text_cross_attn_dropout = nn.Dropout(cfg.dropout)
        self.text_cross_attn_layer_norm = nn.LayerNorm(d)
        self.vision_cross_attn = Attention(d, heads)
        self.vision_cross_attn_dropout = nn.Dropout(cfg.dropout)
        self.vision_cross_attn_layer_norm = nn.LayerNorm(d)
        self.mlp = FeedForward(d, cfg.decoder_ffn_size, cfg.activation, cfg.ffn_dropout)
        self.mlp_layer_norm = nn.LayerNorm(d)
        self.mlp_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, query_pos: torch.Tensor, prompt: torch.Tensor, prompt_bias: torch.Tensor,
                image: torch.Tensor, image_key: torch.Tensor, box_bias: torch.Tensor | BoxRPB) -> torch.Tensor:
        """x, query_pos [N, 1+Q, C]; prompt [N, P, C], prompt_bias [N, 1, 1, P];
        image [N, HW, C] (values), image_key [N, HW, C] (image + position); box_bias [N, heads, 1+Q, HW],
        or the boxes it is made of (:class:`BoxRPB`) for the fused op, which builds it inside the kernel."""
        q = x + query_pos
        x = self.self_attn_layer_norm(x + self.self_attn_dropout(self.self_attn(q, q, x)))
        attn = self.text_cross_attn(x + query_pos, prompt, prompt, prompt_bias)
        x = self.text_cross_attn_layer_norm(x + self.text_cross_attn_dropout(attn))
        if isinstance(box_bias, BoxRPB):
            attn = box_bias.attend(self.vision_cross_attn, x + query_pos, image_key, image)
        else:
            attn = self.vision_cross_attn(x + query_pos, image_key, image, box_bias)
        x = self.vision_cross_attn_layer_norm(x + self.vision_cross_attn_dropout(attn))
        return self.mlp_layer_norm(x + self.mlp_dropout(self.mlp(x)))


class DetrDecoder(nn.Module):
    """Queries -> per-layer query features, boxes and presence logits."""

    def __init__(self, cfg: HeadsConfig):
        super().__init__()
        d = cfg.hidden_size
        self.hidden_size = d
        self.presence_clamp = cfg.presence_clamp
        self.layers = nn.ModuleList([DetrDecoderLayer(cfg) for _ in range(cfg.decoder_layers)])
        self.output_layer_norm = nn.LayerNorm(d)
        self.box_head = MLP(d, d, 4, num_layers=3)
        self.query_embed = nn.Embedding(cfg.num_queries, d)
        self.reference_points = nn.Embedding(cfg.num_queries, 4)
        self.presence_token = nn.Embedding(1, d)
        self.presence_head = MLP(d, d, 1, num_layers=3)
        self.presence_layer_norm = nn.LayerNorm(d)
        self.ref_point_head = MLP(2 * d, d, d, num_layers=2)
        self.box_rpb_embed_x = MLP(2, d, cfg.decoder_heads, num_layers=2)
        self.box_rpb_embed_y = MLP(2, d, cfg.decoder_heads, num_layers=2)

    def box_bias(self, boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """BoxRPB: attention bias [N, heads, Q, H*W] of image cells relative to boxes [N, Q, 4] (cxcywh, in [0, 1]).

        For every row (column) of the grid, the signed distances to the box's top and bottom (left
        and right) edges are log-compressed and embedded by a small MLP per axis; the 2-D bias is
        the sum of the row and column terms. Cell coordinates are i / H (cell corners, not
        centres), as SAM3 was trained.
        """
        xyxy = cxcywh_to_xyxy(boxes)
        rows = torch.arange(height, device=boxes.device, dtype=boxes.dtype) / height
        cols = torch.arange(width, device=boxes.device, dtype=boxes.dtype) / width
        dy = rows[:, None] - xyxy[..., None, 1::2]  # [N, Q, H, 2]: to y1, y2
        dx = cols[:, None] - xyxy[..., None, 0::2]  # [N, Q, W, 2]: to x1, x2
        by = self.box_rpb_embed_y(_log_distance(dy))  # [N, Q, H, heads]
        bx = self.box_rpb_embed_x(_log_distance(dx))  # [N, Q, W, heads]
        by, bx = by.permute(0, 3, 1, 2), bx.permute(0, 3, 1, 2)  # [N, heads, Q, H or W]
        return (by[..., :, None] + bx[..., None, :]).flatten(-2)  # [N, heads, Q, H*W], no copy to permute

    def forward(self, image: torch.Tensor, image_pos: torch.Tensor, height: int, width: int, prompt: torch.Tensor,
                prompt_bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """image, image_pos [N, HW, C] (fused tokens of an H x W grid; or [1, HW, C] shared by all N prompts, whose
        key / value projections then run once); prompt [N, P, C], prompt_bias [N, 1, 1, P].

        Returns per layer: query features [L, N, Q, C] (after the output norm; what scoring and
        masks read), refined boxes [L, N, Q, 4] (cxcywh in [0, 1]) and presence logits [L, N, 1].
        """
        n = prompt.shape[0]
        queries = self.query_embed.weight[None].expand(n, -1, -1)
        presence = self.presence_token.weight[None].expand(n, -1, -1)
        x = torch.cat([presence, queries], dim=1)
        boxes = self.reference_points.weight.sigmoid()[None].expand(n, -1, -1)
        image_key = image + image_pos
        features, all_boxes, all_presence = [], [], []
        for layer in self.layers:
            query_pos = self.ref_point_head(sine_box_embedding(boxes, self.hidden_size // 2))
            query_pos = F.pad(query_pos, (0, 0, 1, 0))  # presence token: no position
            if fused_ops_enabled():
                box_bias = BoxRPB(boxes, height, width, self.box_rpb_embed_x, self.box_rpb_embed_y)
            else:
                box_bias = F.pad(self.box_bias(boxes, height, width), (0, 0, 1, 0))  # ... and no BoxRPB
            x = layer(x, query_pos, prompt, prompt_bias, image, image_key, box_bias)
            q = self.output_layer_norm(x[:, 1:])
            refined = (inverse_sigmoid(boxes) + self.box_head(q)).sigmoid()
            # The next layer starts from this layer's boxes, without gradient through them (as SAM3 trains).
            boxes = refined.detach()
            p = self.presence_head(self.presence_layer_norm(x[:, :1])).squeeze(-1)
            features.append(q)
            all_boxes.append(refined)
            all_presence.append(p.clamp(-self.presence_clamp, self.presence_clamp))
        return torch.stack(features), torch.stack(all_boxes), torch.stack(all_presence)


def _log_distance(d: torch.Tensor) -> torch.Tensor:
    """sign(8d) log2(1 + |8d|) / log2(8): fine resolution near the box edges, compressed far away."""
    d = d * 8
    return torch.sign(d) * torch.log2(d.abs() + 1.0) / math.log2(8)
