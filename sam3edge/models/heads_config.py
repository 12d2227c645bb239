"""Sizes of SAM3's concept-segmentation heads, as one flat, serialisable dataclass.

Defaults are those of ``transformers.Sam3Config()`` (the released SAM3). A student shrinks
widths, layer counts or the number of queries; ``from_sam3_config`` reads a teacher's.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

ACTIVATIONS = ("relu", "gelu", "silu")
HEAD_TYPES = ("sam3", "fast")
MASK_MODES = ("prototype", "coarse")


@dataclass(frozen=True)
class HeadsConfig:
    """Everything that fixes the heads' parameter shapes and their arithmetic.

    hidden_size: width shared by every head (FPN channels, text features, queries).
    geometry_* / encoder_* / decoder_*: layers, attention heads and FFN width of the exemplar
    (geometry) encoder, the image-prompt fusion encoder and the DETR decoder.
    num_queries: DETR object queries Q. roi_size: ROI-align output side for exemplar boxes.
    mask_heads: heads of the mask decoder's prompt cross-attention. mask_upsampling_stages: conv
    stages of the pixel decoder (SAM3 builds 3 and uses one per FPN level above the coarsest).
    activation / dropout / ffn_dropout: FFN activation, residual dropout and the dropout inside
    the FFN of the three transformer stacks; mask_dropout: the mask decoder's residual dropout.
    presence_clamp / logit_clamp: SAM3 clamps presence logits to +-10 and query logits to +-12.
    head_type: "sam3" (:class:`~sam3edge.models.heads.Sam3Heads`, SAM3's layout, a per-concept pixel decoder)
    or "fast" (:class:`~sam3edge.models.heads.fast.FastHeads`: pixel embeddings once per image, concepts
    fused on a coarse grid). The fast heads' own sizes: mask_dim (channels of the shared pixel embeddings,
    0 = hidden_size), fusion_stride (16: the coarsest FPN level; 32: it pooled 2x2), mask_mode
    ("prototype": mask = query embedding . pixel embeddings; "coarse": plus a concept-aware term from the
    fused coarse tokens, upsampled), fusion_self_attention (the fusion layers keep SAM3's self-attention among
    grid tokens: at the toy's 16 x 16 grid it is cheap, and the layers, hence the decoder's inputs, are then the
    teacher's own), box_prior (0: off; s > 0: a query's mask logits drop by s per unit of normalised distance
    outside its own box enlarged by 10 % + 2 mask pixels, as YOLACT crops prototype masks to their boxes, but
    continuous: concept-agnostic pixel embeddings cannot tell one apple from its neighbour, the box can),
    input_dim (0: hidden_size; else the width of what fast heads receive, text / prompt tokens and the coarsest FPN
    level, projected to hidden_size on entry: the teacher's width outside, so concept caches and stage 1 still
    match a SAM3 teacher, and a narrower decoder inside, whose per-concept cost falls with the square of its width).
    """

    hidden_size: int = 256
    geometry_layers: int = 3
    geometry_heads: int = 8
    geometry_ffn_size: int = 2048
    roi_size: int = 7
    encoder_layers: int = 6
    encoder_heads: int = 8
    encoder_ffn_size: int = 2048
    decoder_layers: int = 6
    decoder_heads: int = 8
    decoder_ffn_size: int = 2048
    num_queries: int = 200
    mask_heads: int = 8
    mask_upsampling_stages: int = 3
    activation: str = "relu"
    dropout: float = 0.1
    ffn_dropout: float = 0.0
    mask_dropout: float = 0.0
    presence_clamp: float = 10.0
    logit_clamp: float = 12.0
    head_type: str = "sam3"
    mask_dim: int = 0
    fusion_stride: int = 16
    mask_mode: str = "prototype"
    fusion_self_attention: bool = False
    box_prior: float = 0.0
    input_dim: int = 0

    def __post_init__(self):
        if self.head_type not in HEAD_TYPES:
            raise ValueError(f"HeadsConfig.head_type={self.head_type!r} is not one of {HEAD_TYPES}")
        if isinstance(self.box_prior, bool) or not isinstance(self.box_prior, (int, float)) or \
                not 0 <= self.box_prior <= 1e4:
            raise ValueError(f"HeadsConfig.box_prior={self.box_prior!r} must be a number from 0 (off) to 10000")
        if self.fusion_stride not in (16, 32):
            raise ValueError(f"HeadsConfig.fusion_stride={self.fusion_stride} must be 16 or 32")
        if self.mask_mode not in MASK_MODES:
            raise ValueError(f"HeadsConfig.mask_mode={self.mask_mode!r} is not one of {MASK_MODES}")
        if self.input_dim < 0 or self.input_dim % 8:
            raise ValueError(f"HeadsConfig.input_dim={self.input_dim} must be 0 (= hidden_size) or a positive multiple "
                             "of 8")
        if self.input_dim not in (0, self.hidden_size) and (self.head_type != "fast" or not self.mask_dim):
            raise ValueError(f"HeadsConfig.input_dim={self.input_dim} differs from hidden_size={self.hidden_size}: "
                             "only fast heads with a narrow pixel path (mask_dim > 0) project their inputs")
        if self.mask_dim < 0 or self.mask_dim % 8:
            raise ValueError(f"HeadsConfig.mask_dim={self.mask_dim} must be 0 (= hidden_size) or a positive "
                             "multiple of 8 (the pixel embeddings normalise in 8 groups)")
        for part in ("geometry", "encoder", "decoder", "mask"):
            heads = getattr(self, f"{part}_heads")
            if heads < 1 or self.hidden_size % heads:
                raise ValueError(f"HeadsConfig.{part}_heads={heads} must divide hidden_size={self.hidden_size}")
        # GroupNorm(8, C) in the pixel decoder and sin/cos pairs in the position encodings.
        if self.hidden_size % 8:
            raise ValueError(f"HeadsConfig.hidden_size={self.hidden_size} must be a multiple of 8 "
                             "(the pixel decoder normalises in 8 groups)")
        if self.decoder_layers < 1 or self.num_queries < 1:
            raise ValueError(f"HeadsConfig needs decoder_layers >= 1 and num_queries >= 1, got "
                             f"{self.decoder_layers} and {self.num_queries}")
        if self.mask_upsampling_stages < 2:
            raise ValueError(f"HeadsConfig.mask_upsampling_stages={self.mask_upsampling_stages}: the heads take 3 "
                             "FPN levels, so the pixel decoder needs at least 2 stages")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"HeadsConfig.activation={self.activation!r} is not one of {ACTIVATIONS}")

    @classmethod
    def from_sam3_config(cls, cfg) -> HeadsConfig:
        """The heads of a transformers ``Sam3Config`` (or a ``Sam3Model.config``)."""
        geo, enc, dec, mask = (cfg.geometry_encoder_config, cfg.detr_encoder_config, cfg.detr_decoder_config,
                               cfg.mask_decoder_config)
        widths = {c.model_type: c.hidden_size for c in (geo, enc, dec, mask)}
        if len(set(widths.values())) != 1:
            raise ValueError(f"SAM3 heads of different widths are not supported: {widths}")
        shared = {c.model_type: (c.hidden_act, float(c.dropout), float(c.hidden_dropout)) for c in (geo, enc, dec)}
        if len(set(shared.values())) != 1:
            raise ValueError(f"the geometry encoder and DETR encoder/decoder of this Sam3Config differ in "
                             f"(activation, dropout, hidden_dropout): {shared}; HeadsConfig shares them")
        act, dropout, ffn_dropout = shared[geo.model_type]
        return cls(hidden_size=dec.hidden_size, geometry_layers=geo.num_layers, geometry_heads=geo.num_attention_heads,
                   geometry_ffn_size=geo.intermediate_size, roi_size=geo.roi_size, encoder_layers=enc.num_layers,
                   encoder_heads=enc.num_attention_heads, encoder_ffn_size=enc.intermediate_size,
                   decoder_layers=dec.num_layers, decoder_heads=dec.num_attention_heads,
                   decoder_ffn_size=dec.intermediate_size, num_queries=dec.num_queries,
                   mask_heads=mask.num_attention_heads, mask_upsampling_stages=mask.num_upsampling_stages,
                   activation=act, dropout=dropout, ffn_dropout=ffn_dropout, mask_dropout=float(mask.dropout))

    @property
    def pixel_dim(self) -> int:
        """Channels of the fast heads' shared pixel embeddings."""
        return self.mask_dim or self.hidden_size

    @property
    def in_width(self) -> int:
        """Width of the text / prompt features and of the coarsest FPN level the heads take (``input_dim``)."""
        return self.input_dim or self.hidden_size

    @property
    def fpn_widths(self) -> tuple[int, int, int]:
        """Channels of the 3 FPN levels (strides 4, 8, 16) the heads consume: ``hidden_size`` each, except for
        fast heads with narrow pixel embeddings (``mask_dim`` > 0), whose two fine levels feed only the pixel
        path and so carry ``mask_dim`` channels: at 256 channels the stride-4 and stride-8 neck cost edge-s-fast
        1.3 GFLOPs a frame, as much as half its backbone, to be narrowed to 64 right after. The coarsest level
        has ``in_width`` channels."""
        d = self.in_width
        return (self.mask_dim, self.mask_dim, d) if self.head_type == "fast" and self.mask_dim else (d, d, d)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> HeadsConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error (a config from another version)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown HeadsConfig fields {unknown}; expected a subset of {sorted(known)}")
        return cls(**data)
