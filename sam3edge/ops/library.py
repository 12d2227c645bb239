"""The fused ops as ``torch.library`` custom ops: ``torch.ops.sam3edge.{prompt_attention, box_attention, mask_topk}``.

One node per op for ``torch.export`` and the ONNX exporter (the fake kernels give shapes and
dtypes without running anything); the CPU implementation is the PyTorch reference; on CUDA the
kernels of ``csrc/`` run, built on first use (:mod:`sam3edge.ops.build`). Every implementation
checks its inputs with :mod:`sam3edge.ops.checks` first.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import reference
from .checks import check_box_attention, check_mask_topk, check_prompt_attention


def _cuda():
    from .build import load_extension

    return load_extension()


# --- prompt_attention ------------------------------------------------------------------------------------------

@torch.library.custom_op("sam3edge::prompt_attention", mutates_args=())
def prompt_attention(q: Tensor, k: Tensor, v: Tensor, key_bias: Tensor, num_heads: int, scale: float) -> Tensor:
    """Attention of q [N, Lq, C] to a short padded prompt k, v [N, Lk, C] with key_bias [N, Lk] -> [N, Lq, C]."""
    check_prompt_attention(q, k, v, key_bias, num_heads, scale)
    return reference.prompt_attention(q, k, v, key_bias, num_heads, scale)


@prompt_attention.register_fake
def _(q, k, v, key_bias, num_heads, scale):
    check_prompt_attention(q, k, v, key_bias, num_heads, scale)
    return torch.empty_like(q)


@prompt_attention.register_kernel("cuda")
def _(q, k, v, key_bias, num_heads, scale):
    check_prompt_attention(q, k, v, key_bias, num_heads, scale)
    return _cuda().prompt_attention(q, k, v, key_bias, num_heads, scale)


# --- box_attention ---------------------------------------------------------------------------------------------

@torch.library.custom_op("sam3edge::box_attention", mutates_args=())
def box_attention(q: Tensor, k: Tensor, v: Tensor, boxes: Tensor, height: int, width: int,
                  x_w1: Tensor, x_b1: Tensor, x_w2: Tensor, x_b2: Tensor,
                  y_w1: Tensor, y_b1: Tensor, y_w2: Tensor, y_b2: Tensor, num_heads: int, scale: float) -> Tensor:
    """Decoder cross-attention of q [N, Lq, C] to an H x W grid k, v [N, H*W, C] with BoxRPB of boxes [N, Qb, 4]."""
    check_box_attention(q, k, v, boxes, height, width, (x_w1, x_b1, x_w2, x_b2), (y_w1, y_b1, y_w2, y_b2),
                        num_heads, scale)
    return reference.box_attention(q, k, v, boxes, height, width, x_w1, x_b1, x_w2, x_b2, y_w1, y_b1, y_w2, y_b2,
                                   num_heads, scale)


@box_attention.register_fake
def _(q, k, v, boxes, height, width, x_w1, x_b1, x_w2, x_b2, y_w1, y_b1, y_w2, y_b2, num_heads, scale):
    check_box_attention(q, k, v, boxes, height, width, (x_w1, x_b1, x_w2, x_b2), (y_w1, y_b1, y_w2, y_b2),
                        num_heads, scale)
    return torch.empty_like(q)


@box_attention.register_kernel("cuda")
def _(q, k, v, boxes, height, width, x_w1, x_b1, x_w2, x_b2, y_w1, y_b1, y_w2, y_b2, num_heads, scale):
    check_box_attention(q, k, v, boxes, height, width, (x_w1, x_b1, x_w2, x_b2), (y_w1, y_b1, y_w2, y_b2),
                        num_heads, scale)
    return _cuda().box_attention(q, k, v, boxes, height, width, x_w1, x_b1, x_w2, x_b2, y_w1, y_b1, y_w2, y_b2,
                                 num_heads, scale)


# --- mask_topk -------------------------------------------------------------------------------------------------

@torch.library.custom_op("sam3edge::mask_topk", mutates_args=())
def mask_topk(scores: Tensor, embed: Tensor, pixels: Tensor, proj_weight: Tensor, proj_bias: Tensor, k: int,
              out_h: int, out_w: int, mode: int) -> tuple[Tensor, Tensor, Tensor]:
    """Top-k of scores [N, Q] and only those k masks [N, k, out_h, out_w] from embed [N, Q, C] x pixels [N, C, h, w]."""
    check_mask_topk(scores, embed, pixels, proj_weight, proj_bias, k, out_h, out_w, mode)
    top, idx, masks = reference.mask_topk(scores, embed, pixels, proj_weight, proj_bias, k, out_h, out_w, mode)
    return top.contiguous(), idx.contiguous(), masks.contiguous()


@mask_topk.register_fake
def _(scores, embed, pixels, proj_weight, proj_bias, k, out_h, out_w, mode):
    check_mask_topk(scores, embed, pixels, proj_weight, proj_bias, k, out_h, out_w, mode)
    n = scores.shape[0]
    dtype = torch.uint8 if mode == reference.MASK_MODES["binary"] else pixels.dtype
    return (scores.new_empty((n, k)), scores.new_empty((n, k), dtype=torch.int64),
            pixels.new_empty((n, k, out_h, out_w), dtype=dtype))


@mask_topk.register_kernel("cuda")
def _(scores, embed, pixels, proj_weight, proj_bias, k, out_h, out_w, mode):
    check_mask_topk(scores, embed, pixels, proj_weight, proj_bias, k, out_h, out_w, mode)
    return tuple(_cuda().mask_topk(scores, embed, pixels, proj_weight, proj_bias, k, out_h, out_w, mode))
