"""The CUDA kernels against the PyTorch reference (``pytest -m gpu`` on an NVIDIA GPU with nvcc): forward in fp32
and fp16, odd sizes, k = 0 and k = Q, and bad input raising before any launch. Speed: benchmarks/fused_ops.py."""

from __future__ import annotations

import pytest
import torch

from sam3edge.ops import (
    library,  # noqa: F401
    reference,
)

pytestmark = pytest.mark.gpu
TOL = {torch.float32: 2e-5, torch.float16: 2e-2}


@pytest.fixture(scope="module", autouse=True)
def cuda():
    if not torch.cuda.is_available():
        pytest.fail("the gpu marker needs a CUDA GPU visible to torch")
    from sam3edge.ops.build import load_extension

    load_extension()  # build once, up front (a minute or two)


def _ref(fn, *args):
    """The reference in float32 on the CPU, from the same (possibly fp16) inputs."""
    cast = [a.float().cpu() if isinstance(a, torch.Tensor) and a.is_floating_point() else
            a.cpu() if isinstance(a, torch.Tensor) else a for a in args]
    return fn(*cast)


def _padding(n, lk, dtype, device, all_padded_row=True):
    mask = torch.rand(n, lk, device=device) > 0.3
    mask[:, 0] = True
    if all_padded_row and n > 1:
        mask[-1] = False
    return ((~mask).to(dtype) * torch.finfo(dtype).min).contiguous()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("n,lq,lk,c,heads", [(1, 1024, 32, 256, 8), (3, 37, 1, 96, 3), (2, 51, 64, 256, 8),
                                            (2, 17, 70, 40, 5), (1, 5, 9, 512, 4)])
def test_prompt_attention_matches_the_reference(dtype, n, lq, lk, c, heads):
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(n, length, c, device="cuda", dtype=dtype, generator=g) for length in (lq, lk, lk))
    bias = _padding(n, lk, dtype, "cuda")
    scale = (c // heads) ** -0.5
    got = torch.ops.sam3edge.prompt_attention(q, k, v, bias, heads, scale)
    want = _ref(reference.prompt_attention, q, k, v, bias, heads, scale)
    assert got.dtype == dtype and got.shape == (n, lq, c)
    torch.testing.assert_close(got.float().cpu(), want, rtol=TOL[dtype], atol=TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("n,qb,lead,h,w,c,heads,hidden", [(1, 50, 1, 32, 32, 256, 8, 256), (2, 7, 1, 13, 17, 64, 4, 33),
                                                         (3, 0, 4, 5, 3, 32, 1, 8), (1, 200, 1, 72, 72, 256, 8, 256)])
def test_box_attention_matches_the_reference(dtype, n, qb, lead, h, w, c, heads, hidden):
    g = torch.Generator(device="cuda").manual_seed(1)
    r = lambda *s: torch.randn(*s, device="cuda", dtype=dtype, generator=g)
    q, k, v = r(n, qb + lead, c), r(n, h * w, c), r(n, h * w, c)
    boxes = (torch.rand(n, qb, 4, device="cuda", generator=g) * 0.6 + 0.1).to(dtype)
    mlps = [r(hidden, 2), r(hidden), r(heads, hidden) / hidden ** 0.5, r(heads)] * 2
    scale = (c // heads) ** -0.5
    got = torch.ops.sam3edge.box_attention(q, k, v, boxes, h, w, *mlps, heads, scale)
    want = _ref(reference.box_attention, q, k, v, boxes, h, w, *mlps, heads, scale)
    torch.testing.assert_close(got.float().cpu(), want, rtol=TOL[dtype], atol=TOL[dtype] * 5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("k", [0, 1, 20, 50])
@pytest.mark.parametrize("out_hw", [(128, 128), (251, 199)])
def test_mask_topk_matches_the_reference(dtype, k, out_hw):
    n, q, c, h, w = 2, 50, 256, 128, 128
    g = torch.Generator(device="cuda").manual_seed(2)
    scores = torch.rand(n, q, device="cuda", generator=g).to(dtype)
    embed = torch.randn(n, q, c, device="cuda", generator=g).to(dtype)
    pixels = torch.randn(n, c, h, w, device="cuda", generator=g).to(dtype)
    weight = (torch.randn(c, c, device="cuda", generator=g) / c ** 0.5).to(dtype)
    bias = torch.randn(c, device="cuda", generator=g).to(dtype)
    for mode in (0, 1, 2):
        top, idx, masks = torch.ops.sam3edge.mask_topk(scores, embed, pixels, weight, bias, k, *out_hw, mode)
        w_top, w_idx, w_masks = _ref(reference.mask_topk, scores, embed, pixels, weight, bias, k, *out_hw, mode)
        assert masks.shape == (n, k, *out_hw) and idx.dtype == torch.int64
        assert masks.dtype == (torch.uint8 if mode == 2 else dtype)
        torch.testing.assert_close(top.float().cpu(), w_top, rtol=0, atol=0)
        # fp16 scores tie more often; the kernel puts the lower index first, torch.topk in no stated order
        assert (idx.cpu() == w_idx).float().mean() >= (1.0 if dtype == torch.float32 else 0.9)
        if k == 0:
            continue
        same = idx.cpu() == w_idx
        got, want = masks.cpu()[same], w_masks[same]
        if mode == 2:
            assert (got != want).float().mean() < (1e-4 if dtype == torch.float32 else 5e-3)
        else:
            tol = TOL[dtype] * (50 if mode == 0 else 5)  # logits: sums of 256 products
            torch.testing.assert_close(got.float(), want.float(), rtol=TOL[dtype], atol=tol)


def test_bad_cuda_input_raises_before_any_launch():
    q = torch.randn(2, 8, 64, device="cuda")
    k = torch.randn(2, 4, 64, device="cuda")
    bias = torch.zeros(2, 4, device="cuda")
    with pytest.raises(ValueError, match="not contiguous"):
        torch.ops.sam3edge.prompt_attention(q.transpose(0, 1).contiguous().transpose(0, 1), k, k, bias, 4, 0.1)
    with pytest.raises(ValueError, match="different devices"):
        torch.ops.sam3edge.prompt_attention(q, k.cpu(), k, bias, 4, 0.1)
    with pytest.raises(ValueError, match="empty prompt sequence"):
        torch.ops.sam3edge.prompt_attention(q, k[:, :0], k[:, :0], bias[:, :0], 4, 0.1)
    with pytest.raises(ValueError, match="k=9"):
        torch.ops.sam3edge.mask_topk(torch.rand(2, 8, device="cuda"), torch.randn(2, 8, 16, device="cuda"),
                                     torch.randn(2, 16, 4, 4, device="cuda"), torch.eye(16, device="cuda"),
                                     torch.zeros(16, device="cuda"), 9, 4, 4, 0)
    torch.cuda.synchronize()  # no launch failed asynchronously


def test_fused_decoder_on_the_gpu_matches_the_plain_decoder():
    from sam3edge.export.graphs import DecoderGraph
    from sam3edge.models.registry import create_student
    from sam3edge.ops import fused_ops

    torch.manual_seed(0)
    student = create_student("edge-s", text_mode="cache").eval().cuda()
    decoder = DecoderGraph(student).eval().cuda()
    size = student.image_size
    with torch.no_grad():
        levels = student.image_encoder(torch.rand(1, 3, size, size, device="cuda")).levels
        text = torch.randn(4, 32, 256, device="cuda")
        mask = torch.zeros(4, 32, dtype=torch.bool, device="cuda")
        mask[:, :6] = True
        plain = decoder(*levels, text, mask)
        with fused_ops():
            fused = decoder(*levels, text, mask)
    same = plain[4] == fused[4]
    assert same.float().mean() >= 0.9
    torch.testing.assert_close(fused[0], plain[0], rtol=0, atol=1e-4)
    torch.testing.assert_close(fused[3][same], plain[3][same], rtol=0, atol=1e-3)
