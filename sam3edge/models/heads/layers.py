"""Small building blocks shared by several heads: the transformer FFN, the box/score MLPs and
SAM3's sine encodings of coordinates and boxes."""

from __future__ import annotations

import math

import torch
from torch import nn

from sam3edge.models.position_encoding import SCALE, TEMPERATURE  # SAM3's sine encoding, one definition

_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}


class FeedForward(nn.Module):
    """The transformer FFN (fc1, fc2 as in transformers' ``Sam3MLP``).

    SAM3 applies its FFN dropout *before* the activation; kept so training behaves the same.
    """

    def __init__(self, hidden_size: int, ffn_size: int, activation: str = "relu", dropout: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, ffn_size)
        self.fc2 = nn.Linear(ffn_size, hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.act = _ACTIVATIONS[activation]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.dropout(self.fc1(x))))


class MLP(nn.Module):
    """A 2- or 3-layer ReLU MLP (layer1..layer3 as in transformers' ``Sam3DecoderMLP``)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int):
        super().__init__()
        if num_layers not in (2, 3):
            raise ValueError(f"MLP supports 2 or 3 layers, got {num_layers}")
        self.layer1 = nn.Linear(in_dim, hidden_dim)
        self.layer2 = nn.Linear(hidden_dim, hidden_dim if num_layers == 3 else out_dim)
        self.layer3 = nn.Linear(hidden_dim, out_dim) if num_layers == 3 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer2(torch.relu(self.layer1(x)))
        if self.layer3 is not None:
            x = self.layer3(torch.relu(x))
        return x


def sine_features(x: torch.Tensor, num_features: int, temperature: float = TEMPERATURE,
                  scale: float = SCALE) -> torch.Tensor:
    """Sine encoding of scalars x [...] -> [..., num_features]: (sin f0 x, cos f0 x, sin f1 x, cos f1 x, ...).

    Frequencies are temperature ** (-2i / num_features) as in DETR; the exponent is computed in
    x's dtype as SAM3 does, so the encodings agree bit for bit.
    """
    idx = torch.arange(0, num_features, 2, device=x.device).to(x.dtype)
    period = temperature ** (idx / num_features)
    angle = (x * scale)[..., None] / period
    return torch.stack((angle.sin(), angle.cos()), dim=-1).flatten(-2)


def sine_box_embedding(boxes: torch.Tensor, num_features: int) -> torch.Tensor:
    """SAM3's query-position encoding of boxes [..., 4] (cx, cy, w, h) -> [..., 4 * num_features].

    The order is (cy, cx, w, h): SAM3 puts y first, and the reference-point MLP was trained so.
    """
    # One Sin over [..., 4, F] with cos(a) = sin(a + pi/2) on odd channels: the same values (to 1 ulp of the angle)
    # as four sine_features joined, without the 5 concatenations per decoder layer that exported graphs ran as
    # reference kernels (OpenVINO, 16 concepts: Concat + Sin + Cos were ~2 ms of a ~24 ms decoder).
    idx = torch.arange(num_features, device=boxes.device) // 2 * 2
    period = TEMPERATURE ** (idx.to(boxes.dtype) / num_features)
    phase = (torch.arange(num_features, device=boxes.device) % 2).to(boxes.dtype) * (math.pi / 2)
    yxwh = boxes[..., [1, 0, 2, 3]]
    return ((yxwh * SCALE)[..., None] / period + phase).sin().flatten(-2)


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """log(x / (1 - x)) with both clamped to >= eps, as SAM3's box refinement uses it."""
    x = x.clamp(0.0, 1.0)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def cxcywh_to_xyxy(b: torch.Tensor) -> torch.Tensor:
    cx, cy, w, h = b.unbind(-1)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


def xyxy_to_cxcywh(b: torch.Tensor) -> torch.Tensor:
    x0, y0, x1, y1 = b.unbind(-1)
    return torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], dim=-1)


def check_text(text_features, text_mask, width: int) -> None:
    """text_features [N, L, width] (projected SAM3 text) and text_mask [N, L], or a ValueError naming them."""
    if text_features.dim() != 3 or text_features.shape[-1] != width:
        raise ValueError(f"text_features {tuple(text_features.shape)}: expected [N, L, {width}] (projected SAM3 text)")
    if tuple(text_mask.shape) != tuple(text_features.shape[:2]):
        raise ValueError(f"text_mask {tuple(text_mask.shape)} must be [N, L] = {tuple(text_features.shape[:2])}")
