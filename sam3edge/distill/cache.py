"""The teacher cache: run the teacher once over the domain, store what distillation needs.

On-disk format (``CACHE_FORMAT`` 1), a directory::

    cache.json            what the cache was built from (teacher, images, phrases, sizes) + format
    text.safetensors      features [P, L, D] fp16 and mask [P, L] uint8: the teacher's projected text
                          embedding of every phrase (also the student's concept cache)
    items/000/000123.safetensors   one file per image, random access by index:
        feature.0 .. feature.2  fp16 [C, h, w]  FPN levels the heads consume, finest first
                                (resampled to ``feature_sizes`` when given: the student's grid)
        presence     fp32 [P]          teacher presence probability of each phrase
        count        int32 [P]         instances kept per phrase (rows beyond it are padding)
        scores       fp32 [P, K]       SAM3 scores (sigmoid(logit) x presence) of the kept queries
        boxes        fp32 [P, K, 4]    normalised xyxy
        mask_logits  fp16 [P, K, m, m] low-resolution mask logits
        image_size   int32 [2]         (H, W) of the original image
    and, built with exemplar prompts (``extra["exemplars"]``, :func:`build_cache`), the same five answers per
    phrase to the phrase + a positive box (``ex_*``), the box alone (``vis_*``) and the phrase + a negative box
    (``neg_*``), with ``ex_box`` / ``neg_box`` fp32 [P, 4] (normalised xyxy) and ``ex_valid`` uint8 [P]

Queries are kept per phrase in score order while their score is at least ``min_score``, at most
``max_instances`` of them: the teacher's pseudo-labels, not its 200 raw queries (at 1008 px the raw
mask logits alone would be ~66 MB per phrase and image).

Each item is written atomically, so a killed build leaves only whole items; building again with the
same inputs skips them (resume). Under ``torchrun`` rank r builds items i with i % world == r; every
rank writes the same ``cache.json`` and ``text.safetensors`` (identical bytes, atomic), so no
barrier is needed. A cache built from other inputs is refused, never mixed.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

from sam3edge.atomic import atomic_write, atomic_write_text
from sam3edge.models.heads.layers import xyxy_to_cxcywh
from sam3edge.runtime.exemplars import VISUAL

CACHE_FORMAT = 1
# ``extra["exemplars"]`` of a cache built with exemplar prompts: 1, the teacher's answers to a positive box (with the
# phrase, alone); 2, also to a negative box (``neg_*``). A build of 2 never resumes one of 1: other inputs.
EXEMPLAR_ANSWERS = 2


@dataclass
class CacheSpec:
    """What a cache is built from; a resumed build must match it exactly."""

    teacher: str
    teacher_config_sha: str
    image_size: int
    images: list[str]
    phrases: list[str]
    feature_sizes: list[int] | None = None
    mask_size: int = 64
    min_score: float = 0.05
    max_instances: int = 20
    format: int = CACHE_FORMAT
    extra: dict = field(default_factory=dict)


def _config_sha(teacher) -> str:
    return hashlib.sha256(teacher.config.to_json_string().encode()).hexdigest()[:16]


def dist_rank_world() -> tuple[int, int]:
    """(rank, world size) from an initialised process group, else torchrun's environment, else (0, 1)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def item_path(root: Path, index: int) -> Path:
    return Path(root) / "items" / f"{index // 1000:03d}" / f"{index:06d}.safetensors"


def item_bytes(feature_shapes: list[tuple[int, int, int]], phrases: int, max_instances: int, mask_size: int) -> int:
    """Bytes of one cached image (tensor payload; safetensors headers add ~1 KB)."""
    feats = sum(c * h * w for c, h, w in feature_shapes) * 2
    per_phrase = 4 + 4 + max_instances * (4 + 16 + mask_size * mask_size * 2)
    return feats + phrases * per_phrase + 8


def teacher_feature_shapes(config, feature_sizes: list[int] | None = None) -> list[tuple[int, int, int]]:
    """(C, h, w) of the FPN levels a teacher with ``config`` (a ``Sam3Config``) hands its heads."""
    vc = config.vision_config
    grid = vc.backbone_config.image_size // vc.backbone_config.patch_size
    c = vc.fpn_hidden_size
    sizes = feature_sizes or [int(grid * s) for s in vc.scale_factors[:-1]]
    return [(c, s, s) for s in sizes]


class TeacherCache:
    """Read access to a cache directory (see the module docstring)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        meta = self.root / "cache.json"
        if not meta.is_file():
            raise FileNotFoundError(f"{self.root} is not a teacher cache (no cache.json); build one with "
                                    "sam3edge.distill.cache.build_cache or `sam3edge distill`")
        data = read_json(meta, "delete the cache directory and build it again")
        if data.get("format") != CACHE_FORMAT:
            raise ValueError(f"{meta}: cache format {data.get('format')!r}, this sam3edge reads format "
                             f"{CACHE_FORMAT}; build the cache again")
        self.spec = CacheSpec(**data)
        self.phrase_index = {p: i for i, p in enumerate(self.spec.phrases)}
        self._text = None

    def __len__(self) -> int:
        return len(self.spec.images)

    def missing(self) -> list[int]:
        """Indices of images whose item is not written yet (an interrupted build)."""
        return [i for i in range(len(self)) if not item_path(self.root, i).is_file()]

    def text(self, phrases: list[str] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher text features [P, L, D] (fp16) and mask [P, L] (bool) of ``phrases`` (default: all)."""
        if self._text is None:
            path = self.root / "text.safetensors"
            self._text = _load(path)
        idx = [self._index(p) for p in (phrases if phrases is not None else self.spec.phrases)]
        return self._text["features"][idx], self._text["mask"][idx].bool()

    def visual_text(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher text features [1, L, D] and mask [1, L] of "visual" (SAM3's phrase for boxes alone), stored by
        a build with exemplars."""
        if self._text is None:
            self._text = _load(self.root / "text.safetensors")
        if "visual_features" not in self._text:
            raise KeyError(f"the cache {self.root} was built without exemplar prompts: no 'visual' text features")
        return self._text["visual_features"], self._text["visual_mask"].bool()

    def _index(self, phrase: str) -> int:
        try:
            return self.phrase_index[phrase]
        except KeyError:
            raise KeyError(f"phrase {phrase!r} is not in the cache {self.root} (it has: "
                           f"{', '.join(self.spec.phrases)})") from None

    def item(self, index: int, keys: tuple[str, ...] | None = None) -> dict[str, torch.Tensor]:
        """Tensors of image ``index`` (names and shapes: module docstring); only ``keys`` when given (no I/O
        for the rest)."""
        if not 0 <= index < len(self):
            raise IndexError(f"cache {self.root} has {len(self)} images, asked for index {index}")
        path = item_path(self.root, index)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: image {index} ({self.spec.images[index]}) is not cached yet; "
                                    "run the build again to finish it")
        return _load(path, keys)

    def features(self, index: int) -> list[torch.Tensor]:
        item = self.item(index, tuple(f"feature.{k}" for k in range(3)))
        return [item[f"feature.{k}"] for k in range(3)]

    def bytes_per_image(self) -> float:
        files = [item_path(self.root, i) for i in range(len(self))]
        sizes = [f.stat().st_size for f in files if f.is_file()]
        return float(np.mean(sizes)) if sizes else 0.0


def read_json(path: Path, advice: str) -> dict:
    """A JSON metadata file of a cache or run directory; a ValueError naming it and ``advice`` if unreadable."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e}); {advice}") from e


def _load(path: Path, keys: tuple[str, ...] | None = None) -> dict[str, torch.Tensor]:
    try:
        if keys is None:
            return load_file(str(path))
        with safe_open(str(path), framework="pt") as f:
            missing = [k for k in keys if k not in f.keys()]
            if missing:
                raise ValueError(f"missing tensors {missing}")
            return {k: f.get_tensor(k) for k in keys}
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{path}: unreadable cache file ({e}); delete it and build the cache again "
                         "(the build resumes and rewrites only what is missing)") from e


def _check_spec(root: Path, spec: CacheSpec) -> None:
    meta = root / "cache.json"
    if not meta.is_file():
        return
    old = read_json(meta, f"delete {root} to rebuild the cache")
    new = asdict(spec)
    diff = [k for k in new if old.get(k) != new[k]]
    if diff:
        raise ValueError(f"{root} holds a teacher cache built from different inputs ({', '.join(diff)} differ); "
                         "use another output directory or delete this one")


@torch.no_grad()
def build_cache(teacher, images: list, phrases: list[str], out: str | Path, *, batch_size: int = 1,
                feature_sizes: list[int] | None = None, mask_size: int | None = None, min_score: float = 0.05,
                max_instances: int = 20, phrase_chunk: int = 16, teacher_name: str | None = None,
                rank: int | None = None, world: int | None = None, progress: bool = True,
                exemplars: bool = False) -> TeacherCache:
    """Run ``teacher`` (a :class:`~sam3edge.models.teacher.Sam3Teacher`) over ``images`` (paths) for ``phrases``.

    ``exemplars``: for each phrase the teacher finds (best score >= 0.5), also its answers with that best instance's
    box as a positive exemplar, with the phrase (keys ``ex_*``; ``ex_box`` normalised xyxy, ``ex_valid``) and alone
    (phrase "visual", keys ``vis_*``; its text features in ``text.safetensors``), and with the phrase and a
    *negative* box on one of the instances it finds (score >= 0.5), drawn at random per image and phrase (keys
    ``neg_*``, ``neg_box``): a user striking out what the phrase found, whether a look-alike it should not have
    found or one kind of a broad concept ("apple", not this kind). So a student learns all three prompts from the
    teacher (SAM3's "1 exemplar" setting, its visual prompt and its negatives) with no ground truth needed.

    Writes the cache directory ``out`` (module docstring); resumes an interrupted build of the same
    inputs. ``feature_sizes``: square sizes to resample the three FPN levels to (the student's grid,
    e.g. [S/4, S/8, S/16]); ``mask_size`` defaults to the teacher's finest FPN level.
    Returns the cache (complete for this rank's share).
    """
    from sam3edge.data.images import load_image
    from sam3edge.models.sam3_heads import run_heads, select_images

    phrases = [str(p) for p in phrases]
    if not phrases:
        raise ValueError("no phrases to cache: give at least one concept, e.g. ['ripe apple']")
    if len(set(phrases)) != len(phrases):
        raise ValueError(f"duplicate phrases in {phrases}: give each concept once")
    if not images:
        raise ValueError("no images to cache")
    if rank is None or world is None:
        rank, world = dist_rank_world()
    out = Path(out)
    shapes = teacher_feature_shapes(teacher.config, feature_sizes)
    mask_size = int(mask_size or shapes[0][1])
    spec = CacheSpec(teacher=str(teacher_name or getattr(teacher, "source", "teacher")),
                     teacher_config_sha=_config_sha(teacher), image_size=teacher.image_size,
                     images=[str(Path(p).resolve()) for p in images], phrases=phrases,
                     feature_sizes=list(feature_sizes) if feature_sizes else None, mask_size=mask_size,
                     min_score=float(min_score), max_instances=int(max_instances),
                     extra={"exemplars": EXEMPLAR_ANSWERS} if exemplars else {})
    _check_spec(out, spec)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "cache.json", json.dumps(asdict(spec), indent=1))

    text, text_mask = teacher.encode_text(phrases)
    visual = teacher.encode_text([VISUAL]) if exemplars else None
    if not (out / "text.safetensors").is_file():
        tensors = {"features": text.half().cpu().contiguous(), "mask": text_mask.to(torch.uint8).cpu()}
        if visual is not None:
            tensors |= {"visual_features": visual[0].half().cpu().contiguous(),
                        "visual_mask": visual[1].to(torch.uint8).cpu()}
        payload = save(tensors)
        atomic_write(out / "text.safetensors", lambda f: f.write(payload))

    for stray in (out / "items").glob("*/.*.tmp"):  # what a killed build left mid-write (never a whole item)
        index = int(stray.name.split(".")[1]) if stray.name.split(".")[1].isdigit() else -1
        if index % world == rank or index < 0:
            stray.unlink(missing_ok=True)
    todo = [i for i in range(rank, len(images), world) if not item_path(out, i).is_file()]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), desc=f"teacher cache{f' rank {rank}' if world > 1 else ''}", unit="img")
    for s in range(0, len(todo), batch_size):
        idx = todo[s:s + batch_size]
        arrays = [load_image(images[i]) for i in idx]
        pixel_values, sizes = teacher.preprocess(arrays)
        vision = teacher.encode_images(pixel_values)
        for b, i in enumerate(idx):
            tensors = _item_tensors(teacher, vision, b, text, text_mask, shapes, mask_size, min_score,
                                    max_instances, phrase_chunk, run_heads, select_images, visual, index=i)
            tensors["image_size"] = torch.tensor(sizes[b], dtype=torch.int32)
            payload = save(tensors)
            atomic_write(item_path(out, i), lambda f, data=payload: f.write(data))
        if bar is not None:
            bar.update(len(idx))
    if bar is not None:
        bar.close()
    return TeacherCache(out)


def _item_tensors(teacher, vision, b, text, text_mask, shapes, mask_size, min_score, max_instances, phrase_chunk,
                  run_heads, select_images, visual=None, index: int = 0) -> dict[str, torch.Tensor]:
    """Entry of image ``index``; ``visual``: ("visual" text features, mask) for the exemplar answers (None: none)."""
    p = text.shape[0]
    tensors: dict[str, torch.Tensor] = {}
    for k, (feat, (_, h, w)) in enumerate(zip(vision.fpn_hidden_states[:-1], shapes)):
        f = feat[b:b + 1].float()
        if tuple(f.shape[-2:]) != (h, w):
            f = F.interpolate(f, size=(h, w), mode="bilinear", align_corners=False, antialias=f.shape[-1] > w)
        tensors[f"feature.{k}"] = f[0].half().cpu().contiguous()
    device = text.device
    answers = _Answers(p, max_instances, mask_size, min_score)
    for s in range(0, p, phrase_chunk):
        tt = torch.arange(s, min(p, s + phrase_chunk), device=device)
        ii = torch.full_like(tt, b)
        answers.add(tt.tolist(), run_heads(teacher.model, select_images(vision, ii), text[tt], text_mask[tt]))
    tensors.update(answers.tensors())
    if visual is not None:  # each found phrase again with its best instance's box (with the phrase, and alone)
        # and with a negative box on one of its instances
        found = [j for j in range(p) if answers.count[j] and answers.scores[j, 0] >= 0.5]
        ex, vis, neg = (_Answers(p, max_instances, mask_size, min_score) for _ in range(3))
        box, neg_box = torch.zeros(p, 4), torch.zeros(p, 4)
        rng = np.random.default_rng([index, 4_000_037])  # the same struck-out instances on a resumed build
        struck = {j: int(rng.integers(int((answers.scores[j] >= 0.5).sum()))) for j in found}
        for s in range(0, len(found), phrase_chunk):
            rows = found[s:s + phrase_chunk]
            tt = torch.tensor(rows, device=device)
            ii = torch.full_like(tt, b)
            xyxy = answers.boxes[tt.cpu(), 0]
            box[tt.cpu()] = xyxy
            neg_box[tt.cpu()] = answers.boxes[tt.cpu(), [struck[j] for j in rows]]
            cxcywh = xyxy_to_cxcywh(xyxy)[:, None].to(device, text.dtype)
            labels = torch.ones(len(tt), 1, dtype=torch.long, device=device)
            images = select_images(vision, ii)
            ex.add(rows, run_heads(teacher.model, images, text[tt], text_mask[tt], cxcywh, labels))
            vt, vm = (v.expand(len(tt), *v.shape[1:]) for v in visual)
            vis.add(rows, run_heads(teacher.model, images, vt, vm, cxcywh, labels))
            neg.add(rows, run_heads(teacher.model, images, text[tt], text_mask[tt],
                                    xyxy_to_cxcywh(neg_box[tt.cpu()])[:, None].to(device, text.dtype), labels * 0))
        valid = torch.zeros(p, dtype=torch.uint8)
        valid[found] = 1
        tensors.update({f"ex_{k}": v for k, v in ex.tensors().items()}, ex_box=box, ex_valid=valid)
        tensors.update({f"vis_{k}": v for k, v in vis.tensors().items()})
        tensors.update({f"neg_{k}": v for k, v in neg.tensors().items()}, neg_box=neg_box)
    return tensors


class _Answers:
    """The teacher's kept instances of P phrases, filled chunk by chunk (best first, at most ``k_max``)."""

    def __init__(self, p: int, k_max: int, mask_size: int, min_score: float):
        self.k_max, self.mask_size, self.min_score = k_max, mask_size, min_score
        self.presence = torch.zeros(p)
        self.count = torch.zeros(p, dtype=torch.int32)
        self.scores = torch.zeros(p, k_max)
        self.boxes = torch.zeros(p, k_max, 4)
        self.masks = torch.full((p, k_max, mask_size, mask_size), -20.0, dtype=torch.float16)

    def add(self, rows: list[int], out) -> None:
        sc = out.scores.float()
        for r, j in enumerate(rows):
            self.presence[j] = out.presence_logits[r, 0].float().sigmoid().cpu()
            order = sc[r].argsort(descending=True)[:self.k_max]
            order = order[sc[r, order] >= self.min_score]
            n = int(order.numel())
            self.count[j] = n
            if n:
                self.scores[j, :n] = sc[r, order].cpu()
                self.boxes[j, :n] = out.boxes[r, order].float().cpu()
                m = out.mask_logits[r, order].float()
                if m.shape[-1] != self.mask_size:
                    m = F.interpolate(m[None], size=(self.mask_size, self.mask_size), mode="bilinear",
                                      align_corners=False)[0]
                self.masks[j, :n] = m.clamp(-20, 20).half().cpu()

    def tensors(self) -> dict[str, torch.Tensor]:
        return dict(presence=self.presence, count=self.count, scores=self.scores, boxes=self.boxes,
                    mask_logits=self.masks)
