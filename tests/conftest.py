"""Shared fixtures: a tiny random SAM3 checkpoint on disk and a small orchard dataset."""

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
