"""Image-prompt fusion (SAM3's "DETR encoder"): image tokens attend to the prompt tokens.

Runs on the coarsest FPN level only. Each pre-norm layer: self-attention among image tokens
(position encoding added to queries and keys, not values), cross-attention from image tokens to
the prompt tokens (text, plus exemplar tokens if any; padded ones masked), FFN.
"""

from __future__ import annotations

import torch
from torch import nn

from sam3edge.models.heads_config import HeadsConfig

from .attention import Attention
from .layers import FeedForward


class FusionEncoderLayer(nn.Module):
    def __init__(self, cfg: HeadsConfig):
        super().__init__()
        d = cfg.hidden_size
        self.layer_norm1 = nn.LayerNorm(d)
        self.self_attn = Attention(d, cfg.encoder_heads)
        self.dropout = nn.Dropout(cfg.dropout)
        self.cross_attn = Attention(d, cfg.encoder_heads)
        self.layer_norm2 = nn.LayerNorm(d)
        self.mlp = FeedForward(d, cfg.encoder_ffn_size, cfg.activation, cfg.ffn_dropout)
        self.layer_norm3 = nn.LayerNorm(d)

    def forward(self, image: torch.Tensor, image_pos: torch.Tensor, prompt: torch.Tensor,
                prompt_bias: torch.Tensor) -> torch.Tensor:
        """image, image_pos [N, HW, C]; prompt [N, P, C]; prompt_bias [N, 1, 1, P] -> image [N, HW, C]."""
        x = self.layer_norm1(image)
        qk = x + image_pos
        image = image + self.dropout(self.self_attn(qk, qk, x))
        x = self.layer_norm2(image)
        image = image + self.dropout(self.cross_attn(x, prompt, prompt, prompt_bias))
        return image + self.dropout(self.mlp(self.layer_norm3(image)))


class FusionEncoder(nn.Module):
    """Coarsest FPN level [N, C, H, W] + prompt tokens -> fused image tokens [N, HW, C] and their positions."""

    def __init__(self, cfg: HeadsConfig):
        super().__init__()
        self.layers = nn.ModuleList([FusionEncoderLayer(cfg) for _ in range(cfg.encoder_layers)])

    def forward(self, image: torch.Tensor, image_pos: torch.Tensor, prompt: torch.Tensor,
                prompt_bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """image, image_pos [N, C, H, W]; prompt [N, P, C]; prompt_bias [N, 1, 1, P].

        Returns the fused image tokens [N, HW, C] (row-major over H, W) and the flattened
        position encoding [N, HW, C] the decoder reuses.
        """
        tokens = image.flatten(2).transpose(1, 2)
        pos = image_pos.flatten(2).transpose(1, 2)
        for layer in self.layers:
            tokens = layer(tokens, pos, prompt, prompt_bias)
        return tokens, pos
