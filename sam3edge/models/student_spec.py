"""What a student is, as data: image encoder, heads, text path and export defaults in one spec.

A :class:`StudentSpec` fixes every shape of a :class:`~sam3edge.models.student.Sam3Student` and the
metadata downstream code needs (input size, normalisation, default text mode, export precision
and top-K, which teacher it is distilled from), so nothing re-derives them from a name. It is
frozen, serialises to plain JSON (``to_dict`` / ``from_dict``) and is what ``config.json`` of a
saved student holds. Registry entries live in :mod:`sam3edge.models.registry`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields

from sam3edge.models.heads_config import HeadsConfig
from sam3edge.runtime.names import PRECISIONS

INPUT_MULTIPLE = 32  # the image encoder's coarsest stride (sam3edge.models.image_encoder)
TEXT_MODES = ("cache", "encoder", "both")
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # the pretraining normalisation of every timm backbone registered here
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class TextEncoderConfig:
    """Size of the open-vocabulary text encoder (:class:`~sam3edge.models.text_encoder.StudentTextEncoder`).

    Its output width is always the heads' ``hidden_size``; the token table alone is 49408 x ``width``.
    """

    width: int = 256
    layers: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0

    def __post_init__(self):
        if self.width < 1 or self.layers < 1 or self.heads < 1 or self.width % self.heads:
            raise ValueError(f"TextEncoderConfig: width={self.width} must be a positive multiple of heads="
                             f"{self.heads}, and layers={self.layers} >= 1")


@dataclass(frozen=True)
class ExportDefaults:
    """What ``export`` does with this student unless told otherwise.

    precision: "fp32", "fp16" or "int8". top_k: queries whose masks the decoder graph computes.
    int8_decoder: whether an int8 export quantizes the decoder graph too (the image and text encoders always are);
    None (the default): by head type, :attr:`StudentSpec.int8_decoder`. Fast heads leave it float: their decoder
    is hundreds of small matmuls (128 wide or less), where quantize / dequantize cost more than the integer
    products save. Measured on edge-s-fast at 16 concepts (2 threads, AMX Xeon): OpenVINO 23.9 ms int8 vs
    21.1 ms float (bf16 where the CPU has it), ONNX Runtime 34.4 vs 32.3 ms. SAM3-width heads (a per-concept
    pixel decoder of 256-channel convolutions) gain several times from int8.
    """

    precision: str = "fp16"
    top_k: int = 10
    int8_decoder: bool | None = None

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"ExportDefaults.precision={self.precision!r} is not one of {PRECISIONS}")
        if self.int8_decoder not in (None, True, False):
            raise ValueError(f"ExportDefaults.int8_decoder={self.int8_decoder!r} must be true, false or null")


# Flat override names: "text_width" sets TextEncoderConfig.width, "export_top_k" ExportDefaults.top_k,
# and every HeadsConfig field by its own name (hidden_size, num_queries, encoder_layers ...).
_PARTS = {"text_encoder": ("text_", TextEncoderConfig), "export": ("export_", ExportDefaults)}
_TOP_LEVEL = ("backbone", "input_size", "text_mode", "mean", "std", "teacher", "description")


@dataclass(frozen=True)
class StudentSpec:
    """A student architecture and its metadata.

    name: registry name. backbone: timm model name (built with ``pretrained=False``). input_size:
    square side S in pixels (multiple of 32); the heads see levels of S/4, S/8, S/16 and masks
    come out at S/4 x S/4 (``mask_size``). heads: :class:`HeadsConfig` (its ``hidden_size`` is the
    image neck and text width too). text_encoder: size of the open-vocabulary text encoder.
    text_mode: default text path, "cache" (teacher features of a fixed vocabulary) or "encoder".
    mean / std: RGB normalisation in [0, 1] units, applied inside the image encoder. export:
    default export settings. teacher: what it is distilled from ("orchard-toy", "facebook/sam3"
    or a path). description: one line for listings.
    """

    name: str
    backbone: str
    input_size: int
    heads: HeadsConfig
    text_encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    text_mode: str = "cache"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    export: ExportDefaults = field(default_factory=ExportDefaults)
    teacher: str = "facebook/sam3"
    description: str = ""

    def __post_init__(self):
        s = self.input_size
        if not isinstance(s, int) or isinstance(s, bool) or s < INPUT_MULTIPLE or s % INPUT_MULTIPLE:
            numeric = isinstance(s, (int, float)) and not isinstance(s, bool)
            near = max(INPUT_MULTIPLE, round(s / INPUT_MULTIPLE) * INPUT_MULTIPLE) if numeric else 512
            raise ValueError(f"student {self.name!r}: input_size={s!r} is not a positive multiple of {INPUT_MULTIPLE} "
                             f"(the image encoder's coarsest stride); use e.g. input_size={near}")
        if self.text_mode not in TEXT_MODES:
            raise ValueError(f"student {self.name!r}: text_mode={self.text_mode!r} is not one of {TEXT_MODES}")
        if self.heads.hidden_size % 4:
            raise ValueError(f"student {self.name!r}: hidden_size={self.heads.hidden_size} must be a multiple of 4 "
                             "(SAM3's sine position encoding)")
        if not 1 <= self.export.top_k <= self.heads.num_queries:
            raise ValueError(f"student {self.name!r}: export top_k={self.export.top_k} must be between 1 and "
                             f"num_queries={self.heads.num_queries}; set export_top_k too")
        for what, v in (("mean", self.mean), ("std", self.std)):
            if len(v) != 3 or (what == "std" and min(v) <= 0):
                raise ValueError(f"student {self.name!r}: {what}={v!r} must be 3 RGB values (std > 0)")
        if not self.teacher:
            raise ValueError(f"student {self.name!r}: teacher must name what it is distilled from")

    @property
    def mask_size(self) -> int:
        """Side of the low-resolution masks (the stride-4 level): input_size / 4."""
        return self.input_size // 4

    @property
    def int8_decoder(self) -> bool:
        """Whether an int8 export quantizes the decoder graph: ``export.int8_decoder`` where set, else every head
        type but ``fast`` (see :class:`ExportDefaults`; students saved before the field follow their head type)."""
        chosen = self.export.int8_decoder
        return self.heads.head_type != "fast" if chosen is None else chosen

    # ---- overrides ------------------------------------------------------------------------------
    @staticmethod
    def override_keys() -> list[str]:
        """Every key ``with_overrides`` / ``create_student`` accept."""
        keys = list(_TOP_LEVEL) + [f.name for f in fields(HeadsConfig)]
        for prefix, cls in _PARTS.values():
            keys += [prefix + f.name for f in fields(cls)]
        return keys

    def with_overrides(self, **overrides) -> StudentSpec:
        """A copy with flat ``overrides`` applied (see :meth:`override_keys`); unknown keys are a ValueError."""
        unknown = sorted(set(overrides) - set(self.override_keys()))
        if unknown:
            raise ValueError(f"unknown student override(s) {unknown}; valid keys: {', '.join(self.override_keys())}")
        top = {k: v for k, v in overrides.items() if k in _TOP_LEVEL}
        for key in ("mean", "std"):
            if key in top:
                top[key] = tuple(float(x) for x in top[key])
        heads = {k: v for k, v in overrides.items() if k in {f.name for f in fields(HeadsConfig)}}
        if heads:
            top["heads"] = dataclasses.replace(self.heads, **heads)
        for part, (prefix, _) in _PARTS.items():
            sub = {k[len(prefix):]: v for k, v in overrides.items() if k.startswith(prefix) and k not in _TOP_LEVEL}
            if sub:
                top[part] = dataclasses.replace(getattr(self, part), **sub)
        return dataclasses.replace(self, **top)

    # ---- JSON -----------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """Plain JSON-able dict with every sub-config spelled out."""
        return dataclasses.asdict(self) | {"mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, data: dict) -> StudentSpec:
        """Inverse of :meth:`to_dict`. Unknown or missing fields raise ValueError naming them."""
        if not isinstance(data, dict):
            raise ValueError(f"a student spec must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        missing = sorted(f.name for f in fields(cls) if f.name not in data and f.default is dataclasses.MISSING
                         and f.default_factory is dataclasses.MISSING)
        if unknown or missing:
            raise ValueError(f"student spec fields: unknown {unknown}, missing {missing}; expected {sorted(known)}")
        d = dict(data)
        d["heads"] = HeadsConfig.from_dict(d["heads"])
        for part, (_, sub) in _PARTS.items():
            if part in d:
                names = {f.name for f in fields(sub)}
                if not isinstance(d[part], dict) or set(d[part]) - names:
                    raise ValueError(f"student spec field {part!r}: expected an object with keys among "
                                     f"{sorted(names)}, got {d[part]!r}")
                d[part] = sub(**d[part])
        for key in ("mean", "std"):
            if key in d:
                d[key] = tuple(float(x) for x in d[key])
        return cls(**d)
