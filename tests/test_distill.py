"""`distill`: cache -> stage 1 -> stage 2 -> student + report, resumable, with clear errors."""

from __future__ import annotations

import csv
import json

import pytest

from sam3edge.distill.run import DistillConfig, distill


@pytest.fixture(scope="module")
def toy_width_teacher(tmp_path_factory):
    """A random tiny SAM3 whose heads have the toy student's widths (64 wide, 16 queries), at 112 px."""
    from sam3edge.models.sam3_load import build_sam3, save_sam3, tiny_sam3_config

    path = tmp_path_factory.mktemp("models") / "toy-width"
    cfg = tiny_sam3_config(image_size=112, vision_hidden=64, vision_layers=2, text_hidden=64, text_layers=1, hidden=64,
                           num_queries=16, encoder_layers=2, decoder_layers=3, heads=4)
    save_sam3(build_sam3(cfg, seed=0), path)
    return path


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _cfg(teacher, data, out, **kw):
    base = dict(teacher=str(teacher), images=str(data), concepts=["ripe apple", "leaf", "pear"], student="toy",
                out=str(out), steps=12, stage1_steps=20, batch=2, pairs=2, holdout=0.34,
                student_overrides={"input_size": 128})
    return DistillConfig(**(base | kw))


def test_distill_end_to_end_and_resume(toy_width_teacher, orchard_small, tmp_path):
    out = tmp_path / "run"
    report = distill(_cfg(toy_width_teacher, orchard_small, out), progress=False)
    for name in ("distill.json", "cache/cache.json", "stage1/log.csv", "stage2/log.csv", "student/config.json",
                 "report.json"):
        assert (out / name).is_file(), name
    s1 = _rows(out / "stage1" / "log.csv")
    assert float(s1[-1]["total"]) < 0.8 * float(s1[0]["total"])  # the encoder regresses onto the teacher
    assert report["train_images"] == 4 and report["heldout_images"] == 2
    assert report["init_heads"]["loaded"] > 100  # same widths: heads start from the teacher's
    vs_t = report["eval"]["vs_teacher"]
    assert 0.0 <= vs_t["cgf1"] <= 1.0 and vs_t["pairs"] == 2 * 3
    assert set(report["eval"]["vs_ground_truth"]) == {"student", "teacher"}
    assert json.loads((out / "report.json").read_text())["student"] == "toy"

    logs = {s: (out / s / "log.csv").read_text() for s in ("stage1", "stage2")}
    ckpts = sorted(p.name for p in (out / "stage2" / "checkpoints").iterdir())
    distill(_cfg(toy_width_teacher, orchard_small, out), progress=False)  # complete: nothing is trained again
    assert {s: (out / s / "log.csv").read_text() for s in ("stage1", "stage2")} == logs
    assert sorted(p.name for p in (out / "stage2" / "checkpoints").iterdir()) == ckpts

    from sam3edge.models.student_io import load_student

    student = load_student(out / "student")
    assert student.concepts is not None and "leaf" in student.concepts


def test_distill_refuses_other_settings_and_bad_input(toy_width_teacher, orchard_small, tmp_path):
    out = tmp_path / "run"
    distill(_cfg(toy_width_teacher, orchard_small, out, stages=[1], stage1_steps=2, steps=2), progress=False)
    with pytest.raises(ValueError, match="other settings.*steps"):
        distill(_cfg(toy_width_teacher, orchard_small, out, stages=[1], stage1_steps=2, steps=3), progress=False)
    with pytest.raises(ValueError, match="no concepts"):
        distill(_cfg(toy_width_teacher, orchard_small, tmp_path / "b", concepts=[]), progress=False)
    with pytest.raises(ValueError, match="stages"):
        distill(_cfg(toy_width_teacher, orchard_small, tmp_path / "c", stages=[3]), progress=False)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        distill(_cfg(toy_width_teacher, tmp_path / "nowhere", tmp_path / "d"), progress=False)
