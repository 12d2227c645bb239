"""The fused ops' contract on CPU: the PyTorch reference equals the unfused heads, the custom ops are one
node each under torch.export, and bad input raises a clear ValueError on every path (eager and fake)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sam3edge.models.heads import HeadsConfig, Sam3Heads
from sam3edge.models.heads.attention import Attention, padding_bias
from sam3edge.models.heads.detr_decoder import DetrDecoder
from sam3edge.ops import (
    OPS,
    fused_ops,
    fused_ops_enabled,
    library,  # noqa: F401  (registers torch.ops.sam3edge.*)
    reference,
)

OPS_NS = torch.ops.sam3edge


def _prompt_inputs(n=2, lq=37, lk=9, c=64, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(n, length, c, generator=g, dtype=dtype) for length in (lq, lk, lk))
    mask = torch.ones(n, lk, dtype=torch.bool)
    mask[0, 5:] = False
    if n > 1:
        mask[1, :] = False  # a fully padded prompt: averages its tokens, no NaN
    return q, k, v, padding_bias(mask, dtype)[:, 0, 0, :].contiguous()


def _box_module(c=64, heads=4):
    torch.manual_seed(1)
    return DetrDecoder(HeadsConfig(hidden_size=c, decoder_heads=heads, decoder_layers=1, num_queries=6,
                                   encoder_heads=heads, geometry_heads=heads, mask_heads=heads)).eval()


def _mlp(m):
    return (m.layer1.weight, m.layer1.bias, m.layer2.weight, m.layer2.bias)


def _box_inputs(dec, n=2, q=6, h=5, w=7, c=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    boxes = torch.rand(n, q, 4, generator=g) * 0.5 + 0.2
    return (torch.randn(n, q + 1, c, generator=g), torch.randn(n, h * w, c, generator=g),
            torch.randn(n, h * w, c, generator=g), boxes)


def test_registry_states_why_each_op_was_chosen():
    assert set(OPS) == {"prompt_attention", "box_attention", "mask_topk"}
    for info in OPS.values():
        assert "ms" in info.why and "%" in info.why, f"{info.name}: no profile figure in its justification"
        assert hasattr(OPS_NS, info.name)


def test_prompt_attention_reference_equals_attention_module_with_padding_bias():
    torch.manual_seed(0)
    attn = Attention(64, 4).eval()
    x, prompt, _, _ = _prompt_inputs()
    mask = torch.ones(2, prompt.shape[1], dtype=torch.bool)
    mask[0, 4:] = False
    mask[1, :] = False
    bias = padding_bias(mask, x.dtype)
    with torch.no_grad():
        plain = attn(x, prompt, prompt, bias)
        core = reference.prompt_attention(attn.q_proj(x), attn.k_proj(prompt), attn.v_proj(prompt),
                                          bias[:, 0, 0, :], 4, attn.scaling)
        fused = attn.o_proj(core)
    torch.testing.assert_close(fused, plain, rtol=0, atol=1e-6)
    assert torch.isfinite(fused).all()


def test_box_attention_reference_builds_the_decoders_boxrpb_bias():
    dec = _box_module()
    attn = dec.layers[0].vision_cross_attn
    q, k, v, boxes = _box_inputs(dec)
    with torch.no_grad():
        bias = F.pad(dec.box_bias(boxes, 5, 7), (0, 0, 1, 0))  # presence row: no bias
        plain = attn(q, k, v, bias)
        fused = attn.o_proj(reference.box_attention(attn.q_proj(q), attn.k_proj(k), attn.v_proj(v), boxes, 5, 7,
                                                    *_mlp(dec.box_rpb_embed_x), *_mlp(dec.box_rpb_embed_y),
                                                    attn.num_heads, attn.scaling))
    torch.testing.assert_close(fused, plain, rtol=0, atol=1e-5)


def test_mask_topk_reference_equals_topk_gather_project_product():
    g = torch.Generator().manual_seed(0)
    n, q, c, h, w, k = 2, 12, 32, 9, 11, 5
    scores, embed = torch.rand(n, q, generator=g), torch.randn(n, q, c, generator=g)
    pixels = torch.randn(n, c, h, w, generator=g)
    proj = torch.nn.Conv2d(c, c, 1)
    with torch.no_grad():
        top, idx, masks = reference.mask_topk(scores, embed, pixels, proj.weight.flatten(1), proj.bias, k, h, w, 0)
        want_top, want_idx = scores.topk(k, dim=1)
        e = embed.gather(1, want_idx[..., None].expand(-1, -1, c))
        want = torch.einsum("nkc,nchw->nkhw", e, proj(pixels))
        torch.testing.assert_close(masks, want, rtol=0, atol=1e-4)
        assert torch.equal(idx, want_idx) and torch.equal(top, want_top)
        # upsampled, then sigmoid / binary: the same logits resized as F.interpolate does
        up = F.interpolate(want, size=(20, 17), mode="bilinear", align_corners=False)
        _, _, logits = reference.mask_topk(scores, embed, pixels, proj.weight.flatten(1), proj.bias, k, 20, 17, 0)
        _, _, probs = reference.mask_topk(scores, embed, pixels, proj.weight.flatten(1), proj.bias, k, 20, 17, 1)
        _, _, binary = reference.mask_topk(scores, embed, pixels, proj.weight.flatten(1), proj.bias, k, 20, 17, 2)
    torch.testing.assert_close(logits, up, rtol=0, atol=1e-4)
    torch.testing.assert_close(probs, logits.sigmoid(), rtol=0, atol=1e-6)
    assert binary.dtype == torch.uint8 and set(binary.unique().tolist()) == {0, 1}
    assert torch.equal(binary.bool(), logits > 0)


@pytest.mark.parametrize("k", [0, 1, 12])
def test_mask_topk_handles_k_zero_and_k_equal_q(k):
    scores, embed, pixels = torch.rand(2, 12), torch.randn(2, 12, 8), torch.randn(2, 8, 4, 5)
    top, idx, masks = OPS_NS.mask_topk(scores, embed, pixels, torch.eye(8), torch.zeros(8), k, 4, 5, 0)
    assert top.shape == (2, k) and idx.shape == (2, k) and masks.shape == (2, k, 4, 5)
    torch.testing.assert_close(top, scores.topk(k, dim=1).values, rtol=0, atol=0)
    if k == 12:  # every query, best first
        assert torch.equal(torch.sort(idx, dim=1).values, torch.arange(12).expand(2, -1))
    if k:
        torch.testing.assert_close(masks[:, 0], torch.einsum("nc,nchw->nhw", embed.gather(
            1, idx[:, :1, None].expand(-1, -1, 8))[:, 0], pixels), rtol=0, atol=1e-5)


def _heads_inputs(cfg: HeadsConfig, n=3, grid=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = cfg.hidden_size
    sizes = (4 * grid, 2 * grid, grid)
    feats = [torch.randn(n, c, s, s, generator=g) for s in sizes]
    pos = [torch.randn(n, c, s, s, generator=g) for s in sizes]
    text = torch.randn(n, 16, c, generator=g)
    mask = torch.zeros(n, 16, dtype=torch.bool)
    mask[:, :4] = True
    mask[1, :11] = True
    return feats, pos, text, mask


def _small_heads(width: int, layers: int, queries: int) -> HeadsConfig:
    return HeadsConfig(hidden_size=width, encoder_layers=layers, decoder_layers=layers, num_queries=queries,
                       encoder_heads=4, decoder_heads=4, mask_heads=4, geometry_heads=4, encoder_ffn_size=2 * width,
                       decoder_ffn_size=2 * width, geometry_ffn_size=2 * width)


def test_fused_heads_give_the_same_top_k_as_the_plain_heads():
    cfg = _small_heads(64, 2, 20)
    torch.manual_seed(0)
    heads = Sam3Heads(cfg).eval()
    args = _heads_inputs(cfg)
    with torch.no_grad():
        plain = heads.forward_topk(*args, k=7)
        with fused_ops():
            assert fused_ops_enabled()
            fused = heads.forward_topk(*args, k=7)
    assert not fused_ops_enabled()
    assert torch.equal(plain.indices, fused.indices)
    for name in ("scores", "boxes", "presence"):
        torch.testing.assert_close(getattr(fused, name), getattr(plain, name), rtol=0, atol=1e-5)
    torch.testing.assert_close(fused.mask_logits, plain.mask_logits, rtol=0, atol=1e-4)


def test_custom_ops_are_one_node_each_under_torch_export_with_a_dynamic_batch():
    cfg = _small_heads(32, 1, 8)
    torch.manual_seed(0)
    heads = Sam3Heads(cfg).eval()

    class TopK(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.heads = heads

        def forward(self, f0, f1, f2, p0, p1, p2, text, mask):
            return tuple(self.heads.forward_topk([f0, f1, f2], [p0, p1, p2], text, mask, k=3))

    feats, pos, text, mask = _heads_inputs(cfg, n=2, grid=4)
    n = torch.export.Dim("n", min=1, max=64)
    dyn = ({0: n},) * 6 + ({0: n}, {0: n})
    with torch.no_grad(), fused_ops():
        ep = torch.export.export(TopK(), (*feats, *pos, text, mask), dynamic_shapes=dyn)
    targets = [str(node.target) for node in ep.graph.nodes if node.op == "call_function"]
    assert targets.count("sam3edge.prompt_attention.default") == 3  # fusion, decoder text, mask decoder
    assert targets.count("sam3edge.box_attention.default") == 1
    assert targets.count("sam3edge.mask_topk.default") == 1
    assert targets.count("aten.softmax.int") == 2  # the two self-attentions stay plain
    # the exported program runs at another batch size and matches eager
    feats, pos, text, mask = _heads_inputs(cfg, n=5, grid=4, seed=3)
    with torch.no_grad():
        got = ep.module()(*feats, *pos, text, mask)
        want = heads.forward_topk(feats, pos, text, mask, k=3)
    torch.testing.assert_close(got[0], want.scores, rtol=0, atol=1e-5)
    assert torch.equal(got[4], want.indices)


# --- bad input: the same clear error from the eager op and from its fake kernel ------------------------------------

def _bad_cases():
    q, k, v, b = _prompt_inputs()
    dec = _box_module()
    bq, bk, bv, boxes = _box_inputs(dec)
    mx, my = _mlp(dec.box_rpb_embed_x), _mlp(dec.box_rpb_embed_y)
    mx = tuple(t.detach() for t in mx)
    my = tuple(t.detach() for t in my)
    s, e, p = torch.rand(2, 10), torch.randn(2, 10, 16), torch.randn(2, 16, 4, 4)
    w, wb = torch.randn(16, 16), torch.zeros(16)
    pa = lambda *a: OPS_NS.prompt_attention(*a)
    ba = lambda *a: OPS_NS.box_attention(*a)
    mt = lambda *a: OPS_NS.mask_topk(*a)
    return {
        "prompt int dtype": (pa, (q.long(), k, v, b, 4, 0.1), "float32 or float16"),
        "prompt float64": (pa, (q.double(), k.double(), v.double(), b.double(), 4, 0.1), "float32 or float16"),
        "prompt mixed dtypes": (pa, (q, k.half(), v, b, 4, 0.1), "k must be torch.float32"),
        "prompt non-contiguous": (pa, (q.transpose(0, 1), k, v, b, 4, 0.1), "not contiguous"),
        "prompt empty sequence": (pa, (q, k[:, :0], v[:, :0], b[:, :0], 4, 0.1), "empty prompt sequence"),
        "prompt heads": (pa, (q, k, v, b, 5, 0.1), "num_heads=5"),
        "prompt bias shape": (pa, (q, k, v, b[:, :3].contiguous(), 4, 0.1), "key_bias"),
        "box grid mismatch": (ba, (bq, bk, bv, boxes, 6, 7, *mx, *my, 4, 0.1), "k has shape"),
        "box too many boxes": (ba, (bq[:, :3].contiguous(), bk, bv, boxes, 5, 7, *mx, *my, 4, 0.1), "boxes"),
        "box mlp shape": (ba, (bq, bk, bv, boxes, 5, 7, mx[0][:, :1].contiguous(), *mx[1:], *my, 4, 0.1), "x_w1"),
        "box non-contiguous boxes": (ba, (bq, bk, bv, boxes.transpose(0, 1), 5, 7, *mx, *my, 4, 0.1), "boxes"),
        "topk k > Q": (mt, (s, e, p, w, wb, 11, 4, 4, 0), "k=11"),
        "topk negative k": (mt, (s, e, p, w, wb, -1, 4, 4, 0), "k=-1"),
        "topk mode": (mt, (s, e, p, w, wb, 3, 4, 4, 7), "mode=7"),
        "topk int scores": (mt, (s.long(), e, p, w, wb, 3, 4, 4, 0), "float32 or float16"),
        "topk pixels channels": (mt, (s, e, p[:, :8].contiguous(), w, wb, 3, 4, 4, 0), "pixels"),
        "topk output size": (mt, (s, e, p, w, wb, 3, 0, 4, 0), "output size"),
    }


@pytest.mark.parametrize("case", list(_bad_cases()))
def test_bad_input_raises_a_clear_error_eagerly_and_under_fake_tensors(case):
    from torch._subclasses.fake_tensor import FakeTensorMode

    fn, args, message = _bad_cases()[case]
    with pytest.raises(ValueError, match=message):
        fn(*args)
    mode = FakeTensorMode()
    fake = tuple(mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args)
    with mode, pytest.raises(ValueError, match=message):
        fn(*fake)
