"""SAM3's prompt mix in the orchard training stream: where exemplar boxes go, and hard negatives."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="module")
def tokenizer():
    from sam3edge.models.bundled import resolve_model
    from sam3edge.models.sam3_load import load_tokenizer

    return load_tokenizer(resolve_model("orchard-toy"))


def _instance_boxes(scene) -> np.ndarray:
    """Normalised cxcywh box of every instance of an (unflipped) scene, as the stream draws them."""
    imap = scene.instance_map
    h, w = imap.shape
    out = []
    for k in range(len(scene.categories)):
        ys, xs = np.nonzero(imap == k + 1)
        if not len(xs):
            out.append([np.nan] * 4)
            continue
        x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
        out.append([(x0 + x1) / 2 / w, (y0 + y1) / 2 / h, (x1 - x0) / w, (y1 - y0) / h])
    return np.asarray(out)


def _draws(batches, scenes: int = 40):
    """(scene, pair, boxes, labels, instance index of each box) of the exemplar draws on ``scenes`` scenes."""
    from sam3edge.data.orchard import ORCHARD_VOCABULARY, render_scene, scene_rng
    from sam3edge.data.orchard_dataset import scene_pairs

    out = []
    for i in range(scenes):
        rng = scene_rng(7, i)
        scene = render_scene(rng, 160)
        known = _instance_boxes(scene)
        ex_rng = np.random.default_rng([7, i])
        for pair in scene_pairs(scene, rng, ORCHARD_VOCABULARY, distractors=2):
            phrase, boxes, labels, drop = batches._exemplars(ex_rng, scene, pair, flip=False)
            assert drop == set() or batches.refine  # only refining pairs drop targets
            which = [int(np.nanargmin(np.abs(known - np.asarray(b)).sum(1))) for b in boxes]
            for b, k in zip(boxes, which):
                np.testing.assert_allclose(b, known[k], atol=1e-9)  # every box is one instance's box
            out.append((scene, pair, phrase, labels, which))
    return out


def test_positive_boxes_are_the_prompts_instances_and_negatives_are_not(tokenizer):
    from sam3edge.distill.scene_batches import OrchardBatches

    batches = OrchardBatches(tokenizer, prompt_mix=(0, 1, 0))
    draws = _draws(batches)
    positives = negatives = 0
    for scene, pair, phrase, labels, which in draws:
        own = {k for k, c in enumerate(scene.categories) if c in pair.category_ids}
        for label, k in zip(labels, which):
            assert (k in own) == (label == 1), (pair.phrase, label, k)
            positives += label == 1
            negatives += label == 0
        assert phrase == pair.phrase  # text + boxes keeps the phrase
    assert positives > 50 and negatives > 20, (positives, negatives)


def test_hard_negatives_go_on_look_alikes_when_the_image_has_one(tokenizer):
    """hard_negatives=1: a negative box lies on a sibling category (unripe / bruised apple for "ripe apple") whenever
    the scene has such an instance; at 0 the negatives are any other instance (mostly leaves and branches)."""
    from sam3edge.distill.scene_batches import OrchardBatches, _siblings

    share = {}
    for rate in (0.0, 1.0):
        draws = _draws(OrchardBatches(tokenizer, prompt_mix=(0, 1, 0), hard_negatives=rate))
        on_sibling = with_sibling = 0
        for scene, pair, _, labels, which in draws:
            sib = _siblings(pair.phrase)
            present = any(c in sib for c in scene.categories)
            for label, k in zip(labels, which):
                if label == 0 and present:
                    with_sibling += 1
                    on_sibling += scene.categories[k] in sib
        share[rate] = on_sibling / with_sibling
        assert with_sibling >= 10, with_sibling
    assert share[1.0] == 1.0 and share[0.0] < 0.7, share


def test_siblings_come_from_the_vocabulary_and_hard_negatives_is_a_probability(tokenizer):
    from sam3edge.data.orchard import BRUISED, RIPE, UNRIPE
    from sam3edge.distill.scene_batches import OrchardBatches, _siblings

    assert _siblings("ripe apple") == {UNRIPE, BRUISED} and _siblings("green apple") == {RIPE, BRUISED}
    assert _siblings("apple") == set() and _siblings("pear") == set()  # nothing broader; not in the vocabulary
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="hard_negatives is a probability"):
            OrchardBatches(tokenizer, hard_negatives=bad)


def test_negative_only_gives_present_concepts_a_lone_negative_box_and_zero_changes_nothing(tokenizer):
    from sam3edge.distill.scene_batches import OrchardBatches

    base = _draws(OrchardBatches(tokenizer, prompt_mix=(0, 1, 0), hard_negatives=1.0))
    same = _draws(OrchardBatches(tokenizer, prompt_mix=(0, 1, 0), hard_negatives=1.0, negative_only=0.0))
    assert [(d[2], d[3], d[4]) for d in base] == [(d[2], d[3], d[4]) for d in same]
    alone = 0
    for scene, pair, phrase, labels, which in _draws(OrchardBatches(tokenizer, prompt_mix=(0, 1, 0),
                                                                  hard_negatives=1.0, negative_only=1.0)):
        own = {k for k, c in enumerate(scene.categories) if c in pair.category_ids}
        if own and len(own) < len(scene.categories):  # present, and the image has something else to reject
            assert labels == [0] and which[0] not in own and phrase == pair.phrase, (pair.phrase, labels)
            alone += 1
    assert alone > 30, alone
    with pytest.raises(ValueError, match="negative_only is a probability"):
        OrchardBatches(tokenizer, negative_only=2.0)


def test_refine_rejects_one_kind_of_a_broad_concept_and_drops_all_of_that_kind_from_the_targets(tokenizer):
    """"apple" with a negative box on a bruised apple means the ripe and unripe ones: the negative box is on an
    instance the phrase names, every instance of that kind leaves the targets (not only the boxed one), a positive
    box (when given) is on one that stays, and the pair is marked so interactive training keeps its boxes."""
    from sam3edge.data.orchard import render_scene, scene_rng
    from sam3edge.distill.scene_batches import OrchardBatches

    base = _draws(OrchardBatches(tokenizer, prompt_mix=(0, 1, 0), hard_negatives=1.0))
    same = _draws(OrchardBatches(tokenizer, prompt_mix=(0, 1, 0), hard_negatives=1.0, refine=0.0))
    assert [(d[2], d[3], d[4]) for d in base] == [(d[2], d[3], d[4]) for d in same]  # 0: the old stream
    batches = OrchardBatches(tokenizer, prompt_mix=(0, 1, 0), refine=1.0, seed=3, images_per_batch=4,
                             pairs_per_image=6, image_size=160, mask_size=(40, 40), flip=False)
    refined = 0
    for step in range(6):
        batch = batches[step]
        for i, flag in enumerate(batch.refined or [False] * len(batch.targets)):
            j = int(batch.pair_image[i])
            rng = scene_rng(batches.seed, step * batches.b + j)
            scene = render_scene(rng, batches.size)
            labels = batch.input_boxes_labels[i].tolist()
            if not flag:
                continue
            refined += 1
            assert labels[0] == 0 and labels[1:2] in ([], [1], [-10])
            assert batch.phrases[i] in ("apple", "apples", "fruit")
            known = _instance_boxes(scene)
            boxed = [int(np.nanargmin(np.abs(known - b.numpy()).sum(1))) for b in batch.input_boxes[i]]
            rejected = scene.categories[boxed[0]]
            visible = [k for k, c in enumerate(scene.categories) if c in (1, 2, 3) and not np.isnan(known[k, 0])]
            kept = [k for k in visible if scene.categories[k] != rejected]
            assert rejected in (1, 2, 3) and kept and batch.targets[i].num == len(kept), (rejected, visible)
            if labels[1:2] == [1]:
                assert scene.categories[boxed[1]] != rejected
    assert refined >= 5, refined
    with pytest.raises(ValueError, match="refine is a probability"):
        OrchardBatches(tokenizer, refine=-0.1)
