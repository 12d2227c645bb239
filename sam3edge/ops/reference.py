"""The PyTorch definitions of the fused ops: what every implementation (CUDA, ONNX function
body, TensorRT plugin) must compute. They run anywhere and are what the custom ops run on CPU.

Shapes (C channels split into ``num_heads`` heads of d = C / num_heads along the last axis):

* :func:`prompt_attention` - q [N, Lq, C], k, v [N, Lk, C], key_bias [N, Lk] -> [N, Lq, C]
* :func:`box_attention` - q [N, Lq, C], k, v [N, H*W, C], boxes [N, Qb, 4] cxcywh -> [N, Lq, C]
* :func:`mask_topk` - scores [N, Q], embed [N, Q, C], pixels [N, C, h, w] ->
  (top_scores [N, k], indices [N, k] int64, masks [N, k, out_h, out_w])
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

MASK_MODES = {"logits": 0, "sigmoid": 1, "binary": 2}


def _heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    return x.unflatten(-1, (num_heads, x.shape[-1] // num_heads)).transpose(1, 2)


def _attend(q, k, v, bias, num_heads: int, scale: float) -> torch.Tensor:
    # Same order of operations as sam3edge.models.heads.attention.Attention (matmul, scale, add, softmax).
    scores = torch.matmul(_heads(q, num_heads), _heads(k, num_heads).transpose(-1, -2)) * scale + bias
    return torch.matmul(scores.softmax(dim=-1), _heads(v, num_heads)).transpose(1, 2).flatten(2)


def prompt_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_bias: torch.Tensor, num_heads: int,
                     scale: float) -> torch.Tensor:
    """softmax(scale * q k^T + key_bias) v per head; key_bias [N, Lk] is additive (padding = most negative finite)."""
    return _attend(q, k, v, key_bias[:, None, None, :], num_heads, scale)


def log_distance(d: torch.Tensor) -> torch.Tensor:
    """sign(8d) log2(1 + |8d|) / log2(8): SAM3's compression of box-to-cell distances."""
    d = d * 8
    return torch.sign(d) * torch.log2(d.abs() + 1.0) / math.log2(8)


def _mlp(x, w1, b1, w2, b2):
    return F.linear(torch.relu(F.linear(x, w1, b1)), w2, b2)


def box_rpb(boxes: torch.Tensor, height: int, width: int, x_mlp: tuple, y_mlp: tuple) -> torch.Tensor:
    """The BoxRPB bias [N, heads, Qb, H*W] of boxes [N, Qb, 4] (cxcywh); x_mlp / y_mlp = (w1, b1, w2, b2).

    Cell (r, c) sits at (c / W, r / H) (cell corners, as SAM3 was trained); each axis embeds the
    log-compressed distances to the box's two edges with its MLP; the bias is the sum of both axes.
    """
    cx, cy, w, h = boxes.unbind(-1)
    xyxy = torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)
    rows = torch.arange(height, device=boxes.device, dtype=boxes.dtype) / height
    cols = torch.arange(width, device=boxes.device, dtype=boxes.dtype) / width
    by = _mlp(log_distance(rows[:, None] - xyxy[..., None, 1::2]), *y_mlp)  # [N, Qb, H, heads]
    bx = _mlp(log_distance(cols[:, None] - xyxy[..., None, 0::2]), *x_mlp)  # [N, Qb, W, heads]
    by, bx = by.permute(0, 3, 1, 2), bx.permute(0, 3, 1, 2)  # heads first: the sum below is laid out as returned
    return (by[..., :, None] + bx[..., None, :]).flatten(-2)


def box_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, boxes: torch.Tensor, height: int, width: int,
                  x_w1, x_b1, x_w2, x_b2, y_w1, y_b1, y_w2, y_b2, num_heads: int, scale: float) -> torch.Tensor:
    """Attention of q to an H x W grid of keys with the BoxRPB bias of ``boxes``.

    The first Lq - Qb query rows have no box (SAM3's presence token rides as query 0): zero bias.
    """
    bias = box_rpb(boxes, height, width, (x_w1, x_b1, x_w2, x_b2), (y_w1, y_b1, y_w2, y_b2))
    bias = F.pad(bias, (0, 0, q.shape[1] - boxes.shape[1], 0))
    return _attend(q, k, v, bias, num_heads, scale)


def mask_topk(scores: torch.Tensor, embed: torch.Tensor, pixels: torch.Tensor, proj_weight: torch.Tensor,
              proj_bias: torch.Tensor, k: int, out_h: int, out_w: int, mode: int):
    """The k best queries' masks, and only theirs.

    indices = top-k of scores (descending); each kept embedding e gives logits
    e . (W p + b) = (W^T e) . p + e . b at every pixel p: the 1x1 instance projection is folded
    into the k embeddings instead of being applied to all C x h x w pixel features. Logits are
    resized bilinearly (align_corners=False) to out_h x out_w if that differs from h x w, then
    returned as logits (mode 0), probabilities (1) or uint8 0/1 (2, probability > 0.5).
    """
    n, c = embed.shape[0], embed.shape[2]
    top, idx = scores.topk(k, dim=1)
    if k == 0:
        dtype = torch.uint8 if mode == MASK_MODES["binary"] else pixels.dtype
        return top, idx, pixels.new_empty((n, 0, out_h, out_w), dtype=dtype)
    e = embed.gather(1, idx[..., None].expand(-1, -1, c))  # [N, k, C]
    folded = torch.matmul(e, proj_weight)  # [N, k, C]: sum_j e_j W[j, c]
    offset = torch.matmul(e, proj_bias)  # [N, k]
    logits = torch.matmul(folded, pixels.flatten(2)).unflatten(-1, pixels.shape[-2:]) + offset[..., None, None]
    if (out_h, out_w) != tuple(pixels.shape[-2:]):
        logits = F.interpolate(logits, size=(out_h, out_w), mode="bilinear", align_corners=False)
    if mode == MASK_MODES["sigmoid"]:
        return top, idx, logits.sigmoid()
    if mode == MASK_MODES["binary"]:
        return top, idx, (logits > 0).to(torch.uint8)
    return top, idx, logits
