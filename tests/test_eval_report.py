"""``sam3edge.eval.evaluate`` / ``ConceptReport``: extras, per-phrase rows, attribute confusion, validation.

Expected values are derived by hand in the comments (exact arithmetic, ``exact=True``, 1e-12).  The
cgF1/pmF1/IL_MCC parts of these reports were also cross-checked during development against Meta's
evaluator (``sam3==0.1.4``, ``sam3/eval/cgf1_eval.py``): ``report.detail.to_sam3_dict()`` was
bit-identical to ``CGF1Evaluator(...).evaluate(...)`` on every dataset built here.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_utils
import pytest

from sam3edge.data.rle import decode_segmentation
from sam3edge.data.saco import load_gt
from sam3edge.eval import ConceptReport, evaluate, evaluate_cgf1

H, W = 20, 20
NAMES = ["ripe apple", "unripe apple", "bruised apple", "leaf", "branch"]


def rect(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    m = np.zeros((H, W), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def rle(mask: np.ndarray) -> dict:
    r = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": r["size"], "counts": r["counts"].decode()}


def make_gt(pairs: list[tuple]) -> dict:
    """pairs: (pair_id, file_name, phrase, [masks]) or with a 5th dict of extra image fields."""
    images, anns = [], []
    for pid, file_name, phrase, masks, *extra in pairs:
        cat = NAMES.index(phrase) + 1
        img = {
            "id": pid,
            "file_name": file_name,
            "width": W,
            "height": H,
            "text_input": phrase,
            "queried_category": cat,
            "is_instance_exhaustive": True,
            **(extra[0] if extra else {}),
        }
        images.append(img)
        for m in masks:
            r = rle(m)
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": pid,
                    "segmentation": r,
                    "area": int(m.sum()),
                    "bbox": mask_utils.toBbox(r).tolist(),
                    "iscrowd": 0,
                    "category_id": cat,
                }
            )
    return {
        "images": images,
        "annotations": anns,
        "categories": [{"id": i + 1, "name": n} for i, n in enumerate(NAMES)],
    }


def pred(pid, mask: np.ndarray, score: float = 0.9, bbox=None) -> dict:
    r = rle(mask)
    return {
        "image_id": pid,
        "segmentation": r,
        "score": score,
        "bbox": list(bbox) if bbox is not None else mask_utils.toBbox(r).tolist(),
    }


R, U1, U2, JUNK = rect(0, 0, 10, 10), rect(10, 0, 20, 10), rect(10, 10, 20, 20), rect(0, 12, 6, 20)


def orchard():
    """a.jpg: a ripe apple R, unripe apples U1/U2, no leaf; b.jpg: a ripe apple, nothing unripe annotated."""
    gt = make_gt(
        [
            (1, "a.jpg", "ripe apple", [R]),
            (2, "a.jpg", "unripe apple", [U1, U2]),
            (3, "a.jpg", "leaf", []),
            (4, "b.jpg", "ripe apple", [R]),
            (5, "b.jpg", "branch", [U1], {"is_instance_exhaustive": False}),
        ]
    )
    preds = [
        pred(1, R),
        pred(1, U1, 0.8),
        pred(1, JUNK, 0.7),
        pred(1, U2, 0.3),  # U1 = ripe/unripe confusion
        pred(2, U1),
        pred(2, U2),
        pred(3, U2, 0.95),  # "leaf" fires on an unripe apple
        pred(4, R),
        pred(4, JUNK, 0.6),
        pred(5, JUNK),  # non-exhaustive pair: ignored
    ]
    return gt, preds


def test_perfect_predictions():
    gt = make_gt([(1, "a.jpg", "ripe apple", [R, U2]), (2, "a.jpg", "leaf", [])])
    r = evaluate(gt, [pred(1, R), pred(1, U2)], exact=True)
    assert isinstance(r, ConceptReport)
    assert (r.cgf1, r.cgf1_50, r.cgf1_75, r.pmf1, r.il_mcc) == (1.0, 1.0, 1.0, 1.0, 1.0)
    assert (r.precision, r.recall, r.mean_matched_iou, r.presence_accuracy) == (1.0, 1.0, 1.0, 1.0)
    assert (r.grounding_error_px, r.grounding_error_norm) == (0.0, 0.0)
    assert (r.pairs, r.positives, r.negatives, r.gt_instances, r.predictions_kept) == (2, 1, 1, 2, 2)


def test_matched_iou_and_grounding_error_by_hand():
    gt = make_gt([(1, "a.jpg", "ripe apple", [R, U2, U1]), (2, "b.jpg", "ripe apple", [])])
    preds = [
        pred(1, rect(2, 0, 12, 10)),  # R shifted 2 px: IoU 80/120 = 2/3, box corners off by (2, 0, 2, 0)
        pred(1, U2),  # exact: IoU 1, box error 0
        pred(1, rect(10, 0, 20, 4)),  # 40/100 = 0.4 with U1: Hungarian-matched but not a detection
    ]
    r = evaluate(gt, preds, exact=True)
    assert r.matched_instances == 2
    assert r.mean_matched_iou == pytest.approx((2 / 3 + 1) / 2, abs=1e-12)
    assert r.grounding_error_px == pytest.approx((1.0 + 0.0) / 2, abs=1e-12)
    assert r.grounding_error_norm == pytest.approx(0.5 / math.hypot(H, W), abs=1e-12)
    # TP 2, FP 1, FN 1 at IoU 0.5; one negative pair with no prediction.
    assert r.precision == pytest.approx(2 / 3, abs=1e-12) and r.recall == pytest.approx(2 / 3, abs=1e-12)
    assert r.presence_accuracy == 1.0
    # The prediction's own box is what is graded, not its mask's box.
    preds[0]["bbox"] = [3, 0, 10, 10]  # corners off by (3, 0, 3, 0) -> 1.5 px
    assert evaluate(gt, preds, exact=True).grounding_error_px == pytest.approx(0.75, abs=1e-12)


def test_attribute_confusion():
    r = evaluate(*orchard(), exact=True)
    c = r.confusion
    assert c.phrases == ("leaf", "ripe apple", "unripe apple")
    # No leaf is annotated anywhere; the branch comes from a non-exhaustive pair, still a real branch.
    assert c.categories == ("branch", "ripe apple", "unripe apple")
    assert c.kept == {"leaf": 1, "ripe apple": 5, "unripe apple": 2}  # the 0.3-score U2 is not kept
    assert c.counts["ripe apple"] == {"unripe apple": 1, "branch": 0}
    # Only a.jpg (3 kept "ripe apple" predictions) has unripe apples, only b.jpg (2) has the branch.
    assert c.eligible["ripe apple"] == {"unripe apple": 3, "branch": 2}
    assert c.rate("ripe apple", "unripe apple") == pytest.approx(1 / 5, abs=1e-12)
    assert c.counts["unripe apple"] == {"ripe apple": 0} and c.eligible["unripe apple"] == {"ripe apple": 2}
    assert c.counts["leaf"] == {"ripe apple": 0, "unripe apple": 1}
    d = c.to_dict()
    assert d["counts"] == [[0, 0, 1], [0, 0, 1], [0, 0, 0]] and d["rate"][1] == [0.0, 0.0, 0.2]


def test_attribute_confusion_skips_the_queried_category():
    # "red apple" queries the ripe-apple category (given by name): hitting a ripe apple is not confusion.
    gt = make_gt(
        [(1, "a.jpg", "ripe apple", [R]), (2, "a.jpg", "ripe apple", [R]), (3, "a.jpg", "unripe apple", [U1])]
    )
    gt["images"][1].update(text_input="red apple", queried_category="ripe apple")
    r = evaluate(gt, [pred(1, R), pred(1, U1), pred(2, R), pred(2, U1, 0.6)], exact=True)
    assert r.confusion.counts["ripe apple"] == {"unripe apple": 1}
    assert r.confusion.counts["red apple"] == {"unripe apple": 1}
    assert r.confusion.counts["unripe apple"] == {} and r.confusion.kept["unripe apple"] == 0
    pairs = load_gt(gt).pairs
    assert pairs[1].queried_category == pairs[2].queried_category == 1  # id kept, name resolved to id


def test_attribute_confusion_respects_phrases_covering_several_categories():
    # "apple" (no queried_category) is annotated with a ripe and an unripe apple: both are apples.
    gt = make_gt(
        [
            (1, "a.jpg", "ripe apple", [R, U1]),
            (2, "a.jpg", "ripe apple", [R]),
            (3, "a.jpg", "unripe apple", [U1]),
        ]
    )
    gt["images"][0].update(text_input="apple", queried_category=None)
    gt["annotations"][1]["category_id"] = 2
    r = evaluate(gt, [pred(1, R), pred(1, U1), pred(2, U1)], exact=True)
    assert r.confusion.counts["apple"] == {} and r.confusion.kept["apple"] == 2
    assert r.confusion.counts["ripe apple"] == {"unripe apple": 1}


def test_per_phrase_rows():
    r = evaluate(*orchard(), exact=True)
    rows = {row.phrase: row for row in r.per_phrase}
    assert set(rows) == {"leaf", "ripe apple", "unripe apple"}  # "branch" is only non-exhaustive
    ripe = rows["ripe apple"]
    assert (ripe.pairs, ripe.positives, ripe.negatives, ripe.gt_instances, ripe.predictions_kept) == (
        2,
        2,
        0,
        2,
        5,
    )
    # TP 2, FP 3 -> P = 2/5, R = 1; both pairs positive so MCC = 0 and cgF1 = 0 by definition.
    assert ripe.precision == pytest.approx(0.4, abs=1e-12) and ripe.recall == 1.0
    assert ripe.il_mcc == 0.0 and ripe.cgf1 == 0.0 and ripe.presence_accuracy == 1.0
    leaf = rows["leaf"]
    assert (leaf.il_fp, leaf.presence_accuracy, leaf.mean_matched_iou) == (1, 0.0, None)
    assert r.excluded_pairs == 1 and r.pairs == 4
    # IL: TP 3 (pairs 1, 2, 4), FP 1 (pair 3) -> presence accuracy 3/4; MCC = (0 - 0) / ... = 0.
    assert r.presence_accuracy == 0.75 and (r.il_tp, r.il_fp, r.il_tn, r.il_fn) == (3, 1, 0, 0)


@pytest.mark.parametrize("exact", [False, True])
def test_report_agrees_with_evaluate_cgf1_and_per_phrase_subsets(exact):
    gt, preds = orchard()
    gt["images"].append(
        {
            "id": 6,
            "file_name": "c.jpg",
            "width": W,
            "height": H,
            "text_input": "ripe apple",
            "queried_category": 1,
            "is_instance_exhaustive": True,
        }
    )
    r = evaluate(gt, preds, exact=exact)
    direct = evaluate_cgf1(gt, preds, exact=exact)
    assert r.detail.to_sam3_dict() == direct.to_sam3_dict()
    assert (r.cgf1, r.cgf1_50, r.cgf1_75, r.pmf1, r.il_mcc) == (
        direct.cgf1,
        direct.cgf1_50,
        direct.cgf1_75,
        direct.pmf1,
        direct.il_mcc,
    )
    for row in r.per_phrase:
        keep = {img["id"] for img in gt["images"] if img["text_input"] == row.phrase}
        sub = dict(
            gt,
            images=[i for i in gt["images"] if i["id"] in keep],
            annotations=[a for a in gt["annotations"] if a["image_id"] in keep],
        )
        alone = evaluate_cgf1(sub, [p for p in preds if p["image_id"] in keep], exact=exact)
        assert (row.cgf1, row.pmf1, row.il_mcc) == (alone.cgf1, alone.pmf1, alone.il_mcc)


def test_all_negative_and_empty_predictions():
    gt = make_gt([(1, "a.jpg", "leaf", []), (2, "b.jpg", "leaf", [])])
    r = evaluate(gt, [])
    assert (r.cgf1, r.pmf1, r.il_mcc, r.presence_accuracy) == (0.0, 0.0, 0.0, 1.0)
    assert (r.mean_matched_iou, r.grounding_error_px, r.matched_instances) == (None, None, 0)
    json.dumps(r.to_dict(), allow_nan=False)
    assert r.to_dict()["sam3"]["cgF1_eval_segm_positive_macro_F1"] == -1.0  # SAM3's "undefined"


def test_serialisation_and_table(tmp_path):
    r = evaluate(*orchard())
    d = r.to_dict()
    assert json.loads(json.dumps(d, allow_nan=False)) == d
    assert d["aggregate"]["cgf1"] == r.cgf1 and len(d["per_phrase"]) == 3
    table = r.format_table()
    for text in ("ripe apple", "unripe apple", "cgF1", "IL_MCC", "'ripe apple' -> 'unripe apple': 1/5"):
        assert text in table
    out = r.save_json(tmp_path / "sub" / "report.json")
    assert json.loads(out.read_text()) == d
    assert os.listdir(out.parent) == ["report.json"]


def test_save_json_is_atomic(tmp_path, monkeypatch):
    r = evaluate(*orchard())
    path = tmp_path / "report.json"
    path.write_text("previous")

    import sam3edge.atomic

    def disk_full(fd):  # the report is already half written to the temporary file when this fails
        raise OSError("disk full")

    monkeypatch.setattr(sam3edge.atomic.os, "fsync", disk_full)
    with pytest.raises(OSError):
        r.save_json(path)
    assert path.read_text() == "previous" and os.listdir(tmp_path) == ["report.json"]


def test_paths_and_polygons(tmp_path):
    gt, preds = orchard()
    # A polygon GT instance is rasterised by pycocotools exactly as SAM3's evaluator does.
    poly = [[12.0, 12.0, 18.0, 12.0, 18.0, 18.0, 12.0, 18.0]]
    gt["images"].append(
        {
            "id": 7,
            "file_name": "d.jpg",
            "width": W,
            "height": H,
            "text_input": "leaf",
            "is_instance_exhaustive": True,
        }
    )
    gt["annotations"].append({"id": 99, "image_id": 7, "segmentation": poly, "iscrowd": 0, "category_id": 4})
    preds.append(pred(7, decode_segmentation(poly, H, W)))
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "preds.json").write_text(json.dumps(preds))
    from_paths = evaluate(str(tmp_path / "gt.json"), Path(tmp_path / "preds.json"))
    assert from_paths.to_dict() == evaluate(gt, preds).to_dict()
    assert {row.phrase: row.mean_matched_iou for row in from_paths.per_phrase}["leaf"] == 1.0


# ------------------------------------------------------------------------------------ validation
def _bad(mutate, match):
    gt, preds = orchard()
    mutate(gt, preds)
    with pytest.raises(ValueError, match=match):
        evaluate(gt, preds)


def test_rejects_unknown_image_id():
    _bad(lambda g, p: p.append(pred(42, R)), r"predictions\[10\]: image_id 42 is not a pair id")
    _bad(lambda g, p: p.append(pred("1", R)), r"compared by type too")


def test_rejects_missing_segmentation():
    _bad(lambda g, p: p[0].pop("segmentation"), r"predictions\[0\]: missing 'segmentation'")


def test_rejects_rle_of_wrong_size():
    small = {"size": [10, 10], "counts": rle(R)["counts"]}
    _bad(lambda g, p: p[1].update(segmentation=small), r"predictions\[1\].*size \[10, 10\] does not match")


def test_rejects_garbage_counts():
    _bad(lambda g, p: p[2]["segmentation"].update(counts="not an rle!"), r"predictions\[2\].*COCO alphabet")
    _bad(lambda g, p: p[2]["segmentation"].update(counts="P1370000"), r"covers 62 pixels")
    _bad(lambda g, p: p[2]["segmentation"].update(counts="P13700000l"), r"truncated")
    _bad(
        lambda g, p: g["annotations"][0]["segmentation"].update(counts="1"),
        r"annotations\[0\].*covers 1 pixels",
    )


def test_rejects_nan_or_missing_score_but_allows_out_of_range():
    _bad(lambda g, p: p[0].update(score=float("nan")), r"predictions\[0\]: 'score' is NaN")
    _bad(lambda g, p: p[0].pop("score"), r"missing required field 'score'")
    gt, preds = orchard()
    preds[0]["score"] = 7.5  # out of [0, 1] is allowed (logits, custom scales)
    assert evaluate(gt, preds).il_tp == 3


def test_rejects_malformed_ground_truth():
    with pytest.raises(ValueError, match="no 'images' list"):
        evaluate({"annotations": []}, [])
    _bad(lambda g, p: g["annotations"][0].update(image_id=1234), r"image_id 1234 is not the id of any entry")
    _bad(lambda g, p: g["images"][0].pop("height"), r"images\[0\]: missing required field 'height'")
    _bad(lambda g, p: g["images"].append(dict(g["images"][0])), r"duplicate pair id 1")
    _bad(lambda g, p: p[0].update(bbox=[0, 0, -1, 3]), r"predictions\[0\]: 'bbox' must be")
