"""`sam3edge quickstart` end to end on a tiny budget (slow: distils, exports two int8 bundles, scores them)."""

from __future__ import annotations

import json

import pytest


def test_quickstart_refuses_bad_numbers_before_any_work(tmp_path):
    from sam3edge.quickstart import QuickstartConfig

    for field, value in (("stage2_steps", -1), ("steps", 0), ("n_train", 2), ("lr", 0.0), ("threads", True)):
        with pytest.raises(ValueError, match=field):
            QuickstartConfig(out=tmp_path / "q", **{field: value})
    assert not (tmp_path / "q").exists()


@pytest.mark.slow
def test_quickstart_runs_the_whole_loop_and_prints_one_table(tmp_path, capsys):
    from sam3edge.cli import main

    out = tmp_path / "qs"
    # toy with stage 1 only: 30 steps are enough for a student whose heads are the teacher's; an undertrained toy-fast
    # (30 + 10 steps) fails its int8 export verification, and that refusal is right (make demo runs toy-fast in full)
    assert main(["quickstart", "--out", str(out), "--student", "toy", "--steps", "30", "--stage2-steps", "0",
                 "--n-train", "12", "--n-eval", "4", "--quiet"]) == 0
    printed = capsys.readouterr().out
    result = json.loads((out / "quickstart.json").read_text())
    models = [r["model"] for r in result["rows"]]
    assert models[0].startswith("teacher") and any("onnx int8" in m for m in models) and \
        any("openvino int8" in m for m in models)
    for r in result["rows"]:
        assert 0 <= r["cgf1"] <= 1 and r["latency_ms"] > 0
        assert r["model"] in printed
    # timings exist (speed is a benchmark's business, not a test's: no ratio is asserted)
    assert all(r["speedup"] > 0 for r in result["rows"][1:])
    report = result["distill_report"]  # stage 1 only: the heads are the teacher's
    assert report["student"] == "toy" and "stage1_final" in report and "stage2_final" not in report
    assert "detr_decoder.layers" in report["init_heads"]["parts_from_teacher"]
    assert len(list((out / "overlays").glob("*.png"))) == 4
    for target in ("onnx", "openvino"):
        manifest = json.loads((out / f"orchard-{target}-int8.sam3edge" / "manifest.json").read_text())
        assert manifest["precision"] == "int8" and manifest["verification"]["ran"]
