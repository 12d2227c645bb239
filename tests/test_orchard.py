"""The orchard domain: deterministic scenes, exact masks, attributes that mean what they say."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sam3edge.data.coco import ConceptDataset, decode_mask
from sam3edge.data.orchard import BRANCH, BRUISED, LEAF, ORCHARD_VOCABULARY, RIPE, UNRIPE, render_scene, scene_rng
from sam3edge.data.orchard_dataset import scene_pairs, write_orchard_dataset


def test_same_seed_and_index_render_the_same_scene_and_others_differ():
    a = render_scene(scene_rng(5, 7), 128)
    b = render_scene(scene_rng(5, 7), 128)
    c = render_scene(scene_rng(5, 8), 128)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.instance_map, b.instance_map)
    assert not np.array_equal(a.image, c.image)


def test_instances_are_disjoint_nonempty_and_numbered_densely():
    for i in range(10):
        s = render_scene(scene_rng(0, i), 160)
        ids = np.unique(s.instance_map)
        assert list(ids[ids > 0]) == list(range(1, len(s.categories) + 1))
        assert all(c in (RIPE, UNRIPE, BRUISED, LEAF, BRANCH) for c in s.categories)


def test_attribute_colours_separate_ripe_from_unripe_apples():
    """'ripe' is red and 'unripe' green: the mean colour of each instance says which it is."""
    red_minus_green = {RIPE: [], UNRIPE: []}
    for i in range(30):
        s = render_scene(scene_rng(1, i), 160)
        for k, cat in enumerate(s.categories):
            if cat in red_minus_green:
                px = s.image[s.instance_map == k + 1].astype(float).mean(0)
                red_minus_green[cat].append(px[0] - px[1])
    assert len(red_minus_green[RIPE]) > 5 and len(red_minus_green[UNRIPE]) > 5
    assert min(red_minus_green[RIPE]) > 20 and max(red_minus_green[UNRIPE]) < 0


def test_scene_pairs_ask_every_concept_and_distractors_with_correct_instances():
    rng = scene_rng(2, 0)
    s = render_scene(rng, 128)
    pairs = scene_pairs(s, rng, distractors=3)
    assert len(pairs) == len(ORCHARD_VOCABULARY.concepts) + 3
    apple = next(p for p in pairs if p.phrase == "apple")
    n_apples = sum(c in (RIPE, UNRIPE, BRUISED) for c in s.categories)
    assert len(apple.masks) == n_apples
    for p in pairs[-3:]:
        assert p.phrase in ORCHARD_VOCABULARY.distractors and len(p.masks) == 0


def test_written_dataset_round_trips_masks_and_has_hard_negatives(tmp_path):
    path = write_orchard_dataset(tmp_path, n=3, seed=9, size=96, progress=False)
    ds = ConceptDataset.load(path)
    data = json.loads(path.read_text())
    assert len(ds.files) == 3
    assert any(p.is_negative for p in ds.pairs) and any(not p.is_negative for p in ds.pairs)
    # Masks decode to exactly the rendered instances.
    s = render_scene(scene_rng(9, 0), 96)
    first = ds.by_file[ds.files[0]]
    leaf_pair = next(p for p in first if p.phrase == "leaf")
    expected = s.masks((LEAF,))
    got = leaf_pair.masks()
    assert got.shape == expected.shape and np.array_equal(got, expected)
    for a in data["annotations"]:
        m = decode_mask(a["segmentation"])
        assert m.sum() == a["area"]
        x, y, w, h = a["bbox"]
        ys, xs = np.nonzero(m)
        assert (x, y, x + w - 1, y + h - 1) == (xs.min(), ys.min(), xs.max(), ys.max())


def test_generator_rejects_absurd_sizes(tmp_path):
    with pytest.raises(ValueError, match="size"):
        render_scene(scene_rng(0, 0), 16)
    with pytest.raises(ValueError, match="--n"):
        write_orchard_dataset(tmp_path, n=0)
