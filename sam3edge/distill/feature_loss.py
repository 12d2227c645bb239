"""Stage 1 of distillation: the student's encoders regress onto the teacher's embeddings.

Image: each FPN level the heads consume, MSE (relative to the teacher level's mean square, so
levels of different scale weigh alike) + (1 - cosine) over channels per pixel. Text (students
with their own text encoder): the projected token embeddings, cosine + relative MSE over real
tokens. Both are models/criteria for the ordinary :class:`~sam3edge.distill.trainer.Trainer`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class LevelOutputs:
    """The student's FPN levels that regress onto the teacher's, and which teacher level each one is."""

    levels: list[torch.Tensor]
    indices: list[int] | None = None  # None: level k <-> teacher level k for every k


def regressed_levels(student) -> list[int]:
    """The FPN levels stage 1 regresses onto the teacher's: those at the heads' width. Fast heads' narrow fine
    levels (``HeadsConfig.fpn_widths``) have no teacher counterpart; stage 2 trains them through the masks."""
    heads = student.spec.heads
    return [k for k, c in enumerate(heads.fpn_widths) if c == heads.in_width]


def feature_loss(student: list[torch.Tensor], teacher: list[torch.Tensor], mse: float = 1.0, cos: float = 1.0,
                 indices: list[int] | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Sum over levels of relative MSE and (1 - cosine); each [B, C, h, w] (student resized to the teacher's grid).
    indices: the levels' FPN indices (names of the parts; default 0, 1, ...)."""
    total, parts = 0.0, {}
    for k, s, t in zip(indices or range(len(student)), student, teacher):
        s, t = s.float(), t.float()
        if s.shape[-2:] != t.shape[-2:]:
            s = F.interpolate(s, size=t.shape[-2:], mode="bilinear", align_corners=False)
        if s.shape[1] != t.shape[1]:
            raise ValueError(f"level {k}: student has {s.shape[1]} channels, teacher {t.shape[1]}; the student's "
                             "neck width must equal the teacher's FPN width")
        rel = F.mse_loss(s, t) / t.pow(2).mean().clamp(min=1e-6)
        c = 1 - F.cosine_similarity(s, t, dim=1).mean()
        parts[f"mse{k}"], parts[f"cos{k}"] = float(rel.detach()), float(c.detach())
        total = total + mse * rel + cos * c
    return total, parts


class ImageEncoderStage(nn.Module):
    """Trainer model for stage 1: a FeatureBatch -> the student's levels (image encoder + neck only)."""

    def __init__(self, student):
        super().__init__()
        self.student = student

    def forward(self, batch) -> LevelOutputs:
        x = (batch.pixel_values + 1.0) * 0.5  # SAM3 normalisation -> [0, 1]; the encoder normalises itself
        if x.shape[-1] != self.student.image_size:
            x = F.interpolate(x, size=(self.student.image_size,) * 2, mode="bilinear", align_corners=False,
                              antialias=x.shape[-1] > self.student.image_size)
        keep = regressed_levels(self.student)
        levels = self.student.encode_images(x).levels
        return LevelOutputs([levels[k] for k in keep], keep)


class FeatureCriterion(nn.Module):
    def __init__(self, mse: float = 1.0, cos: float = 1.0):
        super().__init__()
        self.mse, self.cos = mse, cos

    def forward(self, out: LevelOutputs, targets: list[torch.Tensor]):
        if out.indices is not None:
            targets = [targets[k] for k in out.indices]
        loss, parts = feature_loss(out.levels, targets, self.mse, self.cos, out.indices)
        return loss, parts | {"total": float(loss.detach())}


def text_loss(student_feats: torch.Tensor, student_mask: torch.Tensor, teacher_feats: torch.Tensor,
              teacher_mask: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """Cosine + relative MSE between token embeddings [P, L, D] over tokens both masks mark real."""
    length = min(student_feats.shape[1], teacher_feats.shape[1])
    s, t = student_feats[:, :length].float(), teacher_feats[:, :length].float()
    m = (student_mask[:, :length].bool() & teacher_mask[:, :length].bool()).float()
    denom = m.sum().clamp(min=1)
    cos = ((1 - F.cosine_similarity(s, t, dim=-1)) * m).sum() / denom
    mse = (((s - t) ** 2).mean(-1) * m).sum() / denom / (t.pow(2).mean(-1) * m).sum().div(denom).clamp(min=1e-6)
    return cos + mse, {"text_cos": float(cos.detach()), "text_mse": float(mse.detach())}


@dataclass
class TextBatch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    targets: tuple[torch.Tensor, torch.Tensor]

    def to(self, device) -> TextBatch:
        return TextBatch(self.input_ids.to(device), self.attention_mask.to(device),
                         (self.targets[0].to(device), self.targets[1].to(device)))


class TextBatches:
    """batches[k]: ``batch`` phrases drawn (seeded by k) from the teacher's embedded phrases."""

    def __init__(self, phrases: list[str], features: torch.Tensor, mask: torch.Tensor, tokenizer, batch: int = 16,
                 seed: int = 0):
        self.phrases, self.features, self.mask, self.tokenizer = list(phrases), features, mask, tokenizer
        self.batch, self.seed = min(batch, len(phrases)), seed

    def __getitem__(self, step: int) -> TextBatch:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        idx = torch.randperm(len(self.phrases), generator=g)[: self.batch]
        ids, mask = self.tokenizer.encode([self.phrases[i] for i in idx])
        return TextBatch(torch.from_numpy(ids), torch.from_numpy(mask), (self.features[idx], self.mask[idx]))


class TextEncoderStage(nn.Module):
    def __init__(self, student):
        super().__init__()
        self.student = student

    def forward(self, batch: TextBatch):
        feats, mask = self.student.text_encoder(batch.input_ids, batch.attention_mask)
        return _TextOut(feats, mask)


@dataclass
class _TextOut:
    feats: torch.Tensor
    mask: torch.Tensor


class TextCriterion(nn.Module):
    def forward(self, out: _TextOut, targets):
        loss, parts = text_loss(out.feats, out.mask, targets[0], targets[1])
        return loss, parts | {"total": float(loss.detach())}
