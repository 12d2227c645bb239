"""``Sam3Student``: a timm image encoder, SAM3-layout heads and a text path, called like the teacher.

``student(images, phrases)`` returns the same :class:`~sam3edge.models.outputs.ConceptOutputs` as
``Sam3Teacher`` (scores, boxes in pixels of each original image, low-resolution mask logits,
presence, and the features the heads consumed), so eval, distillation and export treat both
alike. ``forward_pairs(PairBatch)`` is the training view (every decoder layer, gradients on).

Text has three modes (``StudentSpec.text_mode``): "cache" looks phrases up in a
:class:`~sam3edge.runtime.concepts.ConceptCache` of teacher features (no text encoder at all, the
robot case); "encoder" tokenises with the CLIP tokenizer and runs a small
:class:`~sam3edge.models.text_encoder.StudentTextEncoder`; "both" keeps the cache (the heads train on the
teacher's features, known phrases are looked up) and has an encoder for every other phrase, distilled on a
broad phrase corpus (:mod:`sam3edge.distill.text_corpus`).

Saving and loading (``save_student`` / ``load_student``) and starting the heads from a teacher
(``init_heads_from_teacher``) live in :mod:`sam3edge.models.student_io`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sam3edge.data.images import resize_batch
from sam3edge.models.heads import HeadOutputs, build_heads
from sam3edge.models.image_encoder import ImageEncoder, ImageFeatures
from sam3edge.models.outputs import ConceptOutputs
from sam3edge.models.student_spec import StudentSpec
from sam3edge.models.text_encoder import StudentTextEncoder


class Sam3Student(nn.Module):
    """Image encoder + heads + text path of one :class:`StudentSpec` (see the module docstring).

    concepts: a ConceptCache for text mode "cache" (features [P, L, C] with C = heads width).
    overrides: how the spec differs from its registry entry (kept for ``config.json``).
    pair_chunk: (image, phrase) pairs run through the heads at once (bounds memory for many phrases).
    """

    def __init__(self, spec: StudentSpec, concepts=None, overrides: dict | None = None, pair_chunk: int = 16):
        super().__init__()
        self.spec, self.overrides, self.pair_chunk = spec, dict(overrides or {}), pair_chunk
        width = spec.heads.in_width  # what the heads take: the coarsest level and the text features
        self.image_encoder = ImageEncoder(spec.backbone, width=width, mean=spec.mean, std=spec.std,
                                          widths=spec.heads.fpn_widths)
        self.heads = build_heads(spec.heads)
        te = spec.text_encoder
        self.text_encoder = (StudentTextEncoder(width, width=te.width, layers=te.layers, heads=te.heads,
                                                mlp_ratio=te.mlp_ratio) if spec.text_mode != "cache" else None)
        self.concepts = None
        if concepts is not None:
            self.set_concepts(concepts)
        self._tokenizer = None

    # ---- properties -----------------------------------------------------------------------------
    @property
    def text_mode(self) -> str:
        return self.spec.text_mode

    @property
    def has_text_encoder(self) -> bool:
        """Whether the student carries a text encoder (text modes "encoder" and "both")."""
        return self.text_encoder is not None

    @property
    def image_size(self) -> int:
        return self.spec.input_size

    @property
    def device(self) -> torch.device:
        return next(self.heads.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.heads.parameters()).dtype

    @property
    def tokenizer(self):
        if self._tokenizer is None:  # loaded on first use: cache-mode students never need it
            from sam3edge.runtime.tokenizer import ClipTokenizer

            self._tokenizer = ClipTokenizer.default()
        return self._tokenizer

    def set_concepts(self, concepts) -> None:
        """Use ``concepts`` (a ConceptCache) for text mode "cache"; its feature width must be the heads'."""
        width = self.spec.heads.in_width
        if concepts.features.shape[-1] != width:
            raise ValueError(f"concept cache features are {concepts.features.shape[-1]} wide, student "
                             f"{self.spec.name!r} takes {width}-wide text features; build the cache from a teacher "
                             f"whose heads are {width} wide")
        self.concepts = concepts

    # ---- pre-processing -------------------------------------------------------------------------
    def preprocess(self, images) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """Images -> float RGB [B, 3, S, S] in [0, 1] (normalisation is inside the encoder), sizes (H, W).

        images: a list of uint8 HxWx3 arrays / PIL images (resized bilinearly to S x S, aspect not
        kept, as the teacher does), or a float tensor [B, 3, H, W] in [0, 1] (resized if not S x S;
        sizes are then H x W).
        """
        s = self.image_size
        if torch.is_tensor(images) and images.ndim == 4 and images.is_floating_point():
            x = images.to(self.device, self.dtype)
            sizes = [tuple(x.shape[-2:])] * x.shape[0]
            return _resize(x, s), sizes
        batch, sizes = resize_batch(images, s)
        x = torch.from_numpy(batch).permute(0, 3, 1, 2).to(self.device, self.dtype).div_(255.0)
        return x, sizes

    # ---- encoders -------------------------------------------------------------------------------
    def encode_images(self, images: torch.Tensor) -> ImageFeatures:
        """float RGB [B, 3, S, S] in [0, 1] -> ImageFeatures: levels and pos [B, C, S/4, S/4], [.., S/8], [.., S/16]."""
        return self.image_encoder(images)

    def tokenize(self, phrases: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """CLIP token ids and attention mask [P, 32] (int64) of ``phrases``."""
        ids, mask = self.tokenizer.encode(list(phrases))
        return torch.from_numpy(ids).to(self.device), torch.from_numpy(mask).to(self.device)

    def encode_text(self, phrases: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Text features [P, L, C] in the teacher's projected space and mask [P, L] (True = token).

        Cache mode: looked up (KeyError listing the known phrases for an unknown one). Encoder mode:
        tokenised and encoded.
        """
        if isinstance(phrases, str):
            phrases = [phrases]
        if not phrases:
            raise ValueError("no phrases given: pass at least one noun phrase, e.g. ['ripe apple']")
        if self.text_mode == "encoder":
            return self.text_encoder(*self.tokenize(phrases))
        if self.text_mode == "both" and (self.concepts is None or any(p not in self.concepts for p in phrases)):
            return self._encode_mixed(list(phrases))
        if self.concepts is None:
            raise ValueError(f"student {self.spec.name!r} is in text mode 'cache' but has no concept cache: pass "
                             "concepts=ConceptCache.from_teacher(teacher, phrases) (or set_concepts), or create it "
                             "with text_mode='encoder'")
        feats, mask = self.concepts.lookup(list(phrases))
        return (torch.from_numpy(feats).to(self.device, self.dtype),
                torch.from_numpy(mask).to(self.device))

    def _encode_mixed(self, phrases: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Text mode "both": cached phrases from the cache, the others through the encoder, in order."""
        cached = [self.concepts is not None and p in self.concepts for p in phrases]
        known = [i for i, c in enumerate(cached) if c]
        new = [i for i, c in enumerate(cached) if not c]
        enc, enc_mask = self.text_encoder(*self.tokenize([phrases[i] for i in new]))  # only what the cache lacks
        if not known:
            return enc, enc_mask
        feats = enc.new_zeros((len(phrases), *enc.shape[1:]))
        mask = enc_mask.new_zeros((len(phrases), enc_mask.shape[1]))
        feats[new], mask[new] = enc, enc_mask
        f, m = self.concepts.lookup([phrases[i] for i in known])
        n = min(f.shape[1], feats.shape[1])
        feats[known, :n] = torch.from_numpy(f[:, :n]).to(feats)
        mask[known, :n] = torch.from_numpy(m[:, :n]).to(mask)
        return feats, mask

    # ---- the teacher's call ---------------------------------------------------------------------
    @torch.no_grad()
    def forward(self, images, phrases: list[str], input_boxes: torch.Tensor | None = None,
                input_boxes_labels: torch.Tensor | None = None) -> ConceptOutputs:
        """Segment every phrase in every image (same contract as ``Sam3Teacher.__call__``).

        images: see :meth:`preprocess` (B images). phrases: P noun phrases. input_boxes [B, K, 4]
        optional exemplar boxes (normalised cxcywh, per image, applied with every phrase) with labels
        [B, K] (1 positive, 0 negative, -10 padding). Image features are computed once per image.
        """
        if isinstance(phrases, str):
            phrases = [phrases]
        x, sizes = self.preprocess(images)
        feats = self.encode_images(x)
        text, text_mask = self.encode_text(phrases)
        b, p = x.shape[0], len(phrases)
        if input_boxes is not None and input_boxes.shape[0] != b:
            raise ValueError(f"input_boxes {tuple(input_boxes.shape)}: expected [B={b}, K, 4], one row per image")
        img_idx = torch.arange(b, device=self.device).repeat_interleave(p)
        txt_idx = torch.arange(p, device=self.device).repeat(b)
        outs = []
        for s in range(0, b * p, self.pair_chunk):
            ii, tt = img_idx[s:s + self.pair_chunk], txt_idx[s:s + self.pair_chunk]
            boxes = input_boxes[ii.cpu()].to(self.device, self.dtype) if input_boxes is not None else None
            labels = input_boxes_labels[ii.cpu()].to(self.device) if input_boxes_labels is not None else None
            outs.append(self.heads([f[ii] for f in feats.levels], [q[ii] for q in feats.pos], text[tt], text_mask[tt],
                                   boxes, labels))
        return ConceptOutputs.from_pairs(outs, feats.levels, feats.pos, text, text_mask, sizes, list(phrases))

    # ---- training view --------------------------------------------------------------------------
    def forward_pairs(self, batch) -> HeadOutputs:
        """A :class:`~sam3edge.distill.targets.PairBatch` -> :class:`HeadOutputs` of its N pairs (every layer).

        batch.pixel_values [B, 3, H, W] are in SAM3's [-1, 1] normalisation (what the teacher and the
        batch generators produce): mapped back to [0, 1] and resized to S x S if needed. Text: the
        batch's token ids (encoder mode) or its ``phrases`` looked up in the cache (cache mode).
        """
        x = _resize((batch.pixel_values.to(self.device, self.dtype) + 1.0) * 0.5, self.image_size)
        feats = self.encode_images(x)
        if self.text_mode == "encoder":
            text, text_mask = self.text_encoder(batch.input_ids.to(self.device), batch.attention_mask.to(self.device))
        else:
            if batch.phrases is None:
                raise ValueError("a cache-mode student needs batch.phrases to look the text features up")
            text, text_mask = self.encode_text(batch.phrases)
        idx = batch.pair_image.to(self.device)
        boxes, labels = getattr(batch, "input_boxes", None), getattr(batch, "input_boxes_labels", None)
        if boxes is not None:  # exemplar prompts of the pairs that have them (padding rows: text only)
            boxes, labels = boxes.to(self.device, self.dtype), labels.to(self.device)
        return self.heads([f[idx] for f in feats.levels], [q[idx] for q in feats.pos], text, text_mask, boxes, labels)


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """[B, 3, H, W] -> [B, 3, size, size] bilinear; anti-aliased when shrinking (as PIL does)."""
    if tuple(x.shape[-2:]) == (size, size):
        return x
    shrink = x.shape[-2] > size or x.shape[-1] > size
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink)
