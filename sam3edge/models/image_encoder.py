"""Student image encoder: a timm backbone + a light FPN neck -> the 3 levels SAM3's heads consume.

SAM3's vision neck gives the heads three levels in the ratio 4:2:1 (4g, 2g, g for a g x g patch
grid) at width C, each with a sine position encoding. The student gives the same at strides 4, 8
and 16 of its input: for S px, [B, C, S/4, S/4], [B, C, S/8, S/8], [B, C, S/16, S/16].

Neck: a 1x1 lateral conv per backbone level (strides 4, 8, 16 and, for context, 32), a top-down
path (nearest x2 upsample + add, as in FPN) and a depthwise 3x3 per output level, followed by a
pointwise 1x1 at strides 8 and 16. Not a dense 3x3: at stride 4 and C=256 that costs ~9.7 GMAC at
512 px, more than the whole backbone; and not a pointwise conv at stride 4 either (see FpnNeck).
Heads whose fine levels feed only a narrow pixel path (fast heads with ``mask_dim`` > 0,
``HeadsConfig.fpn_widths``) get those levels at that width: their laterals are narrow and the top-down
path is projected (1x1) to the narrow width before it is upsampled, so no head-wide map is ever
computed at strides 4 and 8 (edge-s-fast's image graph: 4.4 -> 2.9 GFLOPs at 512 px).
If a backbone has no stride-4 level (or ``backbone_strides`` leaves it out), the stride-4 output
is the stride-8 merged map upsampled x2 (then it adds resolution, not information).
Upsampling uses ``scale_factor=2`` (not a size taken from a tensor) so export graphs stay static;
that is why inputs must be multiples of 32 (the coarsest stride used).

Feature strides (timm 1.0.31 ``feature_info.reduction()``): RepViT, EfficientViT (MIT), TinyViT
[4, 8, 16, 32]; MobileNetV4 [2, 4, 8, 16, 32] (its stride-2 level is skipped). TinyViT in this timm
takes no ``img_size``: its windowed attention pads to the window, so any multiple of 32 works.
Backbone parameters are those of the features-only model (no classifier head).

Measured 2026-11 on the 2-core dev CPU (torch 2.14.1, timm 1.0.31, 1 thread, nice 19, while a
training job held the machine at load ~5.5, so latencies are noisy upper bounds), C=256, one
512x512 image, median of 7 after 1 warm-up:
    OMP_NUM_THREADS=1 nice -n 19 .venv/bin/python -m sam3edge.models.image_encoder --bench --repeats 7
backbone                 params backbone + neck   encoder ms   of which backbone ms
repvit_m0_9                     4.72 M + 0.32 M        507          332
repvit_m1_1                     7.77 M + 0.39 M        590          469
efficientvit_b0                 0.68 M + 0.20 M        185           67
efficientvit_b1                 4.64 M + 0.26 M        406          171
tiny_vit_5m_224                 5.07 M + 0.31 M        920          728
mobilenetv4_conv_small          1.26 M + 0.44 M        168           63
The neck (encoder minus backbone, ~100-200 ms here) is mostly stride-4 work on 128x128x256 maps;
timed alone the same way: depthwise 3x3 39 ms, nearest x2 upsample 17 ms, position encoding 9 ms
(a pointwise 1x1 there would add 54 ms, hence none).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from sam3edge.models.position_encoding import position_encodings_like

OUTPUT_STRIDES = (4, 8, 16)
CONTEXT_STRIDE = 32
INPUT_MULTIPLE = 32


@dataclass
class ImageFeatures:
    """The levels SAM3's heads consume, finest first: levels[i] and pos[i] are [B, C, S/4/2^i, S/4/2^i]."""

    levels: list[torch.Tensor]
    pos: list[torch.Tensor]


# so torch.export / dynamo can trace a module that returns it
torch.export.register_dataclass(ImageFeatures, serialized_type_name="sam3edge.ImageFeatures")


def _output_conv(width: int, pointwise: bool) -> nn.Sequential:
    """Depthwise 3x3 (smooths the nearest upsampling) [+ pointwise 1x1]: ~1/9 of a dense 3x3's cost."""
    depthwise = nn.Conv2d(width, width, 3, padding=1, groups=width)
    return nn.Sequential(depthwise, nn.Conv2d(width, width, 1)) if pointwise else nn.Sequential(depthwise)


class FpnNeck(nn.Module):
    """Backbone maps at ``in_strides`` -> maps at strides 4, 8, 16 (see the module docstring).

    widths: channels of the three outputs (default ``width`` each). A narrower fine level (fast heads'
    pixel path) gets its lateral at that width and the coarser merged map projected to it by a 1x1 conv
    (``narrow``) before the upsampling, so no wide map exists at that stride; the context level (stride 32)
    has the stride-16 width.
    """

    def __init__(self, in_channels: list[int], in_strides: list[int], width: int,
                 widths: tuple[int, int, int] | None = None):
        super().__init__()
        if 8 not in in_strides or 16 not in in_strides or any(b != 2 * a for a, b in zip(in_strides, in_strides[1:])):
            raise ValueError(f"the neck needs consecutive backbone strides (each twice the last) including 8 and "
                             f"16, got {in_strides}")
        widths = tuple(widths or (width,) * len(OUTPUT_STRIDES))
        if len(widths) != len(OUTPUT_STRIDES) or any(w < 4 or w % 4 for w in widths):
            raise ValueError(f"neck widths must be {len(OUTPUT_STRIDES)} multiples of 4 (strides {OUTPUT_STRIDES}), "
                             f"got {widths}")
        self.in_strides = list(in_strides)
        self.widths = dict(zip(OUTPUT_STRIDES, widths)) | {CONTEXT_STRIDE: widths[-1]}
        self.lateral = nn.ModuleList(nn.Conv2d(c, self.widths[s], 1) for c, s in zip(in_channels, in_strides))
        # 1x1 projections where the top-down path enters a narrower level (keyed by that level's stride)
        narrow = {str(s): nn.Conv2d(self.widths[2 * s], self.widths[s], 1) for s in in_strides[:-1]
                  if self.widths[2 * s] != self.widths[s]}
        if 4 not in in_strides and self.widths[4] != self.widths[8]:
            narrow["4"] = nn.Conv2d(self.widths[8], self.widths[4], 1)
        if narrow:  # absent at one width, so checkpoints of the uniform neck keep their keys
            self.narrow = nn.ModuleDict(narrow)
        # No pointwise conv at stride 4: it would be the neck's largest single cost (54 ms timed alone on
        # a 128x128x256 map, 512 px input, 1 thread) and the lateral 1x1 already mixes channels there.
        self.out = nn.ModuleList(_output_conv(w, pointwise=s != 4) for s, w in zip(OUTPUT_STRIDES, widths))

    def _down_to(self, stride: int, x: torch.Tensor) -> torch.Tensor:
        """The merged map of the next coarser level, projected to ``stride``'s width and upsampled x2."""
        if hasattr(self, "narrow") and str(stride) in self.narrow:
            x = self.narrow[str(stride)](x)
        return F.interpolate(x, scale_factor=2.0, mode="nearest")

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        x = self.lateral[-1](feats[-1])
        merged = {self.in_strides[-1]: x}
        for i in range(len(feats) - 2, -1, -1):
            x = self.lateral[i](feats[i]) + self._down_to(self.in_strides[i], x)
            merged[self.in_strides[i]] = x
        if 4 not in merged:  # no stride-4 backbone level: upsample the stride-8 one
            merged[4] = self._down_to(4, merged[8])
        return [conv(merged[s]) for conv, s in zip(self.out, OUTPUT_STRIDES)]


class ImageEncoder(nn.Module):
    """timm backbone + FPN neck with normalisation inside; see the module docstring for shapes.

    backbone: a timm model name (``repvit_m0_9``, ``efficientvit_b0``, ``tiny_vit_5m_224``,
    ``mobilenetv4_conv_small`` ...), always built with ``pretrained=False``. width: the heads'
    width C (multiple of 4). weights_path: optional local timm-layout checkpoint for the backbone.
    backbone_strides: which backbone strides feed the neck (default: those of 4, 8, 16, 32 present).
    mean / std: RGB normalisation in [0, 1] units (default: the backbone's pretraining ones).
    widths: channels of the levels at strides 4, 8, 16 (default ``width`` each; narrower fine levels for
    heads whose fine levels feed only a narrow pixel path, ``HeadsConfig.fpn_widths``).
    """

    def __init__(self, backbone: str, width: int = 256, weights_path: str | Path | None = None,
                 backbone_strides: tuple[int, ...] | None = None, mean: tuple[float, float, float] | None = None,
                 std: tuple[float, float, float] | None = None, widths: tuple[int, int, int] | None = None,
                 **timm_kwargs):
        super().__init__()
        import timm

        if width % 4:
            raise ValueError(f"width must be a multiple of 4 (SAM3's position encoding), got {width}")
        self.backbone_name, self.width = backbone, width
        # Built once with every level to read its strides; rebuilt only if some levels go unused.
        self.backbone = timm.create_model(backbone, pretrained=False, features_only=True, **timm_kwargs)
        info = self.backbone.feature_info
        available = dict(zip(info.reduction(), range(len(info))))
        wanted = sorted(backbone_strides or (s for s in (*OUTPUT_STRIDES, CONTEXT_STRIDE) if s in available))
        missing = [s for s in wanted if s not in available or s not in (*OUTPUT_STRIDES, CONTEXT_STRIDE)]
        if missing:
            raise ValueError(f"timm model {backbone!r} has feature strides {sorted(available)}; strides {missing} "
                             f"were asked for (the neck takes strides among {(*OUTPUT_STRIDES, CONTEXT_STRIDE)})")
        self.backbone_strides = wanted
        out_indices = tuple(available[s] for s in wanted)
        if list(out_indices) != list(range(len(info))):
            self.backbone = timm.create_model(backbone, pretrained=False, features_only=True,
                                              out_indices=out_indices, **timm_kwargs)
        self.neck = FpnNeck(self.backbone.feature_info.channels(), self.backbone_strides, width, widths)
        cfg = self.backbone.pretrained_cfg
        mean = torch.tensor(mean or cfg.get("mean", (0.485, 0.456, 0.406)), dtype=torch.float32)
        std = torch.tensor(std or cfg.get("std", (0.229, 0.224, 0.225)), dtype=torch.float32)
        self.register_buffer("pixel_mean", mean.view(1, 3, 1, 1))
        self.register_buffer("pixel_std", std.view(1, 3, 1, 1))
        if weights_path is not None:
            load_backbone_weights(self.backbone, weights_path, backbone)

    def forward(self, images: torch.Tensor) -> ImageFeatures:
        """images: float RGB [B, 3, H, W] in [0, 1], H and W multiples of 32 -> ImageFeatures."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W] RGB, got shape {tuple(images.shape)}")
        h, w = images.shape[-2:]
        if h % INPUT_MULTIPLE or w % INPUT_MULTIPLE:
            raise ValueError(f"image size {h}x{w} is not a multiple of {INPUT_MULTIPLE} (the backbone's coarsest "
                             f"stride); resize or pad the input, e.g. to {-(-h // 32) * 32}x{-(-w // 32) * 32}")
        x = (images - self.pixel_mean) / self.pixel_std
        levels = self.neck(self.backbone(x))
        return ImageFeatures(levels=levels, pos=position_encodings_like(levels))

    def forward_uint8(self, images: torch.Tensor, channels_last: bool | None = None) -> ImageFeatures:
        """images: uint8 RGB [B, H, W, 3] or [B, 3, H, W] (export graphs take this input).

        channels_last: the layout; None infers it (last dim 3 and second dim not 3 -> [B, H, W, 3]).
        """
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"expected uint8 [B, H, W, 3] or [B, 3, H, W], got {images.dtype} "
                             f"{tuple(images.shape)}")
        if channels_last is None:
            channels_last = images.shape[-1] == 3 and images.shape[1] != 3
        if channels_last:
            images = images.permute(0, 3, 1, 2)
        return self.forward(images.to(self.pixel_mean.dtype) / 255.0)


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from safetensors or a torch checkpoint (plain, or under state_dict / model / *_ema)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"backbone weights file {path} does not exist; pass a local timm checkpoint "
                                "(.safetensors or .pth/.bin) or weights_path=None for random initialisation")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # safetensors / pickle raise many types for a damaged or foreign file
        raise ValueError(f"could not read backbone weights {path}: {type(e).__name__}: {e}") from e
    for key in ("state_dict_ema", "model_ema", "state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
            break
    if not isinstance(sd, dict) or not all(torch.is_tensor(v) for v in sd.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def _canonical(key: str) -> str:
    # timm's FeatureListNet renames top-level containers ("stages.0" -> "stages_0"); comparing keys
    # with "." and "_" unified maps a full model's keys onto the features-only model's.
    return key.removeprefix("backbone.").replace(".", "_")


def load_backbone_weights(backbone: nn.Module, path: str | Path, name: str) -> None:
    """Load a timm-layout checkpoint (the full classifier model's, or a features-only one) into ``backbone``.

    Classifier / head tensors the features-only model lacks are ignored; every backbone tensor must
    be present with the right shape (BatchNorm ``num_batches_tracked`` counters excepted), otherwise
    a ValueError says how many are missing or mismatched, so a checkpoint of another model never
    loads silently. Checkpoints in an original (non-timm) repository layout are not remapped.
    """
    sd = read_checkpoint(path)
    index: dict[str, list[str]] = {}
    for k in sd:
        index.setdefault(_canonical(k), []).append(k)
    new, missing, mismatched = {}, [], []
    for key, ref in backbone.state_dict().items():
        found = index.get(_canonical(key), [])
        if len(found) != 1:
            if not key.endswith("num_batches_tracked"):
                missing.append(key)
            continue
        value = sd[found[0]]
        if value.shape != ref.shape:
            mismatched.append(f"{key} {tuple(value.shape)} vs {tuple(ref.shape)}")
            continue
        new[key] = value
    if missing or mismatched:
        raise ValueError(f"{path} does not fit timm model {name!r}: {len(missing)} backbone tensors missing "
                         f"(e.g. {missing[:3]}), {len(mismatched)} with other shapes (e.g. {mismatched[:3]}); "
                         "is it a checkpoint of this exact model in timm's layout?")
    backbone.load_state_dict(new, strict=False)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


BENCH_BACKBONES = ("repvit_m0_9", "repvit_m1_1", "efficientvit_b0", "efficientvit_b1", "tiny_vit_5m_224",
                   "mobilenetv4_conv_small")


def _median_ms(fn, x, repeats: int) -> float:
    import time

    times = []
    with torch.inference_mode():
        for _ in range(repeats + 1):  # the first call (allocation, lazy init) is not counted
            t = time.perf_counter()
            fn(x)
            times.append(time.perf_counter() - t)
    return sorted(times[1:])[repeats // 2] * 1e3


def _bench(names, size: int, width: int, repeats: int) -> None:
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), C={width}, {size}x{size}, batch 1")
    print(f"{'backbone':24s} {'params backbone + neck':>24s} {'encoder ms':>11s} {'backbone ms':>12s}")
    for name in names:
        enc = ImageEncoder(name, width=width).eval()
        x = torch.rand(1, 3, size, size)
        full, trunk = _median_ms(enc, x, repeats), _median_ms(enc.backbone, x, repeats)
        params = f"{count_parameters(enc.backbone) / 1e6:.2f} M + {count_parameters(enc.neck) / 1e6:.2f} M"
        print(f"{name:24s} {params:>24s} {full:11.1f} {trunk:12.1f}")


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="Parameter count and CPU latency of student image encoders")
    ap.add_argument("--bench", action="store_true", help="measure (the only action; kept explicit)")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("backbones", nargs="*", default=list(BENCH_BACKBONES))
    args = ap.parse_args()
    _bench(args.backbones, args.size, args.width, args.repeats)
