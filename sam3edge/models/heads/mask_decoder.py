"""Masks: a pixel decoder (small FPN) gives per-pixel embeddings; each query's mask is the dot
product of its embedding with every pixel's; a 1x1 conv of the same pixels gives the semantic map.

Before the FPN, the fused image tokens attend once more to the prompt tokens, and they replace
the coarsest backbone level. Masks come out at the finest FPN level (4x the patch grid).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sam3edge.models.heads_config import HeadsConfig

from .attention import Attention


class PixelDecoder(nn.Module):
    """Coarse-to-fine FPN: upsample (nearest), add the skip level, 3x3 conv, GroupNorm(8), ReLU.

    SAM3 builds ``mask_upsampling_stages`` conv stages but uses one per level above the coarsest
    (2 for its 3 levels); unused stages are kept so the parameters still load.
    """

    def __init__(self, cfg: HeadsConfig):
        super().__init__()
        d = cfg.hidden_size
        self.conv_layers = nn.ModuleList([nn.Conv2d(d, d, 3, padding=1) for _ in range(cfg.mask_upsampling_stages)])
        self.norms = nn.ModuleList([nn.GroupNorm(8, d) for _ in range(cfg.mask_upsampling_stages)])

    def forward(self, levels: list[torch.Tensor]) -> torch.Tensor:
        """levels: fine to coarse, [N, C, H_i, W_i] -> pixel embeddings [N, C, H_0, W_0]."""
        x = levels[-1]
        for i, skip in enumerate(reversed(levels[:-1])):
            x = F.interpolate(x, size=skip.shape[-2:], mode="nearest") + skip
            x = torch.relu(self.norms[i](self.conv_layers[i](x)))
        return x


class MaskEmbedder(nn.Module):
    """3-layer ReLU MLP from query features to mask embeddings (``layers.0..2`` as in SAM3)."""

    def __init__(self, cfg: HeadsConfig, out_dim: int | None = None):
        super().__init__()
        d = cfg.hidden_size
        self.layers = nn.ModuleList([nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, out_dim or d)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = torch.relu(x)
        return x


class MaskDecoder(nn.Module):
    """Pixel embeddings once per pair; instance masks for whichever queries the caller passes."""

    def __init__(self, cfg: HeadsConfig):
        super().__init__()
        d = cfg.hidden_size
        self.pixel_decoder = PixelDecoder(cfg)
        self.mask_embedder = MaskEmbedder(cfg)
        self.instance_projection = nn.Conv2d(d, d, kernel_size=1)
        self.semantic_projection = nn.Conv2d(d, 1, kernel_size=1)
        self.prompt_cross_attn = Attention(d, cfg.mask_heads)
        self.prompt_cross_attn_norm = nn.LayerNorm(d)
        self.prompt_cross_attn_dropout = nn.Dropout(cfg.mask_dropout)

    def pixel_embeddings(self, levels: list[torch.Tensor], image_tokens: torch.Tensor, prompt: torch.Tensor,
                         prompt_bias: torch.Tensor) -> torch.Tensor:
        """levels: FPN [N, C, H_i, W_i] fine to coarse; image_tokens [N, H*W, C] the fused coarsest level;
        prompt [N, P, C], prompt_bias [N, 1, 1, P] -> pixel embeddings [N, C, H_0, W_0]."""
        x = self.prompt_cross_attn_norm(image_tokens)
        attn = self.prompt_cross_attn(x, prompt, prompt, prompt_bias)
        image_tokens = image_tokens + self.prompt_cross_attn_dropout(attn)
        coarse = image_tokens.transpose(1, 2).reshape(levels[-1].shape)
        return self.pixel_decoder([*levels[:-1], coarse])

    def masks(self, queries: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
        """queries [N, K, C] (all queries or a top-k), pixels [N, C, H, W] -> mask logits [N, K, H, W].

        Cost scales with K: callers that keep only the top-k queries pass only those.
        """
        return torch.einsum("nkc,nchw->nkhw", self.mask_embedder(queries), self.instance_projection(pixels))

    def semantic(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels [N, C, H, W] -> semantic (concept foreground) logits [N, 1, H, W]."""
        return self.semantic_projection(pixels)
