"""Our export-friendly SAM3 heads compute what transformers' Sam3Model heads compute, from the same weights."""

from __future__ import annotations

import dataclasses
import functools

import pytest
import torch

from sam3edge.models.convert import heads_state_dict_from_sam3, load_sam3_heads
from sam3edge.models.heads import HeadsConfig, Sam3Heads
from sam3edge.models.heads.roi_align import roi_align
from sam3edge.models.sam3_heads import run_heads
from sam3edge.models.sam3_load import build_sam3, tiny_sam3_config

FIELDS = ("logits", "boxes", "presence_logits", "mask_logits", "semantic_logits", "aux_logits", "aux_boxes",
          "aux_presence_logits")
HEAD_PREFIXES = ("geometry_encoder.", "detr_encoder.", "detr_decoder.", "mask_decoder.", "dot_product_scoring.")
# Exemplars per pair: two real boxes; a real box then padding; padding *before* a real box (SAM3's
# CLS then overwrites the real box - we must do the same).
BOXES = torch.tensor([[[0.5, 0.5, 0.3, 0.3], [0.2, 0.25, 0.1, 0.15]],
                      [[0.4, 0.6, 0.2, 0.4], [0.0, 0.0, 0.0, 0.0]],
                      [[0.0, 0.0, 0.0, 0.0], [0.7, 0.3, 0.5, 0.6]]])
LABELS = torch.tensor([[1, 0], [1, -10], [-10, 1]])


def _varied_config():
    """Other widths, heads, layer counts, queries, FFN sizes and ROI size than the tiny default."""
    cfg = tiny_sam3_config(image_size=98, hidden=64, num_queries=5, encoder_layers=2, decoder_layers=3, heads=4)
    cfg.geometry_encoder_config.num_layers = 2
    cfg.geometry_encoder_config.roi_size = 5
    cfg.geometry_encoder_config.intermediate_size = 96
    cfg.detr_decoder_config.intermediate_size = 80
    cfg.mask_decoder_config.num_attention_heads = 8
    return cfg


CONFIGS = {"tiny": lambda: tiny_sam3_config(image_size=112), "varied": _varied_config}
# float64 shows the computation is the same (agreement to ~1e-14); float32 bounds the rounding differences.
ATOL = {torch.float64: 1e-10, torch.float32: 1e-5}


@functools.cache
def _pair(config: str, dtype: torch.dtype):
    """A tiny Sam3Model with non-trivial head weights, our heads loaded from it, and features of 3 pairs."""
    model = build_sam3(CONFIGS[config](), seed=0)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # default init leaves norms at 1/0 and biases at 0: perturb so every tensor matters
        for name, p in model.named_parameters():
            if name.startswith(HEAD_PREFIXES):
                p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    model = model.to(dtype)
    heads = Sam3Heads.from_sam3(model).eval()
    size = model.config.vision_config.backbone_config.image_size
    ids = torch.randint(1, 49407, (3, 7), generator=gen)
    text_mask = torch.tensor([[1] * 7, [1] * 3 + [0] * 4, [1] * 5 + [0] * 2])
    with torch.no_grad():
        vision = model.get_vision_features(torch.randn(3, 3, size, size, generator=gen).to(dtype))
        text = model.get_text_features(input_ids=ids, attention_mask=text_mask).pooler_output
    inputs = (list(vision.fpn_hidden_states[:-1]), list(vision.fpn_position_encoding[:-1]), text, text_mask)
    return model, heads, vision, inputs


@pytest.fixture(params=[(c, d) for c in sorted(CONFIGS) for d in ATOL], ids=lambda p: f"{p[0]}-{str(p[1])[6:]}")
def any_pair(request):
    return _pair(*request.param)


@pytest.fixture(params=sorted(CONFIGS))
def pair(request):
    return _pair(request.param, torch.float32)


def _assert_same(ours, ref, atol):
    """Every output within ``atol`` times the output's range (at least 1): logits of 70 round coarser than 0.7."""
    for field in FIELDS:
        a, b = getattr(ours, field), getattr(ref, field)
        assert a.shape == b.shape, field
        err, bound = (a - b).abs().max().item(), atol * max(1.0, b.abs().max().item())
        assert err <= bound, f"{field}: max abs error {err:.2e} > {bound:.1e}"


def test_heads_equal_transformers_for_text_prompts(any_pair):
    model, heads, vision, inputs = any_pair
    with torch.no_grad():
        ref = run_heads(model, vision, inputs[2], inputs[3])
        _assert_same(heads(*inputs), ref, ATOL[inputs[2].dtype])
    q = model.config.detr_decoder_config.num_queries
    assert ref.aux_logits.shape == (model.config.detr_decoder_config.num_layers, 3, q)


def test_heads_equal_transformers_with_positive_negative_and_padded_exemplars(any_pair):
    model, heads, vision, inputs = any_pair
    boxes = BOXES.to(inputs[2].dtype)
    with torch.no_grad():
        ref = run_heads(model, vision, inputs[2], inputs[3], boxes, LABELS)
        ours = heads(*inputs, boxes, LABELS)
        _assert_same(ours, ref, ATOL[boxes.dtype])
        text_only = heads(*inputs)
    # The exemplars really changed the outputs: the geometry path is exercised, not bypassed.
    assert (ours.logits - text_only.logits).abs().max() > 1e-3


def test_exemplars_without_labels_count_as_positive(pair):
    _, heads, _, inputs = pair
    with torch.no_grad():
        a = heads(*inputs, BOXES)
        b = heads(*inputs, BOXES, torch.ones(3, 2, dtype=torch.long))
    torch.testing.assert_close(a.logits, b.logits, atol=0, rtol=0)


@pytest.mark.parametrize("exemplars", [False, True])
def test_topk_equals_the_top_queries_of_the_full_forward(pair, exemplars):
    _, heads, _, inputs = pair
    extra = (BOXES, LABELS) if exemplars else ()
    q = heads.config.num_queries
    with torch.no_grad():
        full = heads(*inputs, *extra)
        for k in (1, q):
            top = heads.forward_topk(*inputs, *extra, k=k)
            scores, idx = full.scores.topk(k, dim=1)
            torch.testing.assert_close(top.indices, idx, atol=0, rtol=0)
            torch.testing.assert_close(top.scores, scores, atol=1e-6, rtol=0)
            torch.testing.assert_close(top.boxes, full.boxes.gather(1, idx[..., None].expand(-1, -1, 4)),
                                       atol=1e-6, rtol=0)
            h, w = full.mask_logits.shape[-2:]
            masks = full.mask_logits.gather(1, idx[:, :, None, None].expand(-1, -1, h, w))
            torch.testing.assert_close(top.mask_logits, masks, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(top.presence, full.presence_logits.sigmoid(), atol=0, rtol=0)


def test_topk_rejects_k_outside_the_query_count(pair):
    _, heads, _, inputs = pair
    with pytest.raises(ValueError, match="num_queries"):
        heads.forward_topk(*inputs, k=heads.config.num_queries + 1)


def test_roi_align_equals_torchvision_including_boxes_past_the_edges():
    import torchvision
    gen = torch.Generator().manual_seed(0)
    for h, w in ((8, 8), (7, 13), (1, 1)):
        features = torch.randn(2, 3, h, w, generator=gen)
        centre = torch.rand(2, 5, 2, generator=gen) * 1.4 - 0.2  # some boxes leave the map
        size = torch.rand(2, 5, 2, generator=gen)
        size[0, 0] = 0.0  # degenerate box: torchvision widens it to one pixel
        size[0, 1] = 1.0  # the whole map: the largest sample grid
        boxes = torch.cat([centre - size / 2, centre + size / 2], -1) * torch.tensor([w, h, w, h])
        ref = torchvision.ops.roi_align(features, list(boxes.unbind(0)), 7).view(2, 5, 3, 7, 7)
        torch.testing.assert_close(roi_align(features, boxes, 7), ref, atol=1e-6, rtol=0)


@pytest.mark.parametrize("change, first_bad", [
    (dict(num_queries=9), "detr_decoder.query_embed.weight"),
    (dict(encoder_ffn_size=64), "detr_encoder.layers.0.mlp.fc1.weight"),
])
def test_shape_mismatch_names_the_first_mismatching_tensor(change, first_bad):
    model = build_sam3(tiny_sam3_config(image_size=112), seed=0)
    cfg = dataclasses.replace(HeadsConfig.from_sam3_config(model.config), **change)
    heads = Sam3Heads(cfg)
    before = {k: v.clone() for k, v in heads.state_dict().items()}
    with pytest.raises(ValueError) as err:
        load_sam3_heads(heads, model.state_dict())
    message = str(err.value)
    expected = tuple(heads.state_dict()[first_bad].shape)
    got = tuple(model.state_dict()[first_bad].shape)
    assert first_bad in message and str(expected) in message and str(got) in message
    assert "HeadsConfig.from_sam3_config" in message  # says what to do
    assert all(torch.equal(before[k], v) for k, v in heads.state_dict().items())  # nothing half-loaded


def test_missing_tensors_fail_when_strict_and_keep_their_values_otherwise():
    model = build_sam3(tiny_sam3_config(image_size=112), seed=0)
    cfg = dataclasses.replace(HeadsConfig.from_sam3_config(model.config), encoder_layers=2)
    heads = Sam3Heads(cfg)
    with pytest.raises(ValueError, match="detr_encoder.layers.1.layer_norm1.weight"):
        load_sam3_heads(heads, model.state_dict())
    extra = heads.detr_encoder.layers[1].self_attn.q_proj.weight.clone()
    load_sam3_heads(heads, model.state_dict(), strict=False)
    assert torch.equal(heads.detr_encoder.layers[1].self_attn.q_proj.weight, extra)
    assert torch.equal(heads.detr_decoder.query_embed.weight, model.detr_decoder.query_embed.weight)


def test_converter_keeps_only_head_tensors_and_accepts_a_detector_model_prefix():
    model = build_sam3(tiny_sam3_config(image_size=112), seed=0)
    sd = model.state_dict()
    heads = heads_state_dict_from_sam3(sd)
    assert set(heads) == set(Sam3Heads(HeadsConfig.from_sam3_config(model.config)).state_dict())
    assert heads_state_dict_from_sam3({f"detector_model.{k}": v for k, v in sd.items()}).keys() == heads.keys()


def test_config_round_trips_and_rejects_unknown_fields():
    cfg = HeadsConfig.from_sam3_config(tiny_sam3_config(image_size=112))
    assert HeadsConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown HeadsConfig fields"):
        HeadsConfig.from_dict({**cfg.to_dict(), "num_querys": 3})
    with pytest.raises(ValueError, match="must divide hidden_size"):
        HeadsConfig(hidden_size=64, decoder_heads=3)


def test_bad_inputs_are_named():
    heads = Sam3Heads(HeadsConfig(hidden_size=32, geometry_layers=1, encoder_layers=1, decoder_layers=1,
                                  num_queries=4, geometry_heads=2, encoder_heads=2, decoder_heads=2, mask_heads=2))
    fpn = [torch.zeros(1, 32, 8, 8), torch.zeros(1, 32, 4, 4)]
    with pytest.raises(ValueError, match="3 levels"):
        heads(fpn, fpn, torch.zeros(1, 3, 32), torch.ones(1, 3, dtype=torch.bool))
    fpn.append(torch.zeros(1, 32, 2, 2))
    with pytest.raises(ValueError, match="text_features"):
        heads(fpn, fpn, torch.zeros(1, 3, 16), torch.ones(1, 3, dtype=torch.bool))


def test_heads_export_with_torch_export():
    cfg = HeadsConfig.from_sam3_config(tiny_sam3_config(image_size=112))
    heads = Sam3Heads(cfg).eval()
    gen = torch.Generator().manual_seed(0)
    fpn = [torch.randn(1, cfg.hidden_size, s, s, generator=gen) for s in (32, 16, 8)]
    pos = [torch.randn(f.shape, generator=gen) for f in fpn]
    args = (fpn, pos, torch.randn(1, 5, cfg.hidden_size, generator=gen), torch.tensor([[1, 1, 1, 0, 0]]).bool(),
            BOXES[1:2], LABELS[1:2])
    program = torch.export.export(heads, args, strict=False)
    with torch.no_grad():
        _assert_same(program.module()(*args), heads(*args), atol=1e-6)


def test_every_parameter_but_the_unused_pixel_stage_gets_a_gradient(pair):
    _, heads, _, inputs = pair
    heads.zero_grad()
    out = heads(*inputs, BOXES, LABELS)
    sum(getattr(out, f).sum() for f in FIELDS).backward()
    no_grad = {n for n, p in heads.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0}
    heads.zero_grad()
    # SAM3 builds 3 pixel-decoder stages and uses 2 (one per finer FPN level); the third only loads.
    assert no_grad == {f"mask_decoder.pixel_decoder.{m}.2.{t}" for m in ("conv_layers", "norms")
                       for t in ("weight", "bias")}


@pytest.mark.slow
def test_converter_loads_the_default_sam3_head_shapes_and_matches_them():
    """The released SAM3's head layout (random weights; built from transformers' head modules only)."""
    from transformers import Sam3Config
    from transformers.models.sam3 import modeling_sam3 as m

    cfg = Sam3Config()
    # Sam3Model hands its attention implementation to these sub-configs; built alone they keep None,
    # and then transformers' mask factory returns no mask at all (padded exemplars are attended to).
    for sub in (cfg.geometry_encoder_config, cfg.detr_encoder_config, cfg.detr_decoder_config,
                cfg.mask_decoder_config):
        sub._attn_implementation = "sdpa"
    torch.manual_seed(0)
    parts = torch.nn.ModuleDict({
        "geometry_encoder": m.Sam3GeometryEncoder(cfg.geometry_encoder_config),
        "detr_encoder": m.Sam3DetrEncoder(cfg.detr_encoder_config),
        "detr_decoder": m.Sam3DetrDecoder(cfg.detr_decoder_config),
        "mask_decoder": m.Sam3MaskDecoder(cfg.mask_decoder_config),
        "dot_product_scoring": m.Sam3DotProductScoring(cfg)}).eval()
    sd = parts.state_dict()
    heads = Sam3Heads(HeadsConfig.from_sam3_config(cfg)).eval()
    assert heads.config == HeadsConfig()  # our defaults are SAM3's
    load_sam3_heads(heads, sd)
    for name, tensor in heads.state_dict().items():
        assert torch.equal(tensor, sd[name]), name
    # Same outputs at full width on a small feature grid (run_heads only reads the five head modules).
    d, g = cfg.detr_decoder_config.hidden_size, 6
    fpn = [torch.randn(1, d, s, s) for s in (4 * g, 2 * g, g, g // 2)]
    pos = [torch.randn(f.shape) for f in fpn]
    text, mask = torch.randn(1, 5, d), torch.tensor([[1, 1, 1, 0, 0]])
    vision = m.Sam3VisionEncoderOutput(fpn_hidden_states=tuple(fpn), fpn_position_encoding=tuple(pos))
    with torch.no_grad():
        ref = run_heads(parts, vision, text, mask, BOXES[1:2], LABELS[1:2])
        _assert_same(heads(fpn[:-1], pos[:-1], text, mask, BOXES[1:2], LABELS[1:2]), ref, ATOL[torch.float32])


@pytest.mark.slow
def test_topk_heads_export_to_onnx_and_run_in_onnxruntime(tmp_path):
    import onnxruntime as ort
    cfg = HeadsConfig.from_sam3_config(tiny_sam3_config(image_size=112))
    heads = Sam3Heads(cfg).eval()

    class TopK(torch.nn.Module):  # ONNX graphs take flat tensors
        def __init__(self):
            super().__init__()
            self.heads = heads

        def forward(self, f0, f1, f2, p0, p1, p2, text, mask, boxes, labels):
            return tuple(self.heads.forward_topk([f0, f1, f2], [p0, p1, p2], text, mask, boxes, labels, k=4))

    gen = torch.Generator().manual_seed(0)
    fpn = [torch.randn(1, cfg.hidden_size, s, s, generator=gen) for s in (32, 16, 8)]
    args = (*fpn, *[torch.randn(f.shape, generator=gen) for f in fpn], torch.randn(1, 5, cfg.hidden_size),
            torch.tensor([[1, 1, 1, 0, 0]]).bool(), BOXES[1:2], LABELS[1:2])
    path = tmp_path / "heads_topk.onnx"
    torch.onnx.export(TopK().eval(), args, dynamo=True).save(str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outs = session.run(None, {i.name: a.numpy() for i, a in zip(session.get_inputs(), args)})
    with torch.no_grad():
        for got, want in zip(outs, TopK()(*args)):
            torch.testing.assert_close(torch.from_numpy(got), want, atol=1e-5, rtol=1e-5)
