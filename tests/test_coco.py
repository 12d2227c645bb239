"""SA-Co style annotation files and image folders: bad input is named, nothing is silently skipped."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from sam3edge.data.coco import ConceptDataset, decode_mask, encode_mask, list_images
from sam3edge.data.images import load_image
from sam3edge.data.vocabulary import parse_phrases


def test_rle_round_trip_of_random_masks():
    rng = np.random.default_rng(0)
    for shape in [(1, 1), (7, 13), (64, 48)]:
        m = rng.random(shape) > 0.5
        assert np.array_equal(decode_mask(encode_mask(m)), m)


def test_malformed_rle_is_reported_with_its_location():
    with pytest.raises(ValueError, match="ann 3"):
        decode_mask({"size": [4, 4], "counts": "!!!garbage"}, "ann 3")
    with pytest.raises(ValueError, match="ann 4"):
        decode_mask({"counts": "abc"}, "ann 4")


def test_missing_image_file_is_named(orchard_small, tmp_path):
    data = json.loads(orchard_small.read_text())
    data["images"][0]["file_name"] = "images/not_there.png"
    bad = orchard_small.parent / "bad.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(FileNotFoundError, match="not_there.png"):
        ConceptDataset.load(bad)


def test_not_json_or_not_coco_or_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ConceptDataset.load(tmp_path / "x.json")
    (tmp_path / "a.json").write_text("{oops")
    with pytest.raises(ValueError, match="not valid JSON"):
        ConceptDataset.load(tmp_path / "a.json")
    (tmp_path / "b.json").write_text(json.dumps({"annotations": []}))
    with pytest.raises(ValueError, match="no 'images'"):
        ConceptDataset.load(tmp_path / "b.json")


def test_a_file_without_annotations_is_refused_not_scored_as_all_negatives(tmp_path):
    base = {"id": 1, "file_name": "a.png", "width": 4, "height": 4, "text_input": "leaf"}
    with pytest.raises(ValueError, match="no 'annotations' list"):
        ConceptDataset({"images": [base]}, tmp_path)
    assert ConceptDataset({"images": [base], "annotations": []}, tmp_path).pairs[0].is_negative


def test_pair_without_phrase_and_annotation_of_unknown_pair_are_rejected(tmp_path):
    base = {"id": 1, "file_name": "a.png", "width": 4, "height": 4}
    with pytest.raises(ValueError, match="no 'text_input'"):
        ConceptDataset({"images": [base], "annotations": []}, tmp_path)
    with pytest.raises(ValueError, match="image_id 9 is not the id of any entry"):
        ann = {"image_id": 9, "segmentation": encode_mask(np.ones((4, 4), bool)), "bbox": [0, 0, 4, 4]}
        ConceptDataset({"images": [base | {"text_input": "leaf"}], "annotations": [ann]}, tmp_path)


def test_malformed_rle_in_an_annotation_file_is_named_at_load(orchard_small):
    data = json.loads(orchard_small.read_text())
    data["annotations"][2]["segmentation"]["counts"] = "0000zzzz~~~~"
    bad = orchard_small.parent / "bad_rle.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"bad_rle.json.*annotations\[2\]"):
        ConceptDataset.load(bad)


def test_image_folder_lists_images_only_and_reports_unreadable_ones(tmp_path):
    Image.fromarray(np.zeros((5, 6, 3), np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    files = list_images(tmp_path)
    assert [f.name for f in files] == ["a.png", "broken.jpg"]
    assert load_image(files[0]).shape == (5, 6, 3)
    with pytest.raises(ValueError, match="broken.jpg"):
        load_image(files[1])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no images"):
        list_images(empty)
    with pytest.raises(FileNotFoundError):
        list_images(tmp_path / "missing")


def test_phrase_lists_from_strings_files_and_their_errors(tmp_path):
    assert parse_phrases("ripe apple, leaf") == ["ripe apple", "leaf"]
    f = tmp_path / "c.txt"
    f.write_text("ripe apple\n\n# comment\n  leaf  \n")
    assert parse_phrases(f) == ["ripe apple", "leaf"]
    with pytest.raises(ValueError, match="empty"):
        parse_phrases([])
    with pytest.raises(ValueError, match="empty entries"):
        parse_phrases("a,,b")
    with pytest.raises(FileNotFoundError):
        parse_phrases(tmp_path / "missing.txt")
