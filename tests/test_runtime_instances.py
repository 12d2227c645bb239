"""Runtime results: pure-numpy COCO RLE identical to pycocotools, and the Instances container."""

from __future__ import annotations

import json

import numpy as np
import pycocotools.mask as mask_utils
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from sam3edge.runtime.instances import Instances, decode_rle, encode_rle, rle_area


def _reference(mask: np.ndarray) -> dict:
    return mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))


def _masks():
    rng = np.random.default_rng(0)
    cases = {
        "empty": np.zeros((7, 5), bool),
        "full": np.ones((7, 5), bool),
        "single pixel first": np.eye(1, 35, 0, dtype=bool).reshape(7, 5),
        "single pixel middle": np.eye(1, 35, 17, dtype=bool).reshape(7, 5),
        "single pixel last": np.eye(1, 35, 34, dtype=bool).reshape(7, 5),
        "1x1 set": np.ones((1, 1), bool),
        "1x1 unset": np.zeros((1, 1), bool),
        "1xN": rng.random((1, 97)) < 0.5,
        "Nx1": rng.random((97, 1)) < 0.5,
        "no pixels (0 x 5)": np.zeros((0, 5), bool),
        "no pixels (5 x 0)": np.zeros((5, 0), bool),
        "random 480x640": rng.random((480, 640)) < 0.5,
        "large sparse 1000x1000": rng.random((1000, 1000)) < 0.001,
        "large dense 1000x1000": rng.random((1000, 1000)) < 0.5,
        "large one pixel at the end": np.eye(1, 10**6, 10**6 - 1, dtype=bool).reshape(1000, 1000),
    }
    blob = np.zeros((1000, 1000), bool)
    blob[100:700, 250:900] = True
    blob[300:400, 300:400] = False
    cases["large rectangle with a hole"] = blob
    return list(cases.values()), list(cases)


MASKS, NAMES = _masks()


@pytest.mark.parametrize("mask", MASKS, ids=NAMES)
def test_encode_rle_gives_the_pycocotools_string(mask):
    ours, theirs = encode_rle(mask), _reference(mask)
    assert ours["size"] == [int(s) for s in theirs["size"]] == list(mask.shape)
    assert isinstance(ours["counts"], str)
    assert ours["counts"] == theirs["counts"].decode("ascii")


@pytest.mark.parametrize("mask", MASKS, ids=NAMES)
def test_decode_rle_and_area_agree_with_pycocotools_and_round_trip(mask):
    theirs = _reference(mask)
    np.testing.assert_array_equal(decode_rle(theirs), mask)  # bytes counts, as pycocotools writes them
    np.testing.assert_array_equal(decode_rle(encode_rle(mask)), mask)
    np.testing.assert_array_equal(decode_rle(theirs), mask_utils.decode(theirs).astype(bool))
    assert rle_area(encode_rle(mask)) == int(mask_utils.area(theirs)) == int(mask.sum())


@settings(max_examples=150, deadline=None)
@given(arrays(bool, st.tuples(st.integers(1, 40), st.integers(1, 40))))
def test_property_any_mask_encodes_like_pycocotools(mask):
    ours = encode_rle(mask)
    assert ours["counts"] == _reference(mask)["counts"].decode("ascii")
    np.testing.assert_array_equal(decode_rle(ours), mask)


def test_encode_accepts_non_bool_and_c_or_fortran_order():
    mask = np.random.default_rng(2).random((31, 17)) < 0.3
    expected = encode_rle(mask)
    assert encode_rle(mask.astype(np.uint8)) == expected
    assert encode_rle(np.asfortranarray(mask)) == expected
    assert encode_rle(mask.T.copy().T) == expected


def test_decode_accepts_uncompressed_counts_like_pycocotools():
    rle = {"size": [3, 4], "counts": [2, 5, 1, 4]}
    expected = mask_utils.decode(mask_utils.frPyObjects(rle, 3, 4)).astype(bool)
    np.testing.assert_array_equal(decode_rle(rle), expected)
    assert rle_area(rle) == 9 == expected.sum()


@pytest.mark.parametrize(
    "rle,message",
    [
        ({"size": [2, 2], "counts": "~"}, "outside the COCO alphabet"),
        ({"size": [2, 2], "counts": "0P"}, "truncated"),
        ({"size": [2, 2], "counts": "1"}, "covers 1 pixels but 'size' 2 x 2 has 4"),
        ({"size": [2, 2], "counts": "@"}, "negative run lengths"),
        ({"size": [2, 2], "counts": "Ф"}, "non-ASCII"),
        ({"size": [2, 2], "counts": "ooooooo0"}, "more than 32 bits"),
        ({"size": [2, 2], "counts": [1, -1, 4]}, "list of ints >= 0"),
        ({"size": [2], "counts": "4"}, "'size' must be"),
        ({"size": [2, -2], "counts": "4"}, "'size' must be"),
        ({"counts": "4"}, "expected a COCO RLE"),
        ("4", "expected a COCO RLE"),
    ],
)
def test_malformed_rles_raise_a_value_error_naming_the_problem(rle, message):
    with pytest.raises(ValueError, match=message):
        decode_rle(rle)
    with pytest.raises(ValueError, match=message):
        rle_area(rle)


def test_encode_rle_wants_one_2d_mask():
    with pytest.raises(ValueError, match=r"one mask \[H, W\]"):
        encode_rle(np.zeros((2, 3, 4), bool))


# ---- Instances --------------------------------------------------------------------------------------


def _instances(with_masks: bool = True) -> Instances:
    masks = np.zeros((4, 6, 8), bool)
    masks[0, 1:3, 1:4] = True
    masks[1, 0:6, 0:2] = True
    masks[2, 4:6, 5:8] = True
    masks[3, 2, 2] = True
    return Instances(
        phrases=["apple", "leaf", "apple", "branch"],
        concept_ids=[0, 1, 0, 2],
        scores=[0.9, 0.3, 0.6, 0.6],
        boxes=[[1, 1, 4, 3], [0, 0, 2, 6], [5, 4, 8, 6], [2, 2, 3, 3]],
        masks=masks if with_masks else None,
        presence={"apple": 0.99, "leaf": 0.4, "branch": 0.7, "pear": 0.01},
        image_size=(6, 8),
    )


def test_fields_are_coerced_to_their_dtypes():
    inst = _instances()
    assert len(inst) == 4
    assert inst.concept_ids.dtype == np.int64 and inst.scores.dtype == np.float32
    assert inst.boxes.dtype == np.float32 and inst.boxes.shape == (4, 4)
    assert inst.masks.dtype == bool and inst.masks.shape == (4, 6, 8)


def test_fields_of_different_lengths_are_refused():
    inst = _instances()
    with pytest.raises(ValueError, match="4 phrases but"):
        Instances(inst.phrases, inst.concept_ids, inst.scores[:3], inst.boxes, inst.masks, {}, (6, 8))
    with pytest.raises(ValueError, match=r"masks must be \[N, H, W\]"):
        Instances(inst.phrases, inst.concept_ids, inst.scores, inst.boxes, inst.masks[:, :5], {}, (6, 8))
    with pytest.raises(ValueError, match=r"boxes must be \[N, 4\]"):
        Instances(inst.phrases, inst.concept_ids, inst.scores, inst.boxes[:, :3], inst.masks, {}, (6, 8))


def test_filter_keeps_instances_at_or_above_the_threshold_in_order():
    kept = _instances().filter(0.6)
    assert kept.phrases == ["apple", "apple", "branch"]
    np.testing.assert_array_equal(kept.concept_ids, [0, 0, 2])
    assert kept.presence == _instances().presence  # presence is per concept, not per instance


def test_top_k_orders_by_score_and_keeps_ties_in_order():
    top = _instances().top_k(3)
    np.testing.assert_allclose(top.scores, [0.9, 0.6, 0.6])
    assert top.phrases == ["apple", "apple", "branch"]
    np.testing.assert_array_equal(top.masks, _instances().masks[[0, 2, 3]])
    assert len(_instances().top_k(10)) == 4 and len(_instances().top_k(0)) == 0
    with pytest.raises(ValueError, match="k must be >= 0"):
        _instances().top_k(-1)


def test_select_takes_indices_or_a_keep_mask():
    inst = _instances()
    picked = inst.select([3, 1])
    assert picked.phrases == ["branch", "leaf"]
    np.testing.assert_array_equal(picked.boxes, inst.boxes[[3, 1]])
    assert inst.select(np.array([False, True, False, True])).phrases == ["leaf", "branch"]
    with pytest.raises(IndexError, match="out of range"):
        inst.select([4])
    with pytest.raises(ValueError, match="bool mask needs shape"):
        inst.select(np.array([True, False]))


def test_to_coco_writes_results_that_pycocotools_reads_back():
    inst = _instances()
    results = inst.to_coco(image_id=42, category_ids={"apple": 53, "leaf": 7, "branch": 9})
    json.dumps(results)
    assert [r["category_id"] for r in results] == [53, 7, 53, 9]
    assert [r["phrase"] for r in results] == inst.phrases
    first = results[0]
    assert first["image_id"] == 42 and first["bbox"] == [1.0, 1.0, 3.0, 2.0]
    assert first["score"] == pytest.approx(0.9)
    for r, mask in zip(results, inst.masks):
        seg = r["segmentation"]
        assert seg["size"] == [6, 8] and isinstance(seg["counts"], str)
        np.testing.assert_array_equal(mask_utils.decode(seg).astype(bool), mask)


def test_to_coco_without_a_category_map_uses_concept_ids_and_without_masks_omits_segmentation():
    results = _instances(with_masks=False).to_coco(image_id=1)
    assert [r["category_id"] for r in results] == [0, 1, 0, 2]
    assert all("segmentation" not in r for r in results)


def test_to_coco_names_phrases_missing_from_the_category_map():
    with pytest.raises(ValueError, match=r"no category id for phrases \['branch'\]"):
        _instances().to_coco(1, {"apple": 1, "leaf": 2})


@pytest.mark.parametrize("with_masks", [True, False])
def test_json_round_trip(with_masks):
    inst = _instances(with_masks)
    back = Instances.from_json(inst.to_json())
    assert back.phrases == inst.phrases and back.presence == inst.presence and back.image_size == (6, 8)
    np.testing.assert_array_equal(back.concept_ids, inst.concept_ids)
    np.testing.assert_array_equal(back.scores, inst.scores)
    np.testing.assert_array_equal(back.boxes, inst.boxes)
    if with_masks:
        np.testing.assert_array_equal(back.masks, inst.masks)
    else:
        assert back.masks is None


def test_empty_result_has_no_instances_but_keeps_presence():
    empty = Instances.empty((6, 8), {"pear": 0.02})
    assert len(empty) == 0 and empty.masks.shape == (0, 6, 8) and empty.boxes.shape == (0, 4)
    assert empty.to_coco(3) == [] and empty.presence == {"pear": 0.02}
    assert len(empty.filter(0.5)) == 0 and len(empty.top_k(3)) == 0
    back = Instances.from_json(empty.to_json())
    assert len(back) == 0 and back.image_size == (6, 8) and back.presence == {"pear": 0.02}
    assert Instances.empty((6, 8), with_masks=False).masks is None
