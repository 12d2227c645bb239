"""A process exports a student's fp32 graphs once (sam3edge.export.graph_memo), and never serves stale ones."""

from __future__ import annotations

import json

import numpy as np
import pytest


def _writer(calls: list):
    def export(folder):
        calls.append(folder)
        (folder / "sub").mkdir(parents=True, exist_ok=True)
        (folder / "g.onnx").write_bytes(b"graph %d" % len(calls))
        (folder / "sub" / "g.onnx.data").write_bytes(b"weights")  # external data travels with its graph
        return {"g": folder / "g.onnx"}
    return export


def test_the_same_key_is_exported_once_and_copied_whole(tmp_path):
    from sam3edge.export.graph_memo import memo_stats, reuse_graphs

    calls, before = [], memo_stats()
    a = reuse_graphs(lambda: "test-key-a", tmp_path / "a", _writer(calls))
    b = reuse_graphs(lambda: "test-key-a", tmp_path / "b", _writer(calls))
    assert len(calls) == 1 and a == {"g": tmp_path / "a" / "g.onnx"} and b == {"g": tmp_path / "b" / "g.onnx"}
    assert b["g"].read_bytes() == a["g"].read_bytes() == b"graph 1"
    assert (tmp_path / "b" / "sub" / "g.onnx.data").read_bytes() == b"weights"
    after = memo_stats()
    assert (after["hits"] - before["hits"], after["misses"] - before["misses"]) == (1, 1)
    reuse_graphs(lambda: "test-key-b", tmp_path / "c", _writer(calls))  # another key: exported
    assert len(calls) == 2 and (tmp_path / "c" / "g.onnx").read_bytes() == b"graph 2"


def test_a_failed_export_is_not_kept_and_reuse_can_be_turned_off(tmp_path, monkeypatch):
    from sam3edge.export import graph_memo

    def fails(folder):
        raise RuntimeError("exporter broke")

    with pytest.raises(RuntimeError, match="exporter broke"):
        graph_memo.reuse_graphs(lambda: "test-key-fail", tmp_path / "x", fails)
    calls = []
    graph_memo.reuse_graphs(lambda: "test-key-fail", tmp_path / "y", _writer(calls))
    assert len(calls) == 1  # the failure left nothing behind to serve
    monkeypatch.setenv("SAM3EDGE_REUSE_GRAPHS", "0")
    graph_memo.reuse_graphs(lambda: "test-key-fail", tmp_path / "z", _writer(calls))
    assert calls[-1] == tmp_path / "z" and len(calls) == 2  # off: written straight to out_dir, every time
    monkeypatch.delenv("SAM3EDGE_REUSE_GRAPHS")
    big = graph_memo.MAX_ENTRY_BYTES + 1

    def no_key():
        raise AssertionError("a key was computed for graphs too big to keep")

    graph_memo.reuse_graphs(no_key, tmp_path / "w", _writer(calls), expected_bytes=big)
    graph_memo.reuse_graphs(no_key, tmp_path / "v", _writer(calls), expected_bytes=big)
    assert calls[-2:] == [tmp_path / "w", tmp_path / "v"]  # too big to keep: each export writes its own


def test_the_key_follows_weights_example_inputs_and_options(tmp_path):
    import torch

    from sam3edge.export.graph_memo import graph_key
    from sam3edge.models.registry import create_student
    from sam3edge.models.student_io import load_student, save_student

    torch.manual_seed(0)
    student = create_student("toy", input_size=64)
    image, text, mask = np.zeros((64, 64, 3), np.uint8), np.ones((2, 8, 64), np.float32), np.ones((2, 8), bool)
    opts = {"fused": True, "exemplars": True}
    key = graph_key(student, (image, text, mask), opts)
    assert graph_key(load_student(save_student(student, tmp_path / "s")), (image, text, mask), opts) == key
    assert graph_key(student, (image, text, mask), {"fused": False, "exemplars": True}) != key
    assert graph_key(student, (image + 1, text, mask), opts) != key
    assert graph_key(student, (image, text[:, :7], mask[:, :7]), opts) != key  # another text length
    with torch.no_grad():
        next(iter(student.parameters())).view(-1)[0] += 1e-6
    changed = graph_key(student, (image, text, mask), opts)
    assert changed != key
    assert graph_key(student.to(torch.bfloat16), (image, text, mask), opts) not in (key, changed)  # no numpy twin


def test_a_second_bundle_of_the_same_student_reuses_its_graphs_byte_for_byte(toy_bundles, toy_student_dir, scenes,
                                                                             tmp_path):
    from sam3edge.export.bundle import export_bundle
    from sam3edge.export.graph_memo import memo_stats

    before = memo_stats()["hits"]
    m = export_bundle(toy_student_dir, tmp_path / "again.sam3edge", "onnx", "fp32", calib=scenes, n_verify=2,
                      progress=False)
    assert memo_stats()["hits"] == before + 1
    first = json.loads((toy_bundles["onnx"] / "manifest.json").read_text())
    graphs = [f for f in first["files"] if f.startswith("graphs/")]
    assert len(graphs) >= 3 and all(m["files"][f] == first["files"][f] for f in graphs)
    assert m["verification"]["failed"] == [] and m["verification"]["recall"] == 1.0
