"""ROI align without torchvision, written as two small matrix products (export-friendly).

SAM3's geometry encoder pools exemplar boxes with ``torchvision.ops.roi_align(features, boxes,
output_size=7)``: spatial_scale 1, ``aligned=False`` and ``sampling_ratio=-1``. The last means
each output bin averages a *box-dependent* grid of ceil(roi_h / 7) x ceil(roi_w / 7) bilinear
samples - a data-dependent loop count that no static graph can express. We sample a fixed grid
of ``max_samples`` per bin side and give the samples beyond the box's own count zero weight,
which reproduces torchvision exactly for any box no larger than the feature map.

Bilinear interpolation on a regular grid is separable, and so is torchvision's boundary rule
(samples more than one pixel outside the map read 0; samples within one pixel are clamped to the
edge), so the pooled bins are ``Ay @ F @ Ax^T`` with per-box weight matrices Ay [out, H] and
Ax [out, W]: matmuls only, no gather or grid_sample.
"""

from __future__ import annotations

import math

import torch


def _axis_weights(start: torch.Tensor, end: torch.Tensor, size: int, out: int, max_samples: int) -> torch.Tensor:
    """Averaging weights [..., out, size] of one axis for boxes spanning [start, end] (pixels)."""
    extent = (end - start).clamp(min=1.0)  # aligned=False: degenerate boxes count as one pixel wide
    bin_size = extent / out
    # torchvision's adaptive count ceil(extent / out), capped at the static grid we sample.
    count = torch.ceil(extent / out).clamp(max=float(max_samples))
    bins = torch.arange(out, device=start.device, dtype=start.dtype)
    steps = torch.arange(max_samples, device=start.device, dtype=start.dtype)
    # Sample positions [..., out, max_samples], in torchvision's order of operations.
    pos = (start[..., None, None] + bins[:, None] * bin_size[..., None, None]
           + (steps + 0.5) * bin_size[..., None, None] / count[..., None, None])
    used = (steps < count[..., None, None]) & (pos >= -1.0) & (pos <= size)
    clamped = pos.clamp(0.0, float(size - 1))  # float bounds: int ones break ONNX decomposition
    grid = torch.arange(size, device=start.device, dtype=start.dtype)
    # Tent function = linear-interpolation weight of every pixel for every sample.
    tent = (1.0 - (clamped[..., None] - grid).abs()).clamp(min=0.0)  # [..., out, S, size]
    tent = tent * used[..., None].to(tent.dtype)
    return tent.sum(dim=-2) / count[..., None, None]


def roi_align(features: torch.Tensor, boxes_xyxy: torch.Tensor, output_size: int,
              max_samples: int | None = None) -> torch.Tensor:
    """Pool K boxes per image: features [N, C, H, W], boxes [N, K, 4] xyxy in feature pixels -> [N, K, C, s, s].

    Equals ``torchvision.ops.roi_align(features, list(boxes), output_size)`` (spatial_scale 1,
    sampling_ratio -1, aligned False). ``max_samples`` (samples per bin side) defaults to
    ceil(max(H, W) / output_size), enough for any box inside the map; a larger box is averaged
    over that many samples instead of its own count.
    """
    h, w = features.shape[-2:]
    if max_samples is None:
        max_samples = max(1, math.ceil(max(h, w) / output_size))
    x1, y1, x2, y2 = boxes_xyxy.unbind(-1)
    wy = _axis_weights(y1, y2, h, output_size, max_samples)  # [N, K, s, H]
    wx = _axis_weights(x1, x2, w, output_size, max_samples)  # [N, K, s, W]
    rows = torch.einsum("nkph,nchw->nkcpw", wy, features)
    return torch.einsum("nkcpw,nkqw->nkcpq", rows, wx)
