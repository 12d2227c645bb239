"""Fast multi-concept heads: per-image work once, per-concept work small, the same calls and exports as SAM3's."""

from __future__ import annotations

import numpy as np
import pytest
import torch

ORCHARD_PHRASES = ["ripe apple", "unripe apple", "leaf"]


def _inputs(student, prompts: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    feats = student.encode_images(torch.rand(1, 3, student.image_size, student.image_size, generator=g))
    c = student.spec.heads.in_width
    text = torch.randn(prompts, 8, c, generator=g)
    mask = torch.ones(prompts, 8, dtype=torch.bool)
    mask[:, 5:] = False
    levels = [f.expand(prompts, -1, -1, -1) for f in feats.levels]
    pos = [p.expand(prompts, -1, -1, -1) for p in feats.pos]
    return levels, pos, text, mask


@pytest.mark.parametrize("mask_mode", ["prototype", "coarse"])
@pytest.mark.parametrize("name", ["toy-fast", "edge-s-fast"])
def test_top_k_outputs_are_the_full_forwards_at_the_kept_queries(name, mask_mode):
    from sam3edge.models.registry import create_student

    torch.manual_seed(0)
    student = create_student(name, input_size=128, mask_mode=mask_mode)
    levels, pos, text, mask = _inputs(student, prompts=3)
    with torch.no_grad():
        full = student.heads(levels, pos, text, mask)
        top = student.heads.forward_topk(levels, pos, text, mask, k=5)
    q = student.spec.heads.num_queries
    assert full.mask_logits.shape == (3, q, 32, 32) and full.semantic_logits.shape == (3, 1, 32, 32)
    assert full.aux_logits.shape == (student.spec.heads.decoder_layers, 3, q)
    idx = top.indices
    torch.testing.assert_close(top.scores, full.scores.gather(1, idx), atol=1e-6, rtol=0)
    torch.testing.assert_close(top.mask_logits, full.mask_logits.gather(
        1, idx[..., None, None].expand(-1, -1, 32, 32)), atol=1e-4, rtol=1e-4)
    assert (top.scores[:, :-1] >= top.scores[:, 1:]).all()


def test_a_prompts_answer_does_not_depend_on_the_other_prompts():
    from sam3edge.models.registry import create_student

    torch.manual_seed(1)
    student = create_student("toy-fast", input_size=128)
    levels, pos, text, mask = _inputs(student, prompts=4)
    with torch.no_grad():
        pixels, grid, grid_pos = student.heads.image_context([f[:1] for f in levels], [p[:1] for p in pos])
        all4 = student.heads.topk_from_context(pixels, grid, grid_pos, text, mask, k=4)
        one = student.heads.topk_from_context(pixels, grid, grid_pos, text[2:3], mask[2:3], k=4)
    torch.testing.assert_close(one.scores[0], all4.scores[2], atol=1e-6, rtol=0)
    torch.testing.assert_close(one.mask_logits[0], all4.mask_logits[2], atol=1e-5, rtol=0)


def test_the_pixel_path_sees_no_concept_and_trains_through_the_set_loss():
    """image_context takes no prompt (so it can run once per frame), and stage 2's loss reaches every part."""
    import inspect

    from sam3edge.distill.losses import SetCriterion
    from sam3edge.distill.targets import masks_to_target
    from sam3edge.models.heads.fast import FastHeads
    from sam3edge.models.registry import create_student

    assert list(inspect.signature(FastHeads.image_context).parameters) == ["self", "levels", "pos"]
    torch.manual_seed(0)
    student = create_student("edge-s-fast", input_size=128, mask_mode="coarse", encoder_layers=1).train()
    levels, pos, text, mask = _inputs(student, prompts=2)
    out = student.heads(levels, pos, text, mask)
    target = torch.zeros(1, 32, 32, dtype=torch.bool)
    target[0, 4:12, 6:20] = True
    loss, _ = SetCriterion()(out, [masks_to_target(target, (32, 32))] * 2)
    loss.backward()
    heads = student.heads
    for part in (heads.mask_decoder.pixel_decoder, heads.mask_decoder.coarse_embedder, heads.grid_proj,
                 heads.detr_encoder, heads.detr_decoder):
        grads = [p.grad for p in part.parameters() if p.requires_grad]
        assert grads and all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0, part


def test_fast_heads_start_from_the_teacher_where_shapes_allow():
    from sam3edge.models.bundled import resolve_model
    from sam3edge.models.registry import create_student
    from sam3edge.models.student_io import init_heads_from_teacher
    from sam3edge.models.teacher import Sam3Teacher

    teacher = Sam3Teacher.from_pretrained(resolve_model("orchard-toy"))
    same = init_heads_from_teacher(create_student("toy-fast"), teacher)  # teacher-width pixel path
    assert any(n.startswith("mask_decoder.pixel_decoder.conv_layers") for n in same["loaded"])
    assert any(n.startswith("detr_encoder.layers.0.cross_attn") for n in same["loaded"])
    assert any(n.startswith("detr_decoder.layers.2") for n in same["loaded"]) and not same["reshaped"]
    assert {n.split(".")[0] for n in same["kept"]} <= {"grid_proj", "mask_decoder"}
    narrow = init_heads_from_teacher(create_student("toy-fast", mask_dim=32), teacher)
    assert "mask_decoder.mask_embedder.layers.2.weight" in narrow["reshaped"]
    assert "mask_decoder.instance_projection.weight" in narrow["reshaped"]
    assert any(n.startswith("detr_decoder.layers.0") for n in narrow["loaded"])


@torch.no_grad()
def test_fast_heads_with_the_teachers_fusion_layers_detect_as_the_teacher_from_the_first_step():
    """With fusion_self_attention the fast heads keep the teacher's fusion layers, so once initialised their queries,
    boxes, scores and presence are the teacher's heads' on the same features; only the mask path is new."""
    from sam3edge.models.bundled import resolve_model
    from sam3edge.models.registry import create_student
    from sam3edge.models.student_io import init_heads_from_teacher
    from sam3edge.models.teacher import Sam3Teacher

    teacher = Sam3Teacher.from_pretrained(resolve_model("orchard-toy"))
    sam3, fast = create_student("toy"), create_student("toy-fast", fusion_self_attention=True)
    init_heads_from_teacher(sam3, teacher)
    init_heads_from_teacher(fast, teacher)
    levels, pos, text, mask = _inputs(sam3, prompts=3, seed=5)
    a, b = sam3.heads(levels, pos, text, mask), fast.heads(levels, pos, text, mask)
    for name in ("logits", "boxes", "presence_logits", "aux_logits", "aux_boxes"):
        torch.testing.assert_close(getattr(b, name), getattr(a, name), atol=1e-4, rtol=1e-4, msg=name)
    no_sa = create_student("toy-fast", fusion_self_attention=False)
    init_heads_from_teacher(no_sa, teacher)
    assert (no_sa.heads(levels, pos, text, mask).boxes - a.boxes).abs().max() > 1e-2


def test_fast_bundle_declares_its_heads_equals_pytorch_and_runs_torch_free(toy_bundles, scenes, tmp_path):
    """fp32 ONNX of toy-fast: verified against PyTorch, feat shapes of the fast layout, the runtime's instances
    equal the student's, and the decoder graph holds no convolution (the pixel path runs in the image graph)."""
    import onnx

    from sam3edge.export.bundle import export_bundle
    from sam3edge.models.bundled import resolve_model
    from sam3edge.models.registry import create_student
    from sam3edge.models.student_io import init_heads_from_teacher, save_student
    from sam3edge.models.teacher import Sam3Teacher
    from sam3edge.runtime import Segmenter
    from sam3edge.runtime.bundle import Bundle
    from sam3edge.runtime.concepts import ConceptCache

    teacher = Sam3Teacher.from_pretrained(resolve_model("orchard-toy"))
    torch.manual_seed(0)
    student = create_student("toy-fast", input_size=128)
    init_heads_from_teacher(student, teacher)
    student.set_concepts(ConceptCache.from_teacher(teacher, ORCHARD_PHRASES))
    path = tmp_path / "fast.sam3edge"
    m = export_bundle(save_student(student, tmp_path / "student"), path, "onnx", "fp32", calib=scenes, n_verify=2,
                      progress=False)
    v = m["verification"]
    assert v["failed"] == [] and v["max_abs_error"]["scores"] <= 1e-4 and v["max_abs_error"]["masks"] <= 1e-2
    assert m["export_spec"]["heads"] == "fast" and Bundle.open(path).heads == "fast"
    assert Bundle.open(toy_bundles["onnx"]).heads == "sam3"
    shapes = {t["name"]: t["shape"] for t in m["graphs"]["image_encoder"]["outputs"]}
    assert shapes == {"feat0": [1, 64, 32, 32], "feat1": [1, 64, 8, 8], "feat2": [1, 64, 8, 8]}
    decoder_ops = {n.op_type for n in onnx.load(str(path / "graphs/decoder.onnx")).graph.node}
    assert "Conv" not in decoder_ops
    from PIL import Image

    seg = Segmenter.load(path, backend="onnxruntime", threads=2)
    k = m["export_spec"]["top_k"]
    for file in sorted(scenes.glob("*.png"))[:2]:
        image = np.asarray(Image.open(file).convert("RGB"))
        inst = seg.segment(image, score_threshold=0.05)
        out = student.eval()([image], ORCHARD_PHRASES)
        for p, phrase in enumerate(ORCHARD_PHRASES):
            want = out.instances(0, p, score_threshold=0.05)
            order = np.argsort(-want["scores"].numpy(), kind="stable")[:k]
            got = inst.select(inst.concept_ids == p)
            assert len(got) == len(order), phrase
            np.testing.assert_allclose(got.scores, want["scores"].numpy()[order], atol=1e-4)
            np.testing.assert_allclose(got.boxes, want["boxes"].numpy()[order], atol=0.5)


def test_narrow_fast_students_have_no_head_wide_map_at_the_fine_strides():
    """The fine FPN levels feed only the narrow pixel path: the neck makes them ``mask_dim`` wide itself (a
    256-wide stride-4 neck cost edge-s-fast 1.3 GFLOPs a frame), while the coarse level stays head-wide."""
    import torch

    from sam3edge.models.registry import create_student

    student = create_student("edge-s-fast", input_size=128)
    m, d = student.spec.heads.mask_dim, student.spec.heads.in_width
    levels = student.encode_images(torch.rand(1, 3, 128, 128)).levels
    assert [tuple(x.shape[1:]) for x in levels] == [(m, 32, 32), (m, 16, 16), (d, 8, 8)]
    neck = student.image_encoder.neck
    # every conv whose output is at stride 4 or 8 is at most mask_dim wide
    assert [neck.lateral[0].out_channels, neck.lateral[1].out_channels, neck.narrow["8"].out_channels] == [m] * 3
    assert all(c.out_channels == m for c in (*neck.out[0], *neck.out[1]))
    assert all(isinstance(x, torch.nn.Identity) for x in student.heads.mask_decoder.pixel_decoder.lateral[:2])
    # a uniform neck (toy-fast, SAM3 heads) keeps the state-dict keys of existing checkpoints
    assert not any(".narrow." in k for k in create_student("toy-fast").state_dict())
    with pytest.raises(ValueError, match=r"C = \(64, 64, 256\)"):
        student.heads([torch.zeros(1, d, 32, 32), levels[1], levels[2]], [torch.zeros(1)] * 3,
                      torch.zeros(1, 4, d), torch.ones(1, 4, dtype=torch.bool))


def test_stage1_regresses_only_the_levels_that_have_a_teacher_counterpart():
    import torch

    from sam3edge.distill.feature_loss import FeatureCriterion, ImageEncoderStage, regressed_levels
    from sam3edge.models.registry import create_student

    narrow, wide = create_student("edge-s-fast", input_size=128), create_student("edge-s", input_size=128)
    assert regressed_levels(narrow) == [2] and regressed_levels(wide) == [0, 1, 2]

    class Batch:
        pixel_values = torch.rand(2, 3, 128, 128) * 2 - 1

    teacher = [torch.randn(2, 256, 32 // 2 ** k, 32 // 2 ** k) for k in range(3)]
    out = ImageEncoderStage(narrow)(Batch())
    loss, parts = FeatureCriterion()(out, teacher)
    assert out.indices == [2] and set(parts) == {"mse2", "cos2", "total"} and torch.isfinite(loss)
    loss.backward()
    assert narrow.image_encoder.neck.lateral[-1].weight.grad.abs().sum() > 0


def test_box_prior_lowers_logits_only_outside_each_querys_grown_box():
    """0 inside the box grown by 10 % + 2 pixels, then the L1 distance (normalised units); continuous in the box."""
    from sam3edge.models.heads.fast import outside_box

    boxes = torch.tensor([[[0.25, 0.25, 0.75, 0.5], [0.0, 0.0, 1.0, 1.0]]])
    d = outside_box(boxes, 32, 64)
    assert d.shape == (1, 2, 32, 64) and (d >= 0).all()
    assert d[0, 1].max() == 0  # a full-image box penalises nothing
    ys, xs = (torch.arange(32) + 0.5) / 32, (torch.arange(64) + 0.5) / 64
    inside_x = (xs >= 0.25 - 0.05 - 2 / 64) & (xs <= 0.75 + 0.05 + 2 / 64)
    inside_y = (ys >= 0.25 - 0.025 - 2 / 32) & (ys <= 0.5 + 0.025 + 2 / 32)
    assert torch.equal(d[0, 0] == 0, inside_y[:, None] & inside_x[None, :])
    corner = d[0, 0, 0, 0]  # pixel centre (1/128, 1/64): outside on both axes
    expected = (0.25 - 0.05 - 2 / 64 - 0.5 / 64) + (0.25 - 0.025 - 2 / 32 - 0.5 / 32)
    assert abs(float(corner) - expected) < 1e-6
    nudged = outside_box(boxes + 1e-4, 32, 64)
    assert (nudged - d).abs().max() < 1e-3  # no jumps: exported graphs agree with PyTorch at the edges


def test_fast_students_hold_masks_to_their_boxes():
    from sam3edge.models.registry import create_student

    for name in ("toy-fast", "edge-s-fast"):
        student = create_student(name)
        assert student.heads.mask_decoder.box_prior > 0
        levels, pos, text, mask = _inputs(student, prompts=2, seed=1)
        with torch.no_grad():
            out = student.heads(levels, pos, text, mask)
            free = create_student(name, box_prior=0)
            free.load_state_dict(student.state_dict())
            base = free.heads(levels, pos, text, mask)
        from sam3edge.models.heads.fast import outside_box

        prior = student.heads.mask_decoder.box_prior * outside_box(out.boxes, *out.mask_logits.shape[-2:])
        torch.testing.assert_close(out.mask_logits, base.mask_logits - prior, atol=1e-3, rtol=1e-4)


def test_a_narrow_decoder_takes_the_teachers_width_and_projects_it_once():
    """input_dim: edge-s-fast's decoder is 128 wide while its text and coarsest level stay at SAM3's 256, so the
    teacher's concept cache and stage 1 fit; bad combinations are refused with the field named."""
    import torch

    from sam3edge.models.heads_config import HeadsConfig
    from sam3edge.models.registry import create_student

    student = create_student("edge-s-fast", input_size=128)
    h = student.spec.heads
    assert (h.hidden_size, h.in_width, h.fpn_widths[-1]) == (128, 256, 256)
    assert student.heads.prompt_proj.in_features == 256 and student.heads.prompt_proj.out_features == 128
    assert student.heads.grid_proj.in_channels == 256 and student.heads.grid_proj.out_channels == 128
    levels, pos, text, mask = _inputs(student, 3)
    assert text.shape[-1] == 256
    out = student.heads(levels, pos, text, mask)
    assert out.mask_logits.shape == (3, h.num_queries, 32, 32) and torch.isfinite(out.logits).all()
    with pytest.raises(ValueError, match=r"expected \[N, L, 256\]"):
        student.heads(levels, pos, torch.zeros(3, 8, 128), mask)
    with pytest.raises(ValueError, match="input_dim=256 differs from hidden_size=128: only fast heads"):
        HeadsConfig(hidden_size=128, input_dim=256, geometry_heads=4, encoder_heads=4, decoder_heads=4, mask_heads=4)
    with pytest.raises(ValueError, match="input_dim=12"):
        HeadsConfig(head_type="fast", mask_dim=64, input_dim=12)
    # toy-fast and the SAM3-layout heads keep one width and no projection (existing checkpoints load as before)
    assert create_student("toy-fast").heads.prompt_proj is None


def test_narrow_decoder_graph_equals_pytorch(tmp_path):
    """edge-s-fast's export graphs (fused ops, as the onnx and openvino targets write them) against PyTorch with the
    projections of a narrow decoder in between: scores, boxes and mask logits at 1 and 3 prompts."""
    import onnxruntime as ort

    from sam3edge.export.graphs import DecoderGraph, ImageEncoderGraph
    from sam3edge.export.onnx import export_fp32
    from sam3edge.models.registry import create_student

    torch.manual_seed(0)
    student = create_student("edge-s-fast", input_size=128).eval()
    rng = np.random.default_rng(0)
    text = rng.normal(0, 1, (3, 8, 256)).astype(np.float32)
    mask = np.zeros((3, 8), bool)
    mask[:, :4] = True
    image = rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)
    paths = export_fp32(student, tmp_path, [image], text, mask, fused=True)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    enc, dec = (ort.InferenceSession(str(paths[k]), so, providers=["CPUExecutionProvider"])
                for k in ("image_encoder", "decoder"))
    feats = enc.run(None, {"image": image[None]})
    with torch.no_grad():
        want_feats = ImageEncoderGraph(student)(torch.from_numpy(image)[None])
        graph = DecoderGraph(student)
        for p in (1, 3):
            got = dec.run(None, {"feat0": feats[0], "feat1": feats[1], "feat2": feats[2], "text": text[:p],
                                 "text_mask": mask[:p]})
            want = graph(*want_feats, torch.from_numpy(text[:p]), torch.from_numpy(mask[:p]))
            np.testing.assert_array_equal(got[4], want[4].numpy())  # the same queries kept
            for g, w, tol in zip(got[:4], want[:4], (1e-4, 1e-4, 1e-4, 1e-3)):
                np.testing.assert_allclose(g, w.numpy(), atol=tol, rtol=1e-4)
