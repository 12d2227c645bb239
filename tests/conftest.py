"""Shared fixtures: a tiny random SAM3 checkpoint on disk, a small orchard dataset, a 128 px toy student."""

from __future__ import annotations

import os

import pytest

# Two cores on CI: keep torch from oversubscribing them when pytest runs beside other work.
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def tiny_sam3_dir(tmp_path_factory):
    """A randomly initialised tiny Sam3Model saved in save_pretrained layout (with tokenizer.json)."""
    from sam3edge.models.sam3_load import build_sam3, save_sam3, tiny_sam3_config

    path = tmp_path_factory.mktemp("models") / "tiny-sam3"
    save_sam3(build_sam3(tiny_sam3_config(image_size=112), seed=0), path)
    return path


@pytest.fixture(scope="session")
def orchard_small(tmp_path_factory):
    """Six orchard scenes at 112 px in SA-Co layout; returns the annotations.json path."""
    from sam3edge.data.orchard_dataset import write_orchard_dataset

    return write_orchard_dataset(tmp_path_factory.mktemp("orchard"), n=6, seed=3, size=112, progress=False)


@pytest.fixture(scope="session")
def toy_width_teacher(tmp_path_factory):
    """A random tiny SAM3 whose heads have the toy student's widths (64 wide, 16 queries), at 112 px."""
    from sam3edge.models.sam3_load import build_sam3, save_sam3, tiny_sam3_config

    path = tmp_path_factory.mktemp("models") / "toy-width"
    cfg = tiny_sam3_config(image_size=112, vision_hidden=64, vision_layers=2, text_hidden=64, text_layers=1, hidden=64,
                           num_queries=16, encoder_layers=2, decoder_layers=3, heads=4)
    save_sam3(build_sam3(cfg, seed=0), path)
    return path


ORCHARD_PHRASES = ["ripe apple", "unripe apple", "leaf"]


def toy_encoder_student(seed: int = 0):
    """A toy student (128 px) with its own text encoder, its concept cache encoded by that encoder from
    ORCHARD_PHRASES (random weights, seeded): what export and runtime tests of text-encoder bundles start from."""
    import torch

    from sam3edge.export.onnx import text_encoder_inputs
    from sam3edge.models.registry import create_student
    from sam3edge.runtime.concepts import ConceptCache

    torch.manual_seed(seed)
    student = create_student("toy", input_size=128, text_mode="encoder")
    ids, attn = text_encoder_inputs(ORCHARD_PHRASES)
    with torch.no_grad():
        feats, mask = student.text_encoder(torch.from_numpy(ids), torch.from_numpy(attn))
    student.set_concepts(ConceptCache(ORCHARD_PHRASES, feats.numpy(), mask.numpy(), source="own text encoder"))
    return student


@pytest.fixture(scope="session")
def toy_student_dir(tmp_path_factory):
    """The toy student at 128 px with the bundled teacher's heads and concept features (random encoder)."""
    import torch

    from sam3edge.models.bundled import resolve_model
    from sam3edge.models.registry import create_student
    from sam3edge.models.student_io import init_heads_from_teacher, save_student
    from sam3edge.models.teacher import Sam3Teacher
    from sam3edge.runtime.concepts import ConceptCache

    teacher = Sam3Teacher.from_pretrained(resolve_model("orchard-toy"))
    torch.manual_seed(0)
    student = create_student("toy", input_size=128)
    init_heads_from_teacher(student, teacher)
    student.set_concepts(ConceptCache.from_teacher(teacher, ORCHARD_PHRASES))
    return save_student(student, tmp_path_factory.mktemp("students") / "toy128")


@pytest.fixture(scope="session")
def scenes(tmp_path_factory):
    """Six orchard scenes at 160 px (PNG files): calibration and verification images for exports."""
    from PIL import Image

    from sam3edge.data.orchard import render_scene, scene_rng

    folder = tmp_path_factory.mktemp("scenes")
    for i in range(6):
        Image.fromarray(render_scene(scene_rng(11, i), 160).image).save(folder / f"s{i}.png")
    return folder


@pytest.fixture(scope="session")
def toy_bundles(toy_student_dir, scenes, tmp_path_factory):
    """fp32 bundles of the 128 px toy student, exported once per session: {"onnx": path, "openvino": path}.
    Tests that modify a bundle copy it first."""
    from sam3edge.export.bundle import export_bundle

    root = tmp_path_factory.mktemp("toy-bundles")
    out = {}
    for target in ("onnx", "openvino"):
        out[target] = root / f"toy-{target}.sam3edge"
        export_bundle(toy_student_dir, out[target], target, "fp32", calib=scenes, n_verify=2, progress=False)
    return out
