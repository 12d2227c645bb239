"""The sine position encoding SAM3's vision neck attaches to every FPN level, in our own code.

transformers' ``Sam3VisionNeck`` calls ``Sam3SinePositionEmbedding(num_position_features=C // 2,
normalize=True)`` on each level's shape: DETR's 2-D sine encoding with row / column indices
1..H / 1..W scaled to (0, 2*pi], temperature 10000, channels ``[y-encoding (C/2), x-encoding (C/2)]``
and, inside each half, ``sin`` / ``cos`` interleaved on the same frequency. It depends on nothing
but the level's shape, so a student that feeds SAM3's heads must produce exactly the same tensor;
``tests/test_image_encoder.py`` checks this against a tiny ``Sam3Model`` to <= 1e-6.

Written with arange / pow / sin / cos / cat / expand only (no complex numbers, no cumsum, no
cache), so it traces into ONNX, OpenVINO and Core ML graphs, where it folds into a constant.
"""

from __future__ import annotations

import math

import torch

TEMPERATURE = 10000.0
SCALE = 2 * math.pi
_EPS = 1e-6  # transformers' normalisation epsilon; kept so values match it bit for bit in fp32


def _axis_encoding(length: int, num_features: int, device) -> torch.Tensor:
    """[length, num_features] sine/cosine encoding of positions 1..length normalised to (0, 2*pi]."""
    pos = torch.arange(1, length + 1, dtype=torch.float32, device=device)
    # Same operation order as transformers (divide by last + eps, then scale), so fp32 results are identical.
    pos = pos / (pos[-1:] + _EPS) * SCALE
    dim_t = torch.arange(num_features, dtype=torch.int64, device=device).to(torch.float32)
    dim_t = TEMPERATURE ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_features)
    angles = pos[:, None] / dim_t  # [length, F]; consecutive pairs share a frequency
    return torch.stack((angles[:, 0::2].sin(), angles[:, 1::2].cos()), dim=2).flatten(1)


def sine_position_encoding(batch: int, channels: int, height: int, width: int, dtype: torch.dtype = torch.float32,
                           device: torch.device | str | None = None) -> torch.Tensor:
    """SAM3's FPN position encoding for a [batch, channels, height, width] level -> [B, C, H, W].

    ``channels`` must be a multiple of 4 (two halves, each of sin/cos pairs). Computed in float32
    and cast to ``dtype`` at the end: identical to transformers in fp32, more accurate than its
    in-dtype computation in fp16/bf16. The batch dimension is an ``expand`` (no copy).
    """
    if channels % 4:
        raise ValueError(f"channels must be a multiple of 4 for SAM3's sine position encoding, got {channels}")
    if height < 1 or width < 1:
        raise ValueError(f"height and width must be positive, got {height}x{width}")
    half = channels // 2
    pos_y = _axis_encoding(height, half, device).t()[:, :, None].expand(half, height, width)
    pos_x = _axis_encoding(width, half, device).t()[:, None, :].expand(half, height, width)
    pos = torch.cat((pos_y, pos_x), dim=0).to(dtype)
    return pos[None].expand(batch, channels, height, width)


def position_encodings_like(levels: list[torch.Tensor]) -> list[torch.Tensor]:
    """One encoding per [B, C, H, W] level, matching its shape, dtype and device."""
    return [sine_position_encoding(*x.shape, dtype=x.dtype, device=x.device) for x in levels]
