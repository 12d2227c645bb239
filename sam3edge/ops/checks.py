"""Input contract of the fused ops, checked identically before every implementation runs.

A wrong dtype, a non-contiguous view, an empty prompt or k > Q must raise a ``ValueError`` that
names the argument, on CPU, in ``torch.export``'s fake tensors and before a CUDA launch (where it
would otherwise be an illegal memory access). The CUDA binding checks the same again in C++.
Limits (head_dim, grid side, Q) are those of the CUDA kernels, applied everywhere so a model that
runs fused on a CPU also runs fused on a GPU.
"""

from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float32, torch.float16)
MAX_HEAD_DIM = 128
MAX_GRID_SIDE = 128
MAX_QUERIES = 4096


def _tensor(op: str, name: str, t, dims: int, dtype=None) -> None:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"sam3edge::{op}: {name} must be a tensor, got {type(t).__name__}")
    if t.dim() != dims:
        raise ValueError(f"sam3edge::{op}: {name} must have {dims} dims, got shape {tuple(t.shape)}")
    if dtype is not None and t.dtype != dtype:
        raise ValueError(f"sam3edge::{op}: {name} must be {dtype} like the other inputs, got {t.dtype}")
    if t.dtype not in FLOAT_DTYPES:
        raise ValueError(f"sam3edge::{op}: {name} has dtype {t.dtype}; the fused ops take float32 or float16 "
                         "(cast the model, or run it unfused)")
    if not t.is_contiguous():
        raise ValueError(f"sam3edge::{op}: {name} {tuple(t.shape)} is not contiguous (strides {t.stride()}); "
                         "call .contiguous() first")


def _same_device(op: str, named: dict) -> None:
    devices = {n: t.device for n, t in named.items()}
    if len(set(devices.values())) > 1:
        raise ValueError(f"sam3edge::{op}: inputs are on different devices: {devices}")


def _shape(op: str, name: str, t: torch.Tensor, expected: tuple) -> None:
    if tuple(t.shape) != tuple(expected):
        raise ValueError(f"sam3edge::{op}: {name} has shape {tuple(t.shape)}, expected {tuple(expected)}")


def _heads(op: str, c: int, num_heads: int) -> int:
    if num_heads < 1 or c % num_heads:
        raise ValueError(f"sam3edge::{op}: num_heads={num_heads} must divide the channels C={c}")
    d = c // num_heads
    if d > MAX_HEAD_DIM:
        raise ValueError(f"sam3edge::{op}: head_dim {d} (C={c} / {num_heads} heads) exceeds the kernels' "
                         f"limit {MAX_HEAD_DIM}")
    return d


def check_prompt_attention(q, k, v, key_bias, num_heads: int, scale: float) -> None:
    op = "prompt_attention"
    _tensor(op, "q", q, 3)
    for name, t in (("k", k), ("v", v)):
        _tensor(op, name, t, 3, q.dtype)
    _tensor(op, "key_bias", key_bias, 2, q.dtype)
    _same_device(op, {"q": q, "k": k, "v": v, "key_bias": key_bias})
    n, _, c = q.shape
    if k.shape[1] == 0:
        raise ValueError(f"sam3edge::{op}: empty prompt sequence (k has shape {tuple(k.shape)}); every prompt "
                         "needs at least one token (padded ones are masked by key_bias)")
    _shape(op, "k", k, (n, k.shape[1], c))
    _shape(op, "v", v, k.shape)
    _shape(op, "key_bias", key_bias, k.shape[:2])
    _heads(op, c, num_heads)


def check_box_attention(q, k, v, boxes, height: int, width: int, x_mlp: tuple, y_mlp: tuple, num_heads: int,
                        scale: float) -> None:
    op = "box_attention"
    _tensor(op, "q", q, 3)
    for name, t in (("k", k), ("v", v)):
        _tensor(op, name, t, 3, q.dtype)
    _tensor(op, "boxes", boxes, 3, q.dtype)
    n, lq, c = q.shape
    if not (1 <= height <= MAX_GRID_SIDE and 1 <= width <= MAX_GRID_SIDE):
        raise ValueError(f"sam3edge::{op}: grid {height}x{width} must be between 1 and {MAX_GRID_SIDE} a side")
    _shape(op, "k", k, (n, height * width, c))
    _shape(op, "v", v, k.shape)
    if boxes.shape[0] != n or boxes.shape[2] != 4 or boxes.shape[1] > lq:
        raise ValueError(f"sam3edge::{op}: boxes has shape {tuple(boxes.shape)}, expected [{n}, Qb <= {lq}, 4] "
                         "(normalised cxcywh; the first Lq - Qb queries get no bias)")
    _heads(op, c, num_heads)
    named = {"q": q, "k": k, "v": v, "boxes": boxes}
    for axis, (w1, b1, w2, b2) in (("x", x_mlp), ("y", y_mlp)):
        for name, t, dims in (("w1", w1, 2), ("b1", b1, 1), ("w2", w2, 2), ("b2", b2, 1)):
            _tensor(op, f"{axis}_{name}", t, dims, q.dtype)
            named[f"{axis}_{name}"] = t
        hidden = w1.shape[0]
        _shape(op, f"{axis}_w1", w1, (hidden, 2))
        _shape(op, f"{axis}_b1", b1, (hidden,))
        _shape(op, f"{axis}_w2", w2, (num_heads, hidden))
        _shape(op, f"{axis}_b2", b2, (num_heads,))
    _same_device(op, named)


def check_mask_topk(scores, embed, pixels, proj_weight, proj_bias, k: int, out_h: int, out_w: int,
                    mode: int) -> None:
    op = "mask_topk"
    _tensor(op, "scores", scores, 2)
    _tensor(op, "embed", embed, 3, scores.dtype)
    _tensor(op, "pixels", pixels, 4, scores.dtype)
    _tensor(op, "proj_weight", proj_weight, 2, scores.dtype)
    _tensor(op, "proj_bias", proj_bias, 1, scores.dtype)
    _same_device(op, {"scores": scores, "embed": embed, "pixels": pixels, "proj_weight": proj_weight,
                      "proj_bias": proj_bias})
    n, q = scores.shape
    c = embed.shape[2]
    _shape(op, "embed", embed, (n, q, c))
    _shape(op, "pixels", pixels, (n, c, pixels.shape[2], pixels.shape[3]))
    _shape(op, "proj_weight", proj_weight, (c, c))
    _shape(op, "proj_bias", proj_bias, (c,))
    if q > MAX_QUERIES:
        raise ValueError(f"sam3edge::{op}: {q} queries exceed the top-k kernel's limit {MAX_QUERIES}")
    if not 0 <= k <= q:
        raise ValueError(f"sam3edge::{op}: k={k} must be between 0 and the number of queries Q={q}")
    if out_h < 1 or out_w < 1:
        raise ValueError(f"sam3edge::{op}: output size {out_h}x{out_w} must be at least 1x1")
    if mode not in (0, 1, 2):
        raise ValueError(f"sam3edge::{op}: mode={mode} must be 0 (logits), 1 (sigmoid) or 2 (binary uint8)")
