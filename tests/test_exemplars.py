"""Exemplar-box prompts end to end: the exemplar encoder graph, its tokens appended to a concept's text tokens in
the decoder, the runtime's checks of what a caller gives, and ``segment --box``."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from sam3edge.runtime.exemplars import Exemplar, exemplar_inputs, parse_box

PHRASES = ("ripe apple", "leaf")


# ---- what a caller gives (torch-free) ---------------------------------------------------------------------
def test_a_list_applies_to_every_concept_and_a_dict_to_the_named_ones():
    per, k = exemplar_inputs([[1, 2, 30, 40], ([5, 5, 9, 9], False)], PHRASES, 100, 200)
    assert k == 2 and per[0] == per[1]
    assert per[0] == [Exemplar((1.0, 2.0, 30.0, 40.0), True), Exemplar((5.0, 5.0, 9.0, 9.0), False)]
    per, k = exemplar_inputs({"leaf": [Exemplar((0, 0, 200, 100))]}, PHRASES, 100, 200)  # the whole image
    assert k == 1 and per == [[], [Exemplar((0, 0, 200, 100), True)]]
    per, k = exemplar_inputs({"leaf": [3, 4, 5, 6]}, PHRASES, 100, 200)  # one bare box
    assert per[1] == [Exemplar((3.0, 4.0, 5.0, 6.0), True)]
    assert exemplar_inputs([], PHRASES, 100, 200) == ([[], []], 0)


@pytest.mark.parametrize("boxes, message", [
    ([[0, 0, 0, 10]], "has no area"),
    ([[10, 5, 4, 9]], "has no area"),
    ([[float("nan"), 0, 5, 5]], "NaN or infinite"),
    ([[0, 0, float("inf"), 5]], "NaN or infinite"),
    ([[-1, 0, 5, 5]], "reaches outside the 200 x 100 image"),
    ([[0, 0, 5, 101]], "reaches outside the 200 x 100 image"),
    ([[0, 0, 5, 5]] * 17, "at most 16 per concept"),
    ([[0, 0, 5]], "is not a box"),
    ([["a", 0, 5, 5]], "is not a box"),
    ([([0, 0, 5, 5], "no")], "must be True (positive) or False"),
    ({"branch": [[0, 0, 5, 5]]}, "'branch', which is not among the concepts"),
    ("0,0,5,5", "must be a list of boxes"),
])
def test_bad_exemplars_are_refused_naming_the_box(boxes, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        exemplar_inputs(boxes, PHRASES, 100, 200)


def test_box_argument_forms():
    assert parse_box("1,2,3.5,4") == Exemplar((1.0, 2.0, 3.5, 4.0), True)
    assert parse_box("1,2,3,4:neg") == Exemplar((1.0, 2.0, 3.0, 4.0), False)
    assert parse_box("1,2,3,4:pos").positive
    for bad in ("1,2,3", "1,2,3,4:maybe", "a,b,c,d", ""):
        with pytest.raises(ValueError, match="--box"):
            parse_box(bad)


# ---- graphs against PyTorch ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["toy-fast", "edge-s-fast"])
def test_exported_exemplar_and_decoder_graphs_equal_pytorch(name, tmp_path):
    """Both fast-head widths (edge-s-fast: 128-wide decoder, tokens projected back to the text's 256; SAM3's heads:
    the toy bundles of test_segmenter_exemplars_equal_pytorch):
    with exemplars the ONNX graphs equal PyTorch for 1 and 5 boxes per concept; a concept whose row is padding only
    gets exactly its text-only answer; the boxes do change the others'."""
    import torch

    from sam3edge.export.onnx import exemplar_example, export_fp32
    from sam3edge.export.verify import onnx_runner, torch_runner
    from sam3edge.models.registry import create_student

    torch.manual_seed(0)
    student = create_student(name, input_size=128, text_mode="cache").eval()
    rng = np.random.default_rng(0)
    p, width = 3, student.spec.heads.in_width
    text = rng.standard_normal((p, 32, width)).astype(np.float32)
    mask = np.zeros((p, 32), bool)
    mask[:, :4] = True
    image = rng.integers(0, 255, (128, 128, 3), dtype=np.uint8)
    paths = export_fp32(student, tmp_path, [image], text, mask, fused=True, exemplars=True)
    reference, candidate = torch_runner(student), onnx_runner(paths)
    text_only = reference(image, text, mask)
    for k in (1, 5):
        boxes, labels = exemplar_example(p, k)
        ref = reference(image, text, mask, boxes, labels)
        got = candidate(image, text, mask, boxes, labels)
        for r, g, tol in zip(ref, got, (1e-5, 1e-5, 1e-5, 1e-3)):
            np.testing.assert_allclose(g, r, atol=tol)
        np.testing.assert_array_equal(got[4], ref[4])  # the same queries ranked alike
        np.testing.assert_array_equal(ref[0][-1], text_only[0][-1])  # padding only: a no-op
        assert np.abs(ref[0][:-1] - text_only[0][:-1]).max() > 1e-4  # exemplars reach the answer


def test_exemplar_tokens_in_the_graph_are_the_training_path(tmp_path):
    """The export graphs append the exemplar encoder's tokens to the text; the heads' own call with input_boxes
    (what distillation trains) gives the same scores."""
    import torch

    from sam3edge.export.graphs import DecoderGraph, ExemplarGraph, ImageEncoderGraph
    from sam3edge.export.onnx import exemplar_example
    from sam3edge.models.registry import create_student

    torch.manual_seed(0)
    student = create_student("edge-s-fast", input_size=128, text_mode="cache").eval()
    text = torch.randn(2, 32, 256)
    mask = torch.zeros(2, 32, dtype=torch.bool)
    mask[:, :5] = True
    image = torch.randint(0, 255, (1, 128, 128, 3), dtype=torch.uint8)
    boxes, labels = (torch.from_numpy(a) for a in exemplar_example(2, 2))
    labels[-1] = torch.tensor([1, 0])  # both rows hold real boxes here
    with torch.no_grad():
        levels = ImageEncoderGraph(student)(image)
        tokens, tokens_mask = ExemplarGraph(student)(levels[2], boxes, labels)
        graph = DecoderGraph(student, top_k=5)(*levels, torch.cat([text, tokens], 1),
                                               torch.cat([mask, tokens_mask], 1))
        feats = student.image_encoder.forward_uint8(image, channels_last=True)
        cxcywh = torch.cat([(boxes[..., :2] + boxes[..., 2:]) / 2, boxes[..., 2:] - boxes[..., :2]], -1)
        heads = student.heads
        out = heads.forward([f.expand(2, -1, -1, -1) for f in feats.levels],
                            [q.expand(2, -1, -1, -1) for q in feats.pos], text, mask, cxcywh, labels)
    scores = (out.logits.sigmoid() * out.presence_logits.sigmoid()).topk(5, dim=1).values
    torch.testing.assert_close(graph[0], scores, atol=1e-5, rtol=1e-4)


# ---- the runtime -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("target", ["onnx", "openvino"])
def test_segmenter_exemplars_equal_pytorch(target, toy_bundles, toy_student_dir, scenes):
    """Segmenter.segment(image, exemplars=...) on exported bundles: the decoder's answer equals PyTorch's with the
    same boxes (mapped from the image's pixels to the input frame), per concept, with a negative among them."""
    from PIL import Image

    from sam3edge.export.verify import torch_runner
    from sam3edge.models.student_io import load_student
    from sam3edge.runtime import Segmenter
    from sam3edge.runtime.image import Resize

    seg = Segmenter.load(toy_bundles[target], threads=2)
    assert seg.bundle.has_exemplar_encoder
    seg.set_concepts(["ripe apple", "leaf"])
    image = np.asarray(Image.open(scenes / "s0.png").convert("RGB").resize((200, 150)))
    exemplars = {"ripe apple": [[20, 30, 60, 80], ([100, 20, 190, 140], False)]}
    prepared = seg.prepare(image)
    raw = seg.infer(prepared, exemplars)
    text_only = seg.infer(prepared)

    student = load_student(toy_student_dir).eval()
    text, mask = student.concepts.lookup(["ripe apple", "leaf"])
    boxes = np.zeros((2, 2, 4), np.float32)
    boxes[0] = Resize.fit(150, 200, 128).boxes_to_input([[20, 30, 60, 80], [100, 20, 190, 140]])
    labels = np.array([[1, 0], [-10, -10]])
    ref = torch_runner(student)(prepared.frame[0], text.astype(np.float32), mask.astype(bool), boxes, labels)
    np.testing.assert_allclose(raw.scores, ref[0], atol=1e-4)
    # each rank's box is PyTorch's at that rank, or, where scores tie (within 1e-4: queries the random encoder leaves
    # near-identical), PyTorch's box at one of the tied ranks: top-K may order equal scores either way
    for p in range(raw.scores.shape[0]):
        for k in range(raw.scores.shape[1]):
            tied = np.flatnonzero(np.abs(ref[0][p] - raw.scores[p, k]) <= 1e-4)
            err = min(float(np.abs(raw.boxes[p, k] - ref[1][p, j]).max()) for j in tied)
            assert err <= 1e-4, (p, k, raw.scores[p, k], raw.boxes[p, k], ref[1][p, tied])
    np.testing.assert_allclose(raw.scores[1], text_only.scores[1], atol=1e-6)  # leaf had no boxes
    inst = seg.segment(image, exemplars=exemplars, score_threshold=0.0, top_k=3)
    assert inst.masks.shape == (len(inst), 150, 200)


def test_a_bundle_without_exemplar_encoder_refuses_boxes_and_keeps_working(toy_bundles, tmp_path):
    """A bundle of an earlier version (no exemplar graph, decoder of fixed length): boxes are refused with the
    way out; text prompts still work."""
    from sam3edge.runtime import Segmenter

    old = tmp_path / "old.sam3edge"
    shutil.copytree(toy_bundles["onnx"], old)
    manifest = json.loads((old / "manifest.json").read_text())
    graph = manifest["graphs"].pop("exemplar_encoder")
    del manifest["files"][graph["file"]]
    (old / graph["file"]).unlink()
    (old / "manifest.json").write_text(json.dumps(manifest))
    seg = Segmenter.load(old)
    assert not seg.bundle.has_exemplar_encoder
    image = np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(ValueError, match="no exemplar encoder graph.*export the run again with this version"):
        seg.segment(image, exemplars=[[1, 1, 20, 20]])
    assert seg.segment(image, exemplars=[]).image_size == (64, 64)  # no boxes: the text prompt as before


def test_segment_cli_box(toy_bundles, scenes, tmp_path):
    """--box on one image writes results; on a folder, or malformed, it is refused before the bundle loads."""
    cli = [sys.executable, "-m", "sam3edge.cli", "segment", str(toy_bundles["onnx"])]
    ok = subprocess.run([*cli, str(scenes / "s1.png"), "--out", str(tmp_path / "a"), "--concept", "leaf",
                         "--box", "10,10,60,60", "--box", "70,70,150,150:neg", "--quiet"],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert json.loads((tmp_path / "a" / "predictions.json").read_text())["images"]
    for args, message in (([str(scenes), "--box", "1,1,5,5"], "not an image file"),
                          ([str(scenes / "s1.png"), "--box", "1,1,5"], "expected x0,y0,x1,y1"),
                          ([str(scenes / "s1.png"), "--box", "1,1,500,5", "--concept", "leaf"],
                           "reaches outside the 160 x 160 image")):
        r = subprocess.run([*cli, *args, "--out", str(tmp_path / "b"), "--quiet"], capture_output=True, text=True)
        assert r.returncode != 0 and message in r.stderr, r.stderr


# ---- a concept from an example -----------------------------------------------------------------------------
def test_a_stored_visual_concept_answers_as_the_live_boxes_did(toy_bundles, scenes, tmp_path):
    """concepts add: the prompt of boxes on one image becomes a cache entry; on that image it gives the live
    exemplars' answer (its tokens packed, valid first), on another image it needs no boxes; the bundle still
    verifies, and a refused call leaves it byte for byte as it was."""
    from PIL import Image

    from sam3edge.runtime import Segmenter
    from sam3edge.runtime.bundle import Bundle
    from sam3edge.runtime.visual_concept import add_visual_concept

    bundle = tmp_path / "b.sam3edge"
    shutil.copytree(toy_bundles["openvino"], bundle)
    image = np.asarray(Image.open(scenes / "s2.png").convert("RGB"))
    boxes = [[20, 30, 70, 90], ([90, 10, 150, 60], False)]
    manifest = add_visual_concept(bundle, "my leaf", image, boxes, phrase="leaf")
    assert manifest["concepts"][-1] == "my leaf"
    assert manifest["visual_concepts"]["my leaf"]["positive"] == [True, False]
    assert Bundle.open(bundle).concepts == manifest["concepts"]  # checksums and cache agree

    seg = Segmenter.load(bundle, threads=2)
    seg.set_concepts(["leaf"])
    live = seg.infer(seg.prepare(image), boxes)
    seg.set_concepts(["my leaf"])
    stored = seg.infer(seg.prepare(image))
    np.testing.assert_allclose(stored.scores, live.scores, atol=1e-5)
    np.testing.assert_allclose(stored.boxes, live.boxes, atol=1e-5)
    other = np.asarray(Image.open(scenes / "s3.png").convert("RGB"))
    assert seg.segment(other, score_threshold=0.0, top_k=2).phrases == ["my leaf", "my leaf"]

    before = {p.name: p.read_bytes() for p in bundle.iterdir() if p.is_file()}
    for kwargs, message in ((dict(name="my leaf", exemplars=boxes), "already has a concept 'my leaf'"),
                            (dict(name="x", exemplars=[]), "at least one exemplar box"),
                            (dict(name="x", exemplars=[[0, 0, 500, 5]]), "reaches outside the 160 x 160 image"),
                            (dict(name="  ", exemplars=boxes), "a concept name is a non-empty phrase")):
        with pytest.raises(ValueError, match=message):
            add_visual_concept(bundle, image=image, phrase="leaf", **kwargs)
    assert {p.name: p.read_bytes() for p in bundle.iterdir() if p.is_file()} == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary directory left


def test_concepts_cli_add_and_list(toy_bundles, scenes, tmp_path):
    bundle = tmp_path / "b.sam3edge"
    shutil.copytree(toy_bundles["onnx"], bundle)
    cli = [sys.executable, "-m", "sam3edge.cli", "concepts"]
    r = subprocess.run([*cli, "add", str(bundle), "--name", "this apple", "--image", str(scenes / "s1.png"),
                        "--box", "10,10,60,60", "--phrase", "ripe apple"], capture_output=True, text=True)
    assert r.returncode == 0 and "added 'this apple'" in r.stdout, r.stderr
    r = subprocess.run([*cli, "list", str(bundle)], capture_output=True, text=True)
    assert r.returncode == 0 and "this apple  (visual: 1 box(es) with 'ripe apple' on a 160 x 160 image" in r.stdout
    r = subprocess.run([*cli, "add", str(bundle), "--name", "y", "--image", str(scenes / "s1.png"),
                        "--box", "10,10,60"], capture_output=True, text=True)
    assert r.returncode != 0 and "expected x0,y0,x1,y1" in r.stderr
