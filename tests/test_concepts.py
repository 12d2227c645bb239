"""Concept cache: torch-free import, round trip, lookups, and errors on damaged or unknown input."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from sam3edge.runtime.concepts import ConceptCache

PHRASES = ["ripe apple", "Bruised Apple", "leaf"]


def make_cache(dtype=np.float32) -> ConceptCache:
    rng = np.random.default_rng(0)
    mask = np.zeros((3, 32), dtype=bool)
    mask[:, :4] = True
    return ConceptCache(PHRASES, rng.standard_normal((3, 32, 8)).astype(dtype), mask, source="toy-teacher")


def test_import_does_not_pull_in_torch():
    code = "import sys, sam3edge.runtime.concepts; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_save_load_round_trip_keeps_everything(tmp_path, dtype):
    cache = make_cache(dtype)
    cache.save(tmp_path / "bundle")
    assert sorted(p.name for p in (tmp_path / "bundle").iterdir()) == [
        "concepts.json", "concepts.npy", "concepts_mask.npy"]  # no temporary files left behind
    meta = json.loads((tmp_path / "bundle" / "concepts.json").read_text())
    assert meta["phrases"] == PHRASES and meta["source"] == "toy-teacher"
    assert meta["features"]["shape"] == [3, 32, 8] and meta["features"]["dtype"] == np.dtype(dtype).name
    back = ConceptCache.load(tmp_path / "bundle")
    assert back.phrases == PHRASES and back.source == "toy-teacher"
    assert back.features.dtype == dtype and np.array_equal(back.features, cache.features)
    assert back.mask.dtype == bool and np.array_equal(back.mask, cache.mask)


def test_lookup_returns_rows_in_request_order_ignoring_case_and_spaces():
    cache = make_cache()
    feats, mask = cache.lookup(["leaf", "  RIPE   apple ", "bruised apple"])
    assert feats.shape == (3, 32, 8) and mask.shape == (3, 32)
    assert np.array_equal(feats[0], cache.features[2]) and np.array_equal(feats[1], cache.features[0])
    assert np.array_equal(feats[2], cache.features[1])
    assert "Leaf " in cache and "stem" not in cache


def test_unknown_phrase_raises_key_error_listing_known_ones():
    with pytest.raises(KeyError, match=r"'stem'.*'ripe apple', 'Bruised Apple', 'leaf'"):
        make_cache().lookup(["leaf", "stem"])


def test_empty_or_duplicate_phrases_are_refused():
    with pytest.raises(ValueError, match="at least one"):
        ConceptCache([], np.zeros((0, 32, 8), np.float32), np.zeros((0, 32), bool))
    with pytest.raises(ValueError, match="at least one"):
        make_cache().lookup([])
    with pytest.raises(ValueError, match="repeat"):
        ConceptCache(["leaf", "Leaf"], np.zeros((2, 32, 8), np.float32), np.zeros((2, 32), bool))
    with pytest.raises(ValueError, match=r"\[P=2, L, C\]"):
        ConceptCache(["a", "b"], np.zeros((3, 32, 8), np.float32), np.zeros((3, 32), bool))


def test_flipped_byte_in_features_is_reported_with_the_file_name(tmp_path):
    make_cache().save(tmp_path)
    path = tmp_path / "concepts.npy"
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"concepts\.npy is corrupt"):
        ConceptCache.load(tmp_path)


def test_mask_from_another_cache_fails_its_checksum(tmp_path):
    make_cache().save(tmp_path / "a")
    np.save(tmp_path / "a" / "concepts_mask.npy", np.ones((3, 32), bool), allow_pickle=False)
    with pytest.raises(ValueError, match=r"concepts_mask\.npy .*sha256"):
        ConceptCache.load(tmp_path / "a")


def test_damaged_or_inconsistent_description_is_reported(tmp_path):
    make_cache().save(tmp_path)
    meta_path = tmp_path / "concepts.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(meta_path.read_text()[:40])
    with pytest.raises(ValueError, match=r"concepts\.json is not a valid"):
        ConceptCache.load(tmp_path)
    meta["features"]["shape"] = [3, 32, 9]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"concepts\.npy: array is float32 \[3, 32, 8\]"):
        ConceptCache.load(tmp_path)
    meta["features"]["shape"] = [3, 32, 8]
    meta["features"]["file"] = "../elsewhere.npy"
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="unexpected array file"):
        ConceptCache.load(tmp_path)
    (tmp_path / "concepts_mask.npy").unlink()
    meta["features"]["file"] = "concepts.npy"
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(FileNotFoundError, match=r"concepts_mask\.npy is missing"):
        ConceptCache.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="holds no concept cache"):
        ConceptCache.load(tmp_path / "empty")


def test_from_teacher_stores_the_teachers_projected_text_features(tmp_path):
    import torch

    from sam3edge.models.sam3_load import build_sam3, tiny_sam3_config
    from sam3edge.models.teacher import Sam3Teacher
    from sam3edge.runtime.tokenizer import ClipTokenizer

    teacher = Sam3Teacher(build_sam3(tiny_sam3_config(image_size=56, vision_layers=1, vision_hidden=32)),
                          ClipTokenizer.default())
    cache = ConceptCache.from_teacher(teacher, PHRASES, source="tiny")
    with torch.no_grad():
        feats, mask = teacher.encode_text(PHRASES)
    assert cache.features.shape == tuple(feats.shape) and cache.source == "tiny"
    assert np.allclose(cache.lookup(["leaf"])[0][0], feats[2].numpy(), atol=1e-6)
    assert np.array_equal(cache.mask, mask.numpy())
    back = ConceptCache.load(cache.save(tmp_path))
    assert np.array_equal(back.lookup(PHRASES)[0], cache.features)
