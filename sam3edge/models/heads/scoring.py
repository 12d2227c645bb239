"""Query classification by dot product with the pooled prompt (SAM3's ``DotProductScoring``)."""

from __future__ import annotations

import math

import torch
from torch import nn

from sam3edge.models.heads_config import HeadsConfig

from .layers import MLP


class DotProductScoring(nn.Module):
    """logit = <query_proj(q), text_proj(mean of refined prompt tokens)> / sqrt(C), clamped to +-logit_clamp."""

    def __init__(self, cfg: HeadsConfig):
        super().__init__()
        d = cfg.hidden_size
        self.text_mlp = MLP(d, cfg.decoder_ffn_size, d, num_layers=2)
        self.text_mlp_dropout = nn.Dropout(cfg.dropout)
        self.text_mlp_out_norm = nn.LayerNorm(d)
        self.text_proj = nn.Linear(d, d)
        self.query_proj = nn.Linear(d, d)
        self.scale = 1.0 / math.sqrt(d)
        self.clamp = cfg.logit_clamp

    def pooled_prompt(self, prompt: torch.Tensor, prompt_mask: torch.Tensor) -> torch.Tensor:
        """prompt [N, P, C], prompt_mask [N, P] -> projected prompt summary [N, C] (queries are scored against it)."""
        x = self.text_mlp_out_norm(prompt + self.text_mlp_dropout(self.text_mlp(prompt)))
        valid = prompt_mask.to(x.dtype)[..., None]
        pooled = (x * valid).sum(dim=1) / valid.sum(dim=1).clamp(min=1.0)
        return self.text_proj(pooled)

    def score(self, queries: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        """queries [..., N, Q, C] (any leading layer dims), pooled [N, C] -> logits [..., N, Q]."""
        logits = torch.matmul(self.query_proj(queries), pooled[:, :, None]).squeeze(-1) * self.scale
        return logits.clamp(-self.clamp, self.clamp)

    def forward(self, queries: torch.Tensor, prompt: torch.Tensor, prompt_mask: torch.Tensor) -> torch.Tensor:
        """queries [L, N, Q, C], prompt [N, P, C], prompt_mask [N, P] -> logits [L, N, Q]."""
        return self.score(queries, self.pooled_prompt(prompt, prompt_mask))
