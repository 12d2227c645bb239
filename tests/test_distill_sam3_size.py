"""The real teacher's path: a default-size ``Sam3Config`` (random weights, ViT-L trunk, 1008 px, 200 queries)
distilled into ``edge-s`` end to end on 2 images on the CPU - no shape or memory surprises.

Slow: building, saving and running an 840 M-parameter SAM3 on 2 CPU cores takes a few minutes.
"""

from __future__ import annotations

import json
import resource

import numpy as np
import pytest
import torch
from PIL import Image

pytestmark = pytest.mark.slow


def test_default_size_sam3_teacher_distills_into_edge_s(tmp_path):
    from transformers import Sam3Config

    from sam3edge.distill.cache import TeacherCache
    from sam3edge.distill.config import DistillConfig
    from sam3edge.distill.run import distill
    from sam3edge.models.sam3_load import build_sam3, save_sam3
    from sam3edge.models.student_io import load_student

    config = Sam3Config()  # transformers' defaults are facebook/sam3's architecture
    assert config.vision_config.backbone_config.image_size == 1008
    teacher_dir = save_sam3(build_sam3(config, seed=0), tmp_path / "sam3-random")
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i, size in enumerate(((480, 640), (1200, 900))):  # any size: the teacher letterboxes to 1008
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(images / f"img_{i}.png")

    out = tmp_path / "run"
    cfg = DistillConfig(teacher=str(teacher_dir), images=str(images), concepts=["ripe apple", "leaf"],
                        student="edge-s", out=str(out), steps=2, stage1_steps=2, batch=1, pairs=2, holdout=0.5,
                        init_queries="used", text_steps=2, text_corpus=100)
    report = distill(cfg, progress=False)

    cache = TeacherCache(out / "cache")
    assert len(cache) == 2
    item = cache.item(0)
    # features resampled to the 512-px student's grid, fp16; masks at the student's mask size
    assert [tuple(f.shape) for f in cache.features(0)] == [(256, 128, 128), (256, 64, 64), (256, 32, 32)]
    assert all(f.dtype == torch.float16 for f in cache.features(0))
    assert item["mask_logits"].shape[-2:] == (128, 128) and item["scores"].shape[0] == 2
    assert report["grid"] == {"teacher_tokens": 72, "student": 32}
    # SAM3's heads are 256 wide like edge-s's: its 1+3 layers and 50 of 200 query slots start from SAM3's
    init = report["init_heads"]
    assert init["layers"]["detr_decoder"] == [0, 1, 2] and len(init["queries"]) == 50
    assert max(init["queries"]) < 200 and init["loaded"] > 100
    for stage in ("stage1_final", "stage2_final"):
        assert np.isfinite(report[stage]["total"]), stage
    assert report["eval"]["vs_teacher"]["pairs"] == 2
    # edge-s's default text mode is "both": its own text encoder, distilled on a (here tiny) phrase corpus
    assert report["text"]["corpus"] == 100 and report["text"]["train"] + report["text"]["heldout"] == 100
    student = load_student(out / "student")
    assert student.image_size == 512 and student.text_mode == "both" and student.has_text_encoder
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(json.dumps({"cache_bytes_per_image": report["cache_bytes_per_image"], "peak_rss_gb": round(peak_gb, 2)}))
    assert peak_gb < 16  # a 2 x 840 M fp32 model (build + load) plus activations fits a 16 GB laptop
