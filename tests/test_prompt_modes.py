"""The prompt-mode figures' own logic (sam3edge.eval.prompt_modes), on hand-built cases and on answer keys.

A model here is any ``run(image, phrase, boxes, labels)``; the answer-key runners below read a rendered orchard
set's ground truth, so what each figure must be is known exactly.
"""

from __future__ import annotations

import json

import numpy as np
import pytest


def _disc(h, w, cy, cx, r):
    yy, xx = np.mgrid[:h, :w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def test_match_instances_matches_one_to_one_and_sorts_the_rest_by_kind():
    from sam3edge.eval.prompt_modes import match_instances

    h = w = 64
    gt = np.stack([_disc(h, w, 16, 16, 8), _disc(h, w, 44, 44, 8)])
    near = _disc(h, w, 44, 52, 8)  # half on the second instance: IoU ~0.2
    preds = np.stack([gt[0], gt[0], near, _disc(h, w, 10, 54, 5), gt[1]])
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.3])  # the exact copy of gt[1] is below 0.5: not kept
    best, kinds = match_instances(preds, scores, gt)
    assert best[0] == pytest.approx(1.0) and 0.1 <= best[1] < 0.5  # gt[1] only meets the near miss
    # a match under IoU 0.5 is no true positive: the near miss is a false positive though it took gt[1]
    assert kinds == {"duplicate": 1, "near": 1, "clear": 1}
    best, kinds = match_instances(preds[:2], scores[:2], gt)
    assert best.tolist() == [1.0, 0.0] and kinds == {"duplicate": 1, "near": 0, "clear": 0}
    best, kinds = match_instances(preds, np.zeros(5), gt)  # nothing kept
    assert best.tolist() == [0.0, 0.0] and kinds == {"duplicate": 0, "near": 0, "clear": 0}


@pytest.fixture(scope="module")
def orchard_set(tmp_path_factory):
    from sam3edge.data.orchard_dataset import write_orchard_dataset

    return write_orchard_dataset(tmp_path_factory.mktemp("modes"), n=6, seed=31, size=96, progress=False)


def _answer_key(annotations, follows_negatives: bool):
    """A runner answering each phrase with its true instances (score 0.9). A negative box removes the instances of
    the category under it when ``follows_negatives``, else nothing changes."""
    from sam3edge.data.coco import ConceptDataset, decode_mask
    from sam3edge.data.images import load_image
    from sam3edge.eval.prompt_modes import tight_box

    data = json.loads(annotations.read_text())
    dataset = ConceptDataset.load(annotations)
    by_file = {}
    for entry in data["images"]:
        anns = [a for a in data["annotations"] if a["image_id"] == entry["id"]]
        by_file.setdefault(entry["file_name"], {})[entry["text_input"]] = anns
    key = {load_image(dataset.image_path(f)).tobytes(): f for f in by_file}

    def run(image, phrase, boxes=None, labels=None):
        anns = by_file[key[image.tobytes()]].get(phrase, [])
        masks = np.stack([decode_mask(a["segmentation"]) for a in anns]).astype(bool) if anns else \
            np.zeros((0, *image.shape[:2]), bool)
        cats = np.array([a["category_id"] for a in anns])
        keep = np.ones(len(anns), bool)
        if follows_negatives and boxes:
            for box, label in zip(boxes, labels):  # pixel xyxy
                if label == 0:  # the category of the instance whose box this is
                    hit = [i for i, m in enumerate(masks) if tight_box(m) == list(box)]
                    keep &= ~np.isin(cats, cats[hit])
        masks = masks[keep]
        return masks, np.full(len(masks), 0.9), np.zeros((len(masks), 4))

    return run


def test_refine_figures_tell_a_model_that_follows_a_negative_box_from_one_that_ignores_it(orchard_set):
    from sam3edge.eval.prompt_modes import refine_figures

    follows = refine_figures(_answer_key(orchard_set, True), orchard_set)
    ignores = refine_figures(_answer_key(orchard_set, False), orchard_set)
    assert follows["cases"] == ignores["cases"] >= 2
    for name in ("boxed", "same_kind", "other_kinds"):
        n, text, _ = ignores[name]
        assert follows[name][:2] == [n, text] and text == n  # the answer key finds every instance from the phrase
        assert ignores[name][2] == n  # a box that is ignored changes nothing
    assert follows["boxed"][2] == 0 and follows["same_kind"][2] == 0  # the kind under the box is gone
    assert follows["other_kinds"][2] == follows["other_kinds"][0] > 0  # and the other kinds all stay
    from sam3edge.eval.prompt_modes import refine_cells

    n = follows["boxed"][0]
    assert refine_cells(follows).startswith(f"{follows['cases']} | {n} -> 0 of {n} | ")  # the tables' cells
