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


class OrchardBatches:
    """Infinite, indexable stream of :class:`PairBatch` of orchard scenes.

    Each image asks ``pairs_per_image`` phrases: positives first (concepts with instances, by a
    synonym ``synonym_rate`` of the time), then hard negatives (absent concepts, distractors), with at
    least ``min_negatives`` negatives so presence learns both answers.
    """

    def __init__(self, tokenizer, seed: int = 0, images_per_batch: int = 4, pairs_per_image: int = 4,
                 image_size: int = 224, mask_size: tuple[int, int] = (64, 64), synonym_rate: float = 0.3,
                 min_negatives: int = 1, flip: bool = True):
        self.tokenizer = tokenizer
        self.seed, self.b, self.p = seed, images_per_batch, pairs_per_image
        self.size, self.mask_size = image_size, mask_size
        self.synonym_rate, self.min_negatives, self.flip = synonym_rate, min_negatives, flip

    def __getitem__(self, step: int) -> PairBatch:
        images, phrases, targets, pair_image = [], [], [], []
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
            for p in chosen:
                m = torch.from_numpy(np.ascontiguousarray(p.masks[:, :, ::-1] if flip else p.masks))
                targets.append(masks_to_target(m, self.mask_size))
                phrases.append(p.phrase)
                pair_image.append(j)
        x = sam3_pixel_values(torch.stack(images))
        ids, mask = self.tokenizer.encode(phrases)
        return PairBatch(x, torch.from_numpy(ids), torch.from_numpy(mask), torch.tensor(pair_image), targets, phrases)
