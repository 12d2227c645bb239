"""`sam3edge quickstart` end to end on a tiny budget (slow: distils, exports two int8 bundles, scores them)."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_quickstart_runs_the_whole_loop_and_prints_one_table(tmp_path, capsys):
    from sam3edge.cli import main

    out = tmp_path / "qs"
    assert main(["quickstart", "--out", str(out), "--steps", "30", "--n-train", "12", "--n-eval", "4",
                 "--quiet"]) == 0
    printed = capsys.readouterr().out
    result = json.loads((out / "quickstart.json").read_text())
    models = [r["model"] for r in result["rows"]]
    assert models[0].startswith("teacher") and any("onnx int8" in m for m in models) and \
        any("openvino int8" in m for m in models)
    for r in result["rows"]:
        assert 0 <= r["cgf1"] <= 1 and r["latency_ms"] > 0
        assert r["model"] in printed
    # timings exist; the toy student is barely faster than its toy teacher (same heads), so no ratio is asserted
    assert all(r["speedup"] > 0 for r in result["rows"][1:])
    assert len(list((out / "overlays").glob("*.png"))) == 4
    for target in ("onnx", "openvino"):
        manifest = json.loads((out / f"orchard-{target}-int8.sam3edge" / "manifest.json").read_text())
        assert manifest["precision"] == "int8" and manifest["verification"]["ran"]
