"""Student text encoder: a small CLIP-style causal transformer in the teacher's projected text space.

SAM3's heads consume ``Sam3Model.get_text_features(...).pooler_output``: every token of a CLIP
text transformer (causal + padding attention mask, final LayerNorm) passed through
``text_projection`` to the heads' width C - [P, 32, C] with a [P, 32] mask (``Sam3Teacher.encode_text``).
``StudentTextEncoder`` produces the same tensor from the same CLIP BPE ids (vocabulary 49408,
context 32) with far fewer layers, trained with ``text_distillation_loss`` (cosine + MSE on the
valid tokens) against the teacher's features.

Export: attention is written out (matmul, softmax, matmul) and the causal + padding mask is one
additive float tensor built here, with no transformers mask utilities, so the graph converts to
ONNX, OpenVINO and Core ML alike. Masked scores get ``finfo(dtype).min`` once (never summed, so no
overflow to -inf); the BOS token is always visible, so no softmax row is fully masked.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sam3edge.runtime.names import CONTEXT_LENGTH

VOCAB_SIZE = 49408  # CLIP BPE, as SAM3's tokenizer


def attention_bias(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive mask [N, 1, L, L]: 0 where query i may attend key j (j <= i and key j is a token), else min.

    attention_mask: [N, L], nonzero / True on tokens, 0 on padding.
    """
    length = attention_mask.shape[-1]
    causal = torch.ones(length, length, dtype=torch.bool, device=attention_mask.device).tril()
    allowed = causal[None, None] & attention_mask.bool()[:, None, None, :]
    zero = torch.zeros((), dtype=dtype, device=attention_mask.device)
    return torch.where(allowed, zero, torch.finfo(dtype).min)


class SelfAttention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        n, length, width = x.shape
        q, k, v = self.qkv(x).view(n, length, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        scores = (q @ k.transpose(-1, -2)) * (width // self.heads) ** -0.5 + bias
        y = scores.softmax(-1) @ v  # [N, heads, L, head_dim]
        return self.out(y.transpose(1, 2).reshape(n, length, width))


class Block(nn.Module):
    """Pre-LayerNorm transformer block, as CLIP's text encoder (GELU instead of quick-GELU)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float):
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.norm1 = nn.LayerNorm(width)
        self.attn = SelfAttention(width, heads)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), bias)
        return x + self.mlp(self.norm2(x))


class StudentTextEncoder(nn.Module):
    """CLIP-style text transformer: ids [N, 32] + mask [N, 32] -> features [N, 32, out_dim], mask bool [N, 32].

    out_dim: the heads' width C (the teacher's ``text_projection`` output). width / layers / heads:
    the transformer's size. Features are produced for every position; padded positions carry
    values the heads ignore through the mask, as the teacher's do.
    """

    def __init__(self, out_dim: int, width: int = 256, layers: int = 4, heads: int = 4, mlp_ratio: float = 4.0,
                 vocab_size: int = VOCAB_SIZE, context_length: int = CONTEXT_LENGTH):
        super().__init__()
        self.out_dim, self.width, self.context_length = out_dim, width, context_length
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.position_embedding = nn.Parameter(torch.empty(context_length, width))
        self.blocks = nn.ModuleList(Block(width, heads, mlp_ratio) for _ in range(layers))
        self.final_norm = nn.LayerNorm(width)
        self.projection = nn.Linear(width, out_dim)
        # CLIP's initialisation scales
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.position_embedding, std=0.01)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """input_ids int64 [N, L] (L = context length), attention_mask [N, L] (1 = token) -> (features, mask)."""
        if input_ids.ndim != 2 or input_ids.shape[1] != self.context_length:
            raise ValueError(f"input_ids must be [N, {self.context_length}] (tokenizer output), "
                             f"got {tuple(input_ids.shape)}")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        x = self.token_embedding(input_ids) + self.position_embedding
        bias = attention_bias(attention_mask, x.dtype)
        for block in self.blocks:
            x = block(x, bias)
        return self.projection(self.final_norm(x)), attention_mask.bool()

    @torch.no_grad()
    def init_token_embedding(self, table: torch.Tensor) -> str:
        """Start from a teacher's token embedding table [vocab, D]; returns how: "copy" or "pca".

        D == width: copied. Otherwise the table is mapped by a linear projection onto its top
        ``width`` principal directions (eigenvectors of the centred table's covariance): the
        student keeps the directions along which the teacher's tokens differ most. If width > D the
        extra dimensions stay zero. Either way the student then learns freely.
        """
        if table.ndim != 2 or table.shape[0] != self.token_embedding.num_embeddings:
            raise ValueError(f"teacher token table must be [{self.token_embedding.num_embeddings}, D], "
                             f"got {tuple(table.shape)}")
        table = table.detach().to(torch.float64, copy=True)
        if table.shape[1] == self.width:
            self.token_embedding.weight.copy_(table)
            return "copy"
        centred = table - table.mean(0)
        _, vectors = torch.linalg.eigh(centred.T @ centred)  # ascending eigenvalues
        k = min(self.width, table.shape[1])
        projected = table @ vectors[:, -k:].flip(1)  # [vocab, k], largest variance first
        self.token_embedding.weight.zero_()
        self.token_embedding.weight[:, :k] = projected.to(self.token_embedding.weight.dtype)
        return "pca"


def teacher_token_table(teacher) -> torch.Tensor:
    """The CLIP token embedding table [49408, D] of a ``Sam3Teacher`` or a transformers ``Sam3Model``."""
    model = getattr(teacher, "model", teacher)
    return model.text_encoder.get_input_embeddings().weight


def text_distillation_loss(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor,
                           cosine_weight: float = 1.0, mse_weight: float = 1.0) -> torch.Tensor:
    """cosine_weight * (1 - cos) + mse_weight * MSE, averaged over valid tokens only.

    student, teacher: [N, L, C]; mask: [N, L] (True / 1 = token). Padded positions are left out:
    the heads never read them.
    """
    if student.shape != teacher.shape:
        raise ValueError(f"student features {tuple(student.shape)} and teacher features "
                         f"{tuple(teacher.shape)} differ in shape")
    valid = mask.bool()
    s, t = student[valid], teacher[valid].to(student.dtype)  # [T, C]
    cos = F.cosine_similarity(s, t, dim=-1).mean()
    return cosine_weight * (1 - cos) + mse_weight * F.mse_loss(s, t)
