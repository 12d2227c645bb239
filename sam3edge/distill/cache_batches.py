"""Training batches read from a teacher cache: the teacher's pseudo-labels (and features) per step.

``batches[k]`` depends only on ``(seed, k)`` (as :class:`~sam3edge.distill.scene_batches.OrchardBatches`):
images are drawn epoch by epoch from a seeded permutation, so a resumed run sees exactly the
batches it would have seen. Each image asks ``pairs_per_image`` of the cache's phrases, those the
teacher finds present first, then absent ones (hard negatives), so presence learns both answers.

Targets are soft: a teacher instance (score >= ``target_min_score``) becomes a target with the
teacher's score, its mask probability and box; presence is the teacher's presence probability.
Where ground truth exists (``ground_truth``: file name -> phrase -> boolean masks), it is mixed in:
with probability ``gt_rate`` a pair uses the ground-truth instances instead.

Augmentation preserves concepts (DESIGN.md): a horizontal flip only - no hue change, no crop that
could cut an attribute away. Stage-1 batches (``with_features``) are never flipped: the teacher's
features belong to the unflipped image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from sam3edge.data.images import load_image, resize_batch
from sam3edge.distill.cache import EXEMPLAR_ANSWERS, TeacherCache
from sam3edge.distill.targets import PairBatch, PairTarget, masks_to_target
from sam3edge.models.teacher import sam3_pixel_values
from sam3edge.runtime.exemplars import PADDING_LABEL, VISUAL

PAIR_KEYS = ("presence", "count", "scores", "boxes", "mask_logits")  # what stage 2 reads of an item
# and of a cache with exemplars: the teacher's answers with its best box, with the phrase (ex_) and alone (vis_),
# and (EXEMPLAR_ANSWERS 2) with the phrase and a negative box on one of its instances (neg_)
EXEMPLAR_KEYS = tuple(f"{m}_{k}" for m in ("ex", "vis") for k in PAIR_KEYS) + ("ex_box", "ex_valid")
NEGATIVE_KEYS = tuple(f"neg_{k}" for k in PAIR_KEYS) + ("neg_box",)


@dataclass
class FeatureBatch:
    """Stage-1 batch: images in SAM3 normalisation [B, 3, S, S] and the teacher's levels [B, C, h, w]."""

    pixel_values: torch.Tensor
    targets: list[torch.Tensor]

    def to(self, device) -> FeatureBatch:
        return FeatureBatch(self.pixel_values.to(device), [t.to(device) for t in self.targets])


class CacheBatches:
    """Indexable stream of :class:`PairBatch` (or :class:`FeatureBatch`) from a :class:`TeacherCache`."""

    def __init__(self, cache: TeacherCache, tokenizer, image_size: int, mask_size: int, seed: int = 0,
                 images_per_batch: int = 4, pairs_per_image: int = 4, target_min_score: float = 0.3,
                 flip: bool = True, with_features: bool = False, feature_sizes: list[int] | None = None,
                 ground_truth: dict | None = None, gt_rate: float = 0.5, indices: list[int] | None = None,
                 exemplar_rate: float = 0.0):
        self.cache, self.tokenizer = cache, tokenizer
        # a found phrase is asked with an exemplar prompt this often (target: the teacher's answer to it), in equal
        # shares: the teacher's best instance box as a positive exemplar with the phrase, the same box alone
        # ("visual"), and (a cache of EXEMPLAR_ANSWERS 2) the phrase with a negative box on one of its instances;
        # needs a cache built with exemplars
        self.exemplar_rate = float(exemplar_rate)
        if self.exemplar_rate and not cache.spec.extra.get("exemplars"):
            raise ValueError(f"teacher cache {cache.root} was built without exemplar prompts; rebuild it with "
                             "exemplars (distill --exemplars) or train with exemplar_rate 0")
        negatives = int(cache.spec.extra.get("exemplars", 0)) >= EXEMPLAR_ANSWERS  # a cache of 1: positives only
        self.kinds = ("ex_", "vis_") + (("neg_",) if negatives else ())
        self.size, self.mask_size, self.seed = image_size, mask_size, seed
        self.b, self.p, self.min_score = images_per_batch, pairs_per_image, target_min_score
        self.flip, self.with_features, self.feature_sizes = flip and not with_features, with_features, feature_sizes
        self.gt, self.gt_rate = ground_truth or {}, gt_rate
        self.indices = list(indices) if indices is not None else list(range(len(cache)))
        if not self.indices:
            raise ValueError(f"teacher cache {cache.root} has no images to train on")

    def image_index(self, step: int, j: int) -> int:
        """Cache index of image ``j`` of step ``step``: epoch-wise seeded permutations of the images."""
        k = step * self.b + j
        epoch, pos = divmod(k, len(self.indices))
        perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.indices))
        return self.indices[int(perm[pos])]

    def _image(self, index: int) -> np.ndarray:
        batch, _ = resize_batch([load_image(self.cache.spec.images[index])], self.size)
        return batch[0]

    def __getitem__(self, step: int):
        idx = [self.image_index(step, j) for j in range(self.b)]
        if self.with_features:
            return self._feature_batch(idx)
        rng = np.random.default_rng([self.seed, 1_000_003, step])
        ex_rng = np.random.default_rng([self.seed, 2_000_003, step])  # its own stream: text batches stay the same
        images, phrases, targets, pair_image, boxes = [], [], [], [], []
        keys = PAIR_KEYS + ((EXEMPLAR_KEYS + (NEGATIVE_KEYS if "neg_" in self.kinds else ())) if self.exemplar_rate
                            else ())
        for j, i in enumerate(idx):
            item = self.cache.item(i, keys)  # stage 2 never reads the (large) feature maps
            image = self._image(i)
            flip = self.flip and rng.random() < 0.5
            if flip:
                image = image[:, ::-1]
            images.append(torch.from_numpy(np.ascontiguousarray(image)))
            for p in self._choose_phrases(item, rng):
                phrase = self.cache.spec.phrases[p]
                gt = self.gt.get(self.cache.spec.images[i], {}).get(phrase)
                box = label = None
                if self.exemplar_rate and int(item["ex_valid"][p]) and ex_rng.random() < self.exemplar_rate:
                    kind = self.kinds[int(ex_rng.integers(len(self.kinds)))]
                    t = self._teacher_target(item, p, flip, prefix=kind)
                    phrase = VISUAL if kind == "vis_" else phrase
                    x0, y0, x1, y1 = item["neg_box" if kind == "neg_" else "ex_box"][p].tolist()
                    if flip:
                        x0, x1 = 1.0 - x1, 1.0 - x0
                    box, label = [(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], int(kind != "neg_")
                elif gt is not None and rng.random() < self.gt_rate:
                    t = masks_to_target(torch.from_numpy(np.asarray(gt)), (self.mask_size, self.mask_size))
                    t = _flip_target(t) if flip else t
                else:
                    t = self._teacher_target(item, p, flip)
                targets.append(t)
                phrases.append(phrase)
                pair_image.append(j)
                boxes.append((box, label))
        x = sam3_pixel_values(torch.stack(images))
        ids, mask = self.tokenizer.encode(phrases)
        input_boxes = labels = None
        if any(b is not None for b, _ in boxes):  # one exemplar slot; pairs without one are padding (text only)
            input_boxes = torch.tensor([b or [0.0] * 4 for b, _ in boxes], dtype=torch.float32)[:, None]
            labels = torch.tensor([[PADDING_LABEL if b is None else lab] for b, lab in boxes])
        return PairBatch(x, torch.from_numpy(ids), torch.from_numpy(mask), torch.tensor(pair_image), targets, phrases,
                         input_boxes, labels)

    def _choose_phrases(self, item: dict, rng: np.random.Generator) -> list[int]:
        present = item["presence"].numpy() > 0.5
        pos, neg = np.flatnonzero(present), np.flatnonzero(~present)
        rng.shuffle(pos)
        rng.shuffle(neg)
        n_neg = min(len(neg), max(1, self.p - len(pos)))
        chosen = list(pos[: self.p - n_neg]) + list(neg[:n_neg])
        return [int(c) for c in chosen[: self.p]]

    def _teacher_target(self, item: dict, p: int, flip: bool, prefix: str = "") -> PairTarget:
        n = int(item[prefix + "count"][p])
        scores = item[prefix + "scores"][p, :n]
        keep = scores >= self.min_score
        boxes = item[prefix + "boxes"][p, :n][keep].float()
        logits = item[prefix + "mask_logits"][p, :n][keep].float()
        if logits.shape[0] and logits.shape[-1] != self.mask_size:
            logits = F.interpolate(logits[None], size=(self.mask_size, self.mask_size), mode="bilinear",
                                   align_corners=False)[0]
        masks = logits.sigmoid() if logits.shape[0] else torch.zeros(0, self.mask_size, self.mask_size)
        t = PairTarget(boxes, masks, scores[keep].float(), float(item[prefix + "presence"][p]), teacher=True)
        return _flip_target(t) if flip else t

    def _feature_batch(self, idx: list[int]) -> FeatureBatch:
        images = [torch.from_numpy(np.ascontiguousarray(self._image(i))) for i in idx]
        levels = []
        for i in idx:
            feats = [f.float() for f in self.cache.features(i)]
            if self.feature_sizes:
                feats = [f if f.shape[-1] == s else F.interpolate(f[None], size=(s, s), mode="bilinear",
                                                                  align_corners=False, antialias=f.shape[-1] > s)[0]
                         for f, s in zip(feats, self.feature_sizes)]
            levels.append(feats)
        targets = [torch.stack([lv[k] for lv in levels]) for k in range(len(levels[0]))]
        return FeatureBatch(sam3_pixel_values(torch.stack(images)), targets)


def _flip_target(t: PairTarget) -> PairTarget:
    boxes = t.boxes.clone()
    if boxes.shape[0]:
        boxes[:, [0, 2]] = 1.0 - t.boxes[:, [2, 0]]
    return PairTarget(boxes, t.masks.flip(-1), t.scores, t.present, t.teacher)
