"""Multi-head attention with an additive float bias that the caller builds.

Every attention of SAM3's heads is plain scaled dot-product attention; what differs is the bias
added to the scores (key padding of prompt tokens, or the decoder's box relative-position bias).
Writing the math out (no ``scaled_dot_product_attention`` dispatch, no mask factory) keeps one
code path that ONNX, OpenVINO, TensorRT and Core ML all trace to MatMul/Softmax.
"""

from __future__ import annotations

import torch
from torch import nn

from sam3edge.ops.mode import fused_ops_enabled


def padding_bias(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive key-padding bias [N, 1, 1, L] from a mask [N, L] (True = real token).

    Padded keys get the dtype's most negative finite value rather than -inf, as transformers' eager
    masks do: a row whose keys were all padded then averages them instead of producing NaN.
    """
    return ((~mask).to(dtype) * torch.finfo(dtype).min)[:, None, None, :]


class Attention(nn.Module):
    """Multi-head attention; parameter names (q_proj, k_proj, v_proj, o_proj) are transformers' ``Sam3Attention``."""

    def __init__(self, hidden_size: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.scaling = self.head_dim ** -0.5
        self.q_proj = nn.Linear(hidden_size, hidden_size)
        self.k_proj = nn.Linear(hidden_size, hidden_size)
        self.v_proj = nn.Linear(hidden_size, hidden_size)
        self.o_proj = nn.Linear(hidden_size, hidden_size)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        # [N, L, C] -> [N, heads, L, head_dim]; unflatten keeps the batch size symbolic for export.
        return x.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                bias: torch.Tensor | None = None) -> torch.Tensor:
        """query [N, Lq, C], key and value [N, Lk, C], bias broadcastable to [N, heads, Lq, Lk] -> [N, Lq, C]."""
        if bias is not None and bias.dim() == 4 and bias.shape[1] == 1 and bias.shape[2] == 1 and fused_ops_enabled():
            # A key-padding bias [N, 1, 1, Lk] (prompt tokens): the fused op, one kernel from scores to output.
            out = torch.ops.sam3edge.prompt_attention(self.q_proj(query), self.k_proj(key), self.v_proj(value),
                                                      bias[:, 0, 0, :].contiguous(), self.num_heads, self.scaling)
            return self.o_proj(out)
        q = self._split(self.q_proj(query))
        k = self._split(self.k_proj(key))
        v = self._split(self.v_proj(value))
        scores = torch.matmul(q, k.transpose(-1, -2)) * self.scaling
        if bias is not None:
            scores = scores + bias
        out = torch.matmul(scores.softmax(dim=-1), v)
        return self.o_proj(out.transpose(1, 2).flatten(2))
