"""Sam3Student: the teacher's call contract, the training view, starting from teacher heads, save/load, ONNX."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sam3edge.models.outputs import ConceptOutputs
from sam3edge.models.registry import create_student
from sam3edge.models.sam3_heads import run_heads
from sam3edge.models.sam3_load import build_sam3, tiny_sam3_config
from sam3edge.models.student import Sam3Student
from sam3edge.models.student_io import init_heads_from_teacher, load_student, save_student
from sam3edge.models.teacher import Sam3Teacher, TeacherOutput
from sam3edge.runtime.concepts import ConceptCache

PHRASES = ["ripe apple", "leaf", "a purple giraffe"]
HEAD_FIELDS = ("logits", "boxes", "presence_logits", "mask_logits", "semantic_logits", "aux_logits", "aux_boxes",
               "aux_presence_logits")
TOY_TEACHER = dict(image_size=112, hidden=64, heads=4, encoder_layers=2, decoder_layers=3, num_queries=16)


def _images(sizes=((90, 200), (300, 120)), seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]


def _cache(phrases=PHRASES, width=64, seed=0) -> ConceptCache:
    rng = np.random.default_rng(seed)
    mask = np.zeros((len(phrases), 32), bool)
    mask[:, :5] = True
    return ConceptCache(list(phrases), rng.standard_normal((len(phrases), 32, width)).astype(np.float32), mask)


def _toy(**overrides) -> Sam3Student:
    torch.manual_seed(0)
    overrides = {"input_size": 64} | overrides
    concepts = _cache() if overrides.get("text_mode", "cache") == "cache" else None
    return create_student("toy", concepts=concepts, **overrides)


def _toy_teacher():
    """A tiny Sam3Model with the toy head config and perturbed head weights (so every tensor matters)."""
    model = build_sam3(tiny_sam3_config(**TOY_TEACHER), seed=0)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.startswith(("vision_encoder", "text_encoder")):
                p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    return model


def test_student_output_contract_equals_the_teachers(tiny_sam3_dir):
    teacher = Sam3Teacher.from_pretrained(tiny_sam3_dir)
    student = _toy(text_mode="encoder")
    images = _images()
    t, s = teacher(images, PHRASES), student(images, PHRASES)
    assert TeacherOutput is ConceptOutputs and type(t) is type(s) is ConceptOutputs
    q = student.spec.heads.num_queries
    assert s.scores.shape == s.logits.shape == (2, 3, q) and s.presence.shape == t.presence.shape == (2, 3)
    assert s.mask_logits.shape == (2, 3, q, 16, 16) and s.semantic_logits.shape == (2, 3, 16, 16)
    assert s.text_features.shape == (3, 32, 64) and s.text_mask.dtype == torch.bool
    assert [f.shape[-1] for f in s.image_features] == [16, 8, 4] and len(s.image_pos) == 3
    assert s.image_sizes == t.image_sizes == [(90, 200), (300, 120)] and s.phrases == t.phrases
    torch.testing.assert_close(s.scores, s.logits.sigmoid() * s.presence[..., None])
    for b, (h, w) in enumerate(s.image_sizes):  # boxes in pixels of each (non-square) original, clipped to it
        size = torch.tensor([w, h, w, h]).float()
        torch.testing.assert_close(s.boxes[b], s.boxes_normalized[b].clamp(0, 1) * size)
        assert (s.boxes[b] >= 0).all() and (s.boxes[b] <= size).all()
        inst = s.instances(b, 1, score_threshold=0.0)
        assert inst["masks"].shape == (q, h, w) and inst["boxes"].shape == (q, 4)


def test_image_features_are_computed_once_per_image_however_many_phrases():
    student = _toy()
    student.pair_chunk = 2  # several head chunks, still one encoder call
    calls = []
    hook = student.image_encoder.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    student(_images(), PHRASES * 2)
    hook.remove()
    assert calls == [2]


def test_pair_chunking_and_float_input_do_not_change_results():
    student = _toy()
    x = torch.rand(2, 3, 64, 64)
    a = student(x, PHRASES)
    student.pair_chunk = 1
    b = student(x, PHRASES)
    torch.testing.assert_close(a.scores, b.scores)
    torch.testing.assert_close(a.mask_logits, b.mask_logits)
    assert a.image_sizes == [(64, 64), (64, 64)]


def test_exemplar_boxes_are_used():
    student = _toy()
    boxes = torch.tensor([[[0.5, 0.5, 0.3, 0.3]], [[0.2, 0.3, 0.1, 0.2]]])
    plain = student(_images(), PHRASES[:1])
    with_boxes = student(_images(), PHRASES[:1], input_boxes=boxes, input_boxes_labels=torch.ones(2, 1).long())
    assert (plain.logits - with_boxes.logits).abs().max() > 1e-4
    with pytest.raises(ValueError, match="one row per image"):
        student(_images(), PHRASES[:1], input_boxes=boxes[:1])


def test_cache_mode_names_unknown_phrases_and_a_missing_cache():
    student = _toy()
    with pytest.raises(KeyError, match="'pear'.*ripe apple"):
        student(_images(), ["pear"])
    student.concepts = None
    with pytest.raises(ValueError, match="no concept cache.*text_mode='encoder'"):
        student(_images(), ["leaf"])
    with pytest.raises(ValueError, match="32 wide.*64 wide"):
        student.set_concepts(_cache(width=32))


def test_forward_pairs_trains_on_orchard_batches_with_the_set_criterion():
    from sam3edge.distill.losses import SetCriterion
    from sam3edge.distill.scene_batches import OrchardBatches

    student = _toy(text_mode="encoder").train()
    batches = OrchardBatches(student.tokenizer, images_per_batch=2, pairs_per_image=2, image_size=96,
                             mask_size=(24, 24))
    batch = batches[0]
    out = student.forward_pairs(batch)  # 96 px [-1, 1] batch -> 64 px [0, 1] student input
    assert out.logits.shape == (4, 16) and out.mask_logits.shape == (4, 16, 16, 16)
    assert out.aux_logits.shape == (3, 4, 16)
    loss, parts = SetCriterion()(out, batch.targets)
    loss.backward()
    assert torch.isfinite(loss) and parts["total"] > 0
    for part in (student.image_encoder.backbone, student.image_encoder.neck, student.heads.detr_decoder,
                 student.text_encoder):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters()), type(part).__name__


def test_forward_pairs_sees_what_the_inference_call_sees():
    from sam3edge.distill.scene_batches import OrchardBatches

    student = _toy()
    batch = OrchardBatches(student.tokenizer, images_per_batch=2, pairs_per_image=2, image_size=64)[0]
    student.set_concepts(_cache(list(dict.fromkeys(batch.phrases))))
    with torch.no_grad():
        pairs = student.forward_pairs(batch)
    full = student((batch.pixel_values + 1) / 2, list(dict.fromkeys(batch.phrases)))
    for n, (img, phrase) in enumerate(zip(batch.pair_image.tolist(), batch.phrases)):
        p = full.phrases.index(phrase)
        torch.testing.assert_close(pairs.logits[n], full.logits[img, p], atol=1e-5, rtol=0)
        torch.testing.assert_close(pairs.mask_logits[n], full.mask_logits[img, p], atol=1e-4, rtol=0)


def test_toy_heads_start_from_the_toy_teacher_and_compute_the_same_outputs():
    model = _toy_teacher()
    student = _toy()
    report = init_heads_from_teacher(student, model)
    assert report["kept"] == [] and report["ignored"] == [] and report["loaded"]
    gen = torch.Generator().manual_seed(2)
    ids = torch.randint(1, 49407, (2, 6), generator=gen)
    mask = torch.tensor([[1] * 6, [1] * 3 + [0] * 3])
    boxes, labels = torch.tensor([[[0.5, 0.5, 0.3, 0.3]], [[0.3, 0.6, 0.2, 0.2]]]), torch.tensor([[1], [0]])
    with torch.no_grad():
        vision = model.get_vision_features(torch.randn(2, 3, 112, 112, generator=gen))
        text = model.get_text_features(input_ids=ids, attention_mask=mask).pooler_output
        for extra in ((), (boxes, labels)):
            ref = run_heads(model, vision, text, mask, *extra)
            ours = student.heads(list(vision.fpn_hidden_states[:-1]), list(vision.fpn_position_encoding[:-1]),
                                 text, mask, *extra)
            for f in HEAD_FIELDS:
                err = (getattr(ours, f) - getattr(ref, f)).abs().max().item()
                assert err <= 1e-4 * max(1.0, getattr(ref, f).abs().max().item()), f"{f}: {err}"


def test_a_smaller_student_starts_from_the_teachers_first_layers_and_queries():
    model = _toy_teacher()
    student = _toy(num_queries=8, export_top_k=4, decoder_layers=2, encoder_layers=1)
    report = init_heads_from_teacher(student, model)
    assert report["kept"] == []
    assert "detr_decoder.layers.2.self_attn.q_proj.weight" in report["ignored"]
    sd = model.state_dict()
    assert torch.equal(student.heads.detr_decoder.query_embed.weight, sd["detr_decoder.query_embed.weight"][:8])
    assert torch.equal(student.heads.detr_decoder.layers[1].self_attn.q_proj.weight,
                       sd["detr_decoder.layers.1.self_attn.q_proj.weight"])


def test_chosen_teacher_layers_and_queries_are_the_ones_loaded():
    model = _toy_teacher()  # 3 decoder layers, 2 fusion-encoder layers, 16 queries
    sd = model.state_dict()
    student = _toy(num_queries=4, export_top_k=4, decoder_layers=2, encoder_layers=1)
    report = init_heads_from_teacher(student, model, layers={"detr_decoder": "spread", "detr_encoder": "last"},
                                     queries=[9, 2, 15, 0])
    assert report["layers"] == {"geometry_encoder": [0], "detr_encoder": [1], "detr_decoder": [0, 2]}
    assert report["queries"] == [9, 2, 15, 0]
    heads = student.heads
    assert torch.equal(heads.detr_decoder.layers[1].self_attn.q_proj.weight,
                       sd["detr_decoder.layers.2.self_attn.q_proj.weight"])
    assert torch.equal(heads.detr_decoder.layers[0].self_attn.q_proj.weight,
                       sd["detr_decoder.layers.0.self_attn.q_proj.weight"])
    assert torch.equal(heads.detr_encoder.layers[0].self_attn.q_proj.weight,
                       sd["detr_encoder.layers.1.self_attn.q_proj.weight"])
    assert torch.equal(heads.detr_decoder.query_embed.weight, sd["detr_decoder.query_embed.weight"][[9, 2, 15, 0]])
    assert torch.equal(heads.detr_decoder.reference_points.weight,
                       sd["detr_decoder.reference_points.weight"][[9, 2, 15, 0]])
    for bad, match in (({"layers": [0, 0]}, "increasing, distinct"), ({"layers": "middle"}, "unknown layer choice"),
                       ({"layers": {"decoder": "first"}}, "unknown layer stack"),
                       ({"queries": [0, 1, 2, 99]}, "distinct teacher query indices in 0..15"),
                       ({"queries": "best"}, "unknown query choice")):
        with pytest.raises(ValueError, match=match):
            init_heads_from_teacher(student, model, **({"layers": {"detr_decoder": bad["layers"]}}
                                                       if isinstance(bad.get("layers"), list) else bad))


def test_choose_layers_rules():
    from sam3edge.models.student_io import choose_layers

    assert choose_layers("first", 3, 6) == [0, 1, 2]
    assert choose_layers("last", 3, 6) == [3, 4, 5]
    assert choose_layers("spread", 3, 6) == [0, 2, 5]
    assert choose_layers("spread", 1, 6) == [0]
    assert choose_layers("first", 8, 6) == [0, 1, 2, 3, 4, 5]  # a deeper student keeps its extra layers
    assert choose_layers([1, 4, 5], 3, 6) == [1, 4, 5]
    with pytest.raises(ValueError, match="0..5"):
        choose_layers([1, 4, 6], 3, 6)


def test_mismatched_teacher_head_widths_name_the_first_mismatching_tensor():
    model = build_sam3(tiny_sam3_config(image_size=112), seed=0)  # heads 32 wide, the toy student's 64
    student = _toy()
    before = {k: v.clone() for k, v in student.heads.state_dict().items()}
    source = model.state_dict()
    first = next(n for n, v in student.heads.state_dict().items() if n in source and source[n].shape != v.shape)
    with pytest.raises(ValueError, match="cannot start student 'toy'") as err:
        init_heads_from_teacher(student, model)
    assert f"shape mismatch for {first!r}" in str(err.value)
    assert all(torch.equal(before[k], v) for k, v in student.heads.state_dict().items())


def test_save_and_load_round_trip_weights_spec_overrides_and_concepts(tmp_path):
    student = _toy(num_queries=12, export_top_k=6)
    path = save_student(student, tmp_path / "toy-student")
    save_student(student, path)  # replacing an existing student works and leaves no temporary directory
    assert sorted(p.name for p in tmp_path.iterdir()) == ["toy-student"]
    config = json.loads((path / "config.json").read_text())
    assert config["name"] == "toy" and config["overrides"] == {"input_size": 64, "num_queries": 12, "export_top_k": 6}
    loaded = load_student(path)
    assert loaded.spec == student.spec and loaded.concepts.phrases == PHRASES
    a, b = student(_images(), PHRASES), loaded(_images(), PHRASES)
    torch.testing.assert_close(a.scores, b.scores, atol=0, rtol=0)
    torch.testing.assert_close(a.mask_logits, b.mask_logits, atol=0, rtol=0)


def test_loading_names_a_missing_directory_a_corrupt_config_and_mismatched_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope does not exist"):
        load_student(tmp_path / "nope")
    path = save_student(_toy(text_mode="encoder"), tmp_path / "s")
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json is not readable JSON"):
        load_student(path)
    config["spec"]["heads"]["num_queries"] = 12
    config["spec"]["export"]["top_k"] = 5
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="shape mismatch for 'heads.detr_decoder.query_embed.weight'.*12, 64.*16, 64"):
        load_student(path)
    config["spec"]["heads"]["num_querys"] = 12
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="invalid student spec.*num_querys"):
        load_student(path)


def test_toy_student_exports_to_onnx_and_matches_onnxruntime(tmp_path):
    import onnxruntime as ort
    student = _toy(input_size=224)

    class TopKGraph(torch.nn.Module):  # uint8 image + concept features in, top-K detections out
        def __init__(self, student, k):
            super().__init__()
            self.student, self.k = student, k

        def forward(self, image, text, mask):
            f = self.student.image_encoder.forward_uint8(image)
            top = self.student.heads.forward_topk(f.levels, f.pos, text, mask, k=self.k)
            return top.scores, top.boxes, top.mask_logits

    graph = TopKGraph(student, student.spec.export.top_k).eval()
    feats, mask = student.concepts.lookup(["leaf"])
    args = (torch.from_numpy(_images(((224, 224),))[0])[None], torch.from_numpy(feats), torch.from_numpy(mask))
    with torch.no_grad():
        path = tmp_path / "toy.onnx"
        torch.onnx.export(graph, args, dynamo=True).save(str(path))
        want = graph(*args)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {i.name: a.numpy() for i, a in zip(session.get_inputs(), args)})
    assert [g.shape for g in got] == [(1, 10), (1, 10, 4), (1, 10, 56, 56)]
    for g, w in zip(got, want):
        assert np.abs(g - w.numpy()).max() <= 1e-4


@pytest.mark.parametrize("name", ["edge-s", *(pytest.param(n, marks=pytest.mark.slow)
                                             for n in ("edge-m", "edge-l", "efficientsam3-style"))])
def test_students_aimed_at_sam3_start_from_the_released_sam3_head_shapes(name):
    """Random weights in the released SAM3's head layout (transformers' head modules only, ~32 M parameters)."""
    from transformers import Sam3Config
    from transformers.models.sam3 import modeling_sam3 as m

    cfg = Sam3Config()
    torch.manual_seed(0)
    sd = torch.nn.ModuleDict({
        "geometry_encoder": m.Sam3GeometryEncoder(cfg.geometry_encoder_config),
        "detr_encoder": m.Sam3DetrEncoder(cfg.detr_encoder_config),
        "detr_decoder": m.Sam3DetrDecoder(cfg.detr_decoder_config),
        "mask_decoder": m.Sam3MaskDecoder(cfg.mask_decoder_config),
        "dot_product_scoring": m.Sam3DotProductScoring(cfg)}).state_dict()
    student = create_student(name, input_size=64)
    report = init_heads_from_teacher(student, sd)
    assert report["kept"] == []  # every student tensor came from SAM3
    q = student.spec.heads.num_queries
    torch.testing.assert_close(student.heads.detr_decoder.reference_points.weight,
                               sd["detr_decoder.reference_points.weight"][:q], atol=0, rtol=0)
