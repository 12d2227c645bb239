"""Teacher cache: contents equal the teacher's own outputs, random access, resume, sharding, bad input."""

from __future__ import annotations

import json

import pytest
import torch

from sam3edge.data.coco import list_images
from sam3edge.data.images import load_image
from sam3edge.distill.cache import TeacherCache, build_cache, item_bytes, item_path, teacher_feature_shapes

PHRASES = ["ripe apple", "leaf", "pear"]


@pytest.fixture(scope="module")
def teacher(tiny_sam3_dir):
    from sam3edge.models.teacher import Sam3Teacher

    return Sam3Teacher.from_pretrained(tiny_sam3_dir)


@pytest.fixture(scope="module")
def images(orchard_small):
    return list_images(orchard_small.parent / "images")[:4]


def test_cache_holds_the_teachers_outputs(teacher, images, tmp_path):
    cache = build_cache(teacher, images, PHRASES, tmp_path / "c", min_score=0.0, max_instances=5, progress=False)
    assert len(cache) == 4 and cache.missing() == []
    out = teacher([load_image(images[2])], PHRASES)  # a plain teacher call on the same image
    item = cache.item(2)
    for k, f in enumerate(out.image_features):
        assert item[f"feature.{k}"].dtype == torch.float16
        torch.testing.assert_close(item[f"feature.{k}"].float(), f[0].float(), atol=2e-2, rtol=1e-2)
    torch.testing.assert_close(item["presence"], out.presence[0].float(), atol=1e-5, rtol=1e-5)
    for p in range(len(PHRASES)):
        order = out.scores[0, p].argsort(descending=True)[:5]
        assert int(item["count"][p]) == 5  # min_score 0: top-5 of 16 queries kept
        torch.testing.assert_close(item["scores"][p], out.scores[0, p, order].float(), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(item["boxes"][p], out.boxes_normalized[0, p, order].float(), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(item["mask_logits"][p].float(), out.mask_logits[0, p, order].float().clamp(-20, 20),
                                   atol=2e-2, rtol=1e-2)
    text, mask = cache.text(["leaf"])
    ref, ref_mask = teacher.encode_text(["leaf"])
    torch.testing.assert_close(text.float(), ref.float(), atol=1e-2, rtol=1e-2)
    assert torch.equal(mask, ref_mask)
    assert tuple(item["image_size"].tolist()) == (112, 112)


def test_min_score_and_padding(teacher, images, tmp_path):
    cache = build_cache(teacher, images[:1], PHRASES, tmp_path / "c", min_score=0.99, max_instances=4, progress=False)
    item = cache.item(0)
    assert item["scores"].shape == (3, 4) and item["mask_logits"].shape[:2] == (3, 4)
    for p in range(3):
        n = int(item["count"][p])
        assert (item["scores"][p, :n] >= 0.99).all() and (item["scores"][p, n:] == 0).all()


def test_resampled_features_and_size_estimate(teacher, images, tmp_path):
    cache = build_cache(teacher, images[:2], PHRASES, tmp_path / "c", feature_sizes=[16, 8, 4], mask_size=16,
                        max_instances=3, progress=False)
    feats = cache.features(1)
    assert [tuple(f.shape[-2:]) for f in feats] == [(16, 16), (8, 8), (4, 4)]
    assert cache.item(1)["mask_logits"].shape[-2:] == (16, 16)
    est = item_bytes(teacher_feature_shapes(teacher.config, [16, 8, 4]), 3, 3, 16)
    assert 0 < cache.bytes_per_image() - est < 4096  # payload plus the safetensors header


def test_resume_writes_only_missing_items(teacher, images, tmp_path):
    out = tmp_path / "c"
    build_cache(teacher, images, PHRASES, out, progress=False)
    stamps = {i: item_path(out, i).stat().st_mtime_ns for i in range(4)}
    item_path(out, 1).unlink()  # as if the build had been killed before image 1
    cache = build_cache(teacher, images, PHRASES, out, progress=False)
    assert cache.missing() == []
    assert all(item_path(out, i).stat().st_mtime_ns == stamps[i] for i in (0, 2, 3))


def test_sharded_build_equals_single_process(teacher, images, tmp_path):
    single = build_cache(teacher, images, PHRASES, tmp_path / "one", progress=False)
    for rank in range(2):
        build_cache(teacher, images, PHRASES, tmp_path / "two", rank=rank, world=2, progress=False)
        if rank == 0:
            assert TeacherCache(tmp_path / "two").missing() == [1, 3]  # rank 0 wrote items 0 and 2
    two = TeacherCache(tmp_path / "two")
    assert two.missing() == []
    for i in range(4):
        a, b = single.item(i), two.item(i)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_refuses_a_cache_of_other_inputs(teacher, images, tmp_path):
    build_cache(teacher, images[:2], PHRASES, tmp_path / "c", progress=False)
    with pytest.raises(ValueError, match="different inputs.*phrases"):
        build_cache(teacher, images[:2], ["branch"], tmp_path / "c", progress=False)
    with pytest.raises(ValueError, match="different inputs.*images"):
        build_cache(teacher, images[:3], PHRASES, tmp_path / "c", progress=False)


def test_bad_input_is_named(teacher, images, tmp_path):
    with pytest.raises(ValueError, match="no phrases"):
        build_cache(teacher, images, [], tmp_path / "a", progress=False)
    with pytest.raises(ValueError, match="duplicate"):
        build_cache(teacher, images, ["leaf", "leaf"], tmp_path / "a", progress=False)
    with pytest.raises(FileNotFoundError, match="no cache.json"):
        TeacherCache(tmp_path / "nothing")
    cache = build_cache(teacher, images[:1], PHRASES, tmp_path / "b", progress=False)
    with pytest.raises(KeyError, match="'banana' is not in the cache"):
        cache.text(["banana"])
    with pytest.raises(IndexError):
        cache.item(5)
    item_path(tmp_path / "b", 0).write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="unreadable cache file"):
        cache.item(0)
    meta = tmp_path / "b" / "cache.json"
    meta.write_text(json.dumps(json.loads(meta.read_text()) | {"format": 99}))
    with pytest.raises(ValueError, match="format 99"):
        TeacherCache(tmp_path / "b")
