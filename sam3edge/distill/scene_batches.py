"""Ground-truth training batches rendered on the fly from the orchard generator.

Batch ``k`` depends only on ``(seed, k)``: a resumed run sees exactly the batches it would
have seen, with no data-loader state to save, and the stream never repeats an image.
"""

from __future__ import annotations

import numpy as np
import torch

from sam3edge.data.orchard import ORCHARD_VOCABULARY, render_scene, scene_rng
from sam3edge.data.orchard_dataset import scene_pairs
from sam3edge.distill.targets import PairBatch, masks_to_target
from sam3edge.models.teacher import sam3_pixel_values
from sam3edge.runtime.exemplars import PADDING_LABEL, VISUAL


class OrchardBatches:
    """Infinite, indexable stream of :class:`PairBatch` of orchard scenes.

    Each image asks ``pairs_per_image`` phrases: positives first (concepts with instances, by a
    synonym ``synonym_rate`` of the time), then hard negatives (absent concepts, distractors), with at
    least ``min_negatives`` negatives so presence learns both answers.

    ``prompt_mix`` = (text, text + exemplars, exemplars alone) probabilities, SAM3's prompt mix: a pair
    with exemplars gets 1-2 positive boxes (instances of its own target) and, half the time, a negative one
    (an instance that is not); boxes alone ask the phrase ``"visual"`` and only for concepts of one
    category (a box on a ripe apple does not say "apples"); a concept absent from the image can get a
    negative box only. Exemplar draws use their own random stream: the scenes and phrases of a batch are
    those of ``prompt_mix=(1, 0, 0)``.

    ``hard_negatives``: how often a negative box goes on a *sibling* instance when the image has one, an instance
    of a category that shares a broader concept with the prompt's (an unripe or bruised apple for "ripe apple",
    via "apple"): the look-alikes a text prompt confuses, where a negative exemplar has something to say. Else
    (and at the default 0, which draws exactly as before) any instance that is not the prompt's.

    ``negative_only``: how often a text + exemplars pair of a present concept gets a negative box alone (when the
    image has an instance that is not the prompt's): the user who only rejects what the phrase wrongly found. With
    positives always beside it, a model learns "a box means more like this" whatever its label (issue 16).

    ``refine``: how often a text + exemplars pair of a broad concept whose instances span two or more categories in
    the image ("apple": ripe, unripe and bruised ones) gets a negative box on one instance of one of them and loses
    *every* instance of that category from its targets ("apple" and a negative box on a bruised one: the ripe and
    unripe apples), with, half the time, a positive box on an instance that stays. SAM3's negative exemplar narrows
    the concept; this is the case where the phrase alone is right to find what the box rejects, so only the
    negative box can say what to drop, and it must drop the matching instances it is not on. Such pairs are marked
    ``PairBatch.refined``: interactive training does not replace their boxes.
    """

    def __init__(self, tokenizer, seed: int = 0, images_per_batch: int = 4, pairs_per_image: int = 4,
                 image_size: int = 224, mask_size: tuple[int, int] = (64, 64), synonym_rate: float = 0.3,
                 min_negatives: int = 1, flip: bool = True, prompt_mix: tuple[float, float, float] = (1, 0, 0),
                 hard_negatives: float = 0.0, negative_only: float = 0.0, refine: float = 0.0):
        self.tokenizer = tokenizer
        self.seed, self.b, self.p = seed, images_per_batch, pairs_per_image
        self.size, self.mask_size = image_size, mask_size
        self.synonym_rate, self.min_negatives, self.flip = synonym_rate, min_negatives, flip
        mix = np.asarray(prompt_mix, float)
        if mix.shape != (3,) or (mix < 0).any() or mix.sum() <= 0:
            raise ValueError(f"prompt_mix must be 3 non-negative weights (text, text + exemplars, exemplars), "
                             f"got {prompt_mix!r}")
        self.prompt_mix = mix / mix.sum()
        if not 0.0 <= float(hard_negatives) <= 1.0:
            raise ValueError(f"hard_negatives is a probability in [0, 1], got {hard_negatives!r}")
        self.hard_negatives = float(hard_negatives)
        if not 0.0 <= float(negative_only) <= 1.0:
            raise ValueError(f"negative_only is a probability in [0, 1], got {negative_only!r}")
        self.negative_only = float(negative_only)
        if not 0.0 <= float(refine) <= 1.0:
            raise ValueError(f"refine is a probability in [0, 1], got {refine!r}")
        self.refine = float(refine)
        self._one_category = {p for c in ORCHARD_VOCABULARY.concepts if len(c.category_ids) == 1
                              for p in (c.phrase, *c.synonyms)}

    def _exemplars(self, rng, scene, pair, flip: bool) -> tuple[str, list, list, set[int]]:
        """(phrase to ask, boxes cxcywh, labels, instances the boxes drop from the targets) of one pair under the
        prompt mix."""
        mode = int(rng.choice(3, p=self.prompt_mix))
        if mode == 0:
            return pair.phrase, [], [], set()
        imap = scene.instance_map
        own = {_instance(scene, m) for m in pair.masks if m.any()}
        others = [k for k in range(len(scene.categories)) if k not in own and (imap == k + 1).any()]
        h, w = imap.shape

        def box(k):
            ys, xs = np.nonzero(imap == k + 1)
            x0, x1 = (xs.min(), xs.max() + 1)
            if flip:
                x0, x1 = w - x1, w - x0
            y0, y1 = ys.min(), ys.max() + 1
            return [(x0 + x1) / 2 / w, (y0 + y1) / 2 / h, (x1 - x0) / w, (y1 - y0) / h]

        kinds = sorted({scene.categories[k] for k in own})
        # at refine 0 (and negative_only 0) no extra draw is made: the stream is the one it was before the option
        if mode == 1 and len(kinds) > 1 and self.refine and rng.random() < self.refine:
            dropped = int(rng.choice(kinds))
            drop = {k for k in own if scene.categories[k] == dropped}
            boxes, labels = [box(int(rng.choice(sorted(drop))))], [0]
            if rng.random() < 0.5:
                boxes.append(box(int(rng.choice(sorted(own - drop)))))
                labels.append(1)
            return pair.phrase, boxes, labels, drop
        boxes, labels = [], []
        neg_only = bool(mode == 1 and own and others and self.negative_only and rng.random() < self.negative_only)
        if own and not neg_only:
            for k in rng.choice(sorted(own), size=min(len(own), int(rng.integers(1, 3))), replace=False):
                boxes.append(box(int(k)))
                labels.append(1)
        if others and (not own or neg_only or rng.random() < 0.5):
            pool = others
            if self.hard_negatives:
                look_alikes = _siblings(pair.phrase)
                siblings = [k for k in others if scene.categories[k] in look_alikes]
                if siblings and rng.random() < self.hard_negatives:
                    pool = siblings
            boxes.append(box(int(rng.choice(pool))))
            labels.append(0)
        phrase = pair.phrase
        if mode == 2 and own and pair.phrase in self._one_category:
            phrase = VISUAL
        return phrase, boxes, labels, set()

    def __getitem__(self, step: int) -> PairBatch:
        images, phrases, targets, pair_image, exemplars, refined = [], [], [], [], [], []
        for j in range(self.b):
            rng = scene_rng(self.seed, step * self.b + j)
            scene = render_scene(rng, self.size)
            pairs = scene_pairs(scene, rng, ORCHARD_VOCABULARY, distractors=2, synonym_rate=self.synonym_rate)
            pos = [p for p in pairs if len(p.masks)]
            neg = [p for p in pairs if not len(p.masks)]
            rng.shuffle(pos)
            rng.shuffle(neg)
            n_pos = min(len(pos), self.p - min(self.min_negatives, len(neg)))
            chosen = pos[:n_pos] + neg[: self.p - n_pos]
            image = scene.image
            flip = self.flip and rng.random() < 0.5  # a mirrored orchard is still an orchard
            if flip:
                image = image[:, ::-1]
            images.append(torch.from_numpy(np.ascontiguousarray(image)))
            ex_rng = np.random.default_rng([self.seed, step, j, 1]) if self.prompt_mix[0] < 1 else None
            for p in chosen:
                phrase, boxes, labels, drop = (p.phrase, [], [], set()) if ex_rng is None else \
                    self._exemplars(ex_rng, scene, p, flip)
                masks = p.masks
                if drop:  # a negative box narrowed the phrase: the rejected category's instances are not targets
                    masks = masks[[not (m.any() and _instance(scene, m) in drop) for m in masks]]
                m = torch.from_numpy(np.ascontiguousarray(masks[:, :, ::-1] if flip else masks))
                targets.append(masks_to_target(m, self.mask_size))
                phrases.append(phrase)
                exemplars.append((boxes, labels))
                refined.append(bool(drop))
                pair_image.append(j)
        x = sam3_pixel_values(torch.stack(images))
        ids, mask = self.tokenizer.encode(phrases)
        k = max(len(b) for b, _ in exemplars)
        input_boxes = input_labels = None
        if k:
            input_boxes = torch.zeros(len(phrases), k, 4)
            input_labels = torch.full((len(phrases), k), PADDING_LABEL, dtype=torch.long)
            for i, (b, lab) in enumerate(exemplars):
                if b:
                    input_boxes[i, :len(b)] = torch.tensor(b, dtype=torch.float32)
                    input_labels[i, :len(b)] = torch.tensor(lab)
        return PairBatch(x, torch.from_numpy(ids), torch.from_numpy(mask), torch.tensor(pair_image), targets, phrases,
                         input_boxes, input_labels, refined if any(refined) else None)


def _instance(scene, mask: np.ndarray) -> int:
    """Index (into ``scene.categories``) of the instance a non-empty pair mask [H, W] is the mask of."""
    return int(scene.instance_map[mask].flat[0]) - 1


def _siblings(phrase: str) -> set[int]:
    """Categories outside ``phrase``'s concept that share a broader concept with it ("unripe apple", "bruised
    apple" for "ripe apple", through "apple"); empty for a phrase outside the vocabulary (a distractor)."""
    try:
        own = set(ORCHARD_VOCABULARY.concept(phrase).category_ids)
    except KeyError:
        return set()
    return {c for concept in ORCHARD_VOCABULARY.concepts if own & set(concept.category_ids)
            for c in concept.category_ids} - own
