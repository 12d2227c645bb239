"""Orchard scenes as (image, phrase) pairs: written to disk in SA-Co layout, or sampled in memory.

Every scene is asked about every concept of the vocabulary (a concept absent from the scene
is a hard negative, as in SA-Co) plus a few distractor phrases that never occur.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from sam3edge.atomic import atomic_write_text
from sam3edge.data.coco import encode_mask
from sam3edge.data.orchard import ORCHARD_VOCABULARY, OrchardScene, render_scene, scene_rng
from sam3edge.data.vocabulary import Vocabulary


@dataclass
class ScenePair:
    """A phrase asked of a scene, with the masks [N, H, W] of the instances it refers to."""

    phrase: str
    masks: np.ndarray
    category_ids: list[int]


def scene_pairs(scene: OrchardScene, rng: np.random.Generator, vocab: Vocabulary = ORCHARD_VOCABULARY,
                distractors: int = 2, synonym_rate: float = 0.0) -> list[ScenePair]:
    """Every concept of ``vocab`` asked of ``scene`` (negatives included) plus ``distractors`` phrases.

    With ``synonym_rate`` > 0 a concept is asked by one of its synonyms that often.
    """
    pairs = []
    for c in vocab.concepts:
        ids = [k for k, cat in enumerate(scene.categories) if cat in c.category_ids]
        masks = scene.instance_map[None] == (np.asarray(ids, dtype=np.int32)[:, None, None] + 1)
        phrase = c.phrase
        if c.synonyms and rng.random() < synonym_rate:
            phrase = c.synonyms[int(rng.integers(len(c.synonyms)))]
        pairs.append(ScenePair(phrase, masks.reshape(len(ids), *scene.instance_map.shape),
                               [scene.categories[k] for k in ids]))
    if distractors and vocab.distractors:
        picks = rng.choice(len(vocab.distractors), size=min(distractors, len(vocab.distractors)), replace=False)
        h, w = scene.instance_map.shape
        pairs += [ScenePair(vocab.distractors[int(i)], np.zeros((0, h, w), bool), []) for i in picks]
    return pairs


def write_orchard_dataset(out: str | Path, n: int = 100, seed: int = 0, size: int = 224,
                          distractors: int = 2, synonym_rate: float = 0.0, progress: bool = True) -> Path:
    """Render ``n`` scenes into ``out/images/`` and write ``out/annotations.json`` (SA-Co layout).

    Returns the annotation file's path. Images are PNG so that colours (the attributes) are exact.
    """
    if n < 1:
        raise ValueError(f"--n must be >= 1, got {n}")
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    vocab = ORCHARD_VOCABULARY
    images, annotations = [], []
    for i in tqdm(range(n), desc="orchard scenes", disable=not progress, unit="img"):
        rng = scene_rng(seed, i)
        scene = render_scene(rng, size)
        file_name = f"images/orchard_{seed}_{i:06d}.png"
        Image.fromarray(scene.image).save(out / file_name)
        for p in scene_pairs(scene, rng, vocab, distractors, synonym_rate):
            pair_id = len(images) + 1
            concept = next((c for c in vocab.concepts if p.phrase == c.phrase or p.phrase in c.synonyms), None)
            images.append({
                "id": pair_id, "file_name": file_name, "width": size, "height": size,
                "text_input": p.phrase, "is_instance_exhaustive": True,
                "queried_category": concept.category_ids[0] if concept and len(concept.category_ids) == 1
                else None,
            })
            for m, cat in zip(p.masks, p.category_ids):
                ys, xs = np.nonzero(m)
                annotations.append({
                    "id": len(annotations) + 1, "image_id": pair_id, "category_id": int(cat),
                    "segmentation": encode_mask(m), "area": int(m.sum()), "iscrowd": 0,
                    "bbox": [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1),
                             int(ys.max() - ys.min() + 1)],
                })
    data = {
        "info": {"description": "sam3edge orchard concept domain", "seed": seed, "n": n, "size": size,
                 "distractors": distractors, "synonym_rate": synonym_rate},
        "images": images, "annotations": annotations,
        "categories": [{"id": k, "name": v} for k, v in vocab.categories.items()],
        "vocabulary": vocab.to_dict(),
    }
    path = out / "annotations.json"
    atomic_write_text(path, json.dumps(data))
    return path
