"""Each fused op against the unfused PyTorch chain it replaces, and the effect on the whole decoder.

    python benchmarks/fused_ops.py --device cuda     # on an NVIDIA GPU (CUDA kernels; builds them first)
    python benchmarks/fused_ops.py --device cpu      # here: the ops' CPU path, and the decoder's ONNX graphs
                                                     # plain vs fused in onnxruntime and OpenVINO

Sizes are edge-s's defaults (512 px: a 32 x 32 token grid and 128 x 128 mask pixels, C = 256,
8 heads, 50 queries, top-20 masks, 32 prompt tokens) with P prompts at once (``--prompts``).
Per op: median latency over ``--runs`` calls after warm-up (CUDA events on a GPU), and the peak
memory the call allocates beyond its inputs (on a GPU: ``torch.cuda.max_memory_allocated``), which
is what the unfused chain materialises (score tensors, the BoxRPB bias, projected pixels, Q x h x w
logits) and the fused op does not. Whole decoder: the export decoder graph of edge-s (random
weights) plain vs fused. Writes ``benchmarks/results/fused_ops_<device name>.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sam3edge.atomic import atomic_write_text  # noqa: E402
from sam3edge.ops import library, reference  # noqa: E402, F401

REPO = Path(__file__).resolve().parents[1]
C, HEADS, GRID, PIXELS, QUERIES, TOP_K, TOKENS = 256, 8, 32, 128, 50, 20, 32


def _timer(device: str):
    if device == "cuda":
        def measure(fn, runs):
            times = []
            for _ in range(runs):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end))
            return statistics.median(times)
    else:
        def measure(fn, runs):
            times = []
            for _ in range(runs):
                t = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t) * 1000)
            return statistics.median(times)
    return measure


def _peak_mb(fn, device: str) -> float | None:
    if device != "cuda":
        return None
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return round((torch.cuda.max_memory_allocated() - base) / 2**20, 2)


def _unfused_masks(scores, embed, pixels, weight, bias, k, out_h, out_w, mode):
    """The plain heads' mask path: top-k, gather, 1x1 projection of every pixel, product, resize, activation."""
    top, idx = scores.topk(k, dim=1)
    e = embed.gather(1, idx[..., None].expand(-1, -1, embed.shape[-1]))
    logits = torch.einsum("nkc,nchw->nkhw", e, F.conv2d(pixels, weight[:, :, None, None], bias))
    if (out_h, out_w) != tuple(pixels.shape[-2:]):
        logits = F.interpolate(logits, size=(out_h, out_w), mode="bilinear", align_corners=False)
    return top, idx, (logits.sigmoid() if mode == 1 else (logits > 0).to(torch.uint8) if mode == 2 else logits)


def op_cases(prompts: int, device: str, dtype: torch.dtype) -> dict:
    g = torch.Generator(device=device).manual_seed(0)
    r = lambda *s: torch.randn(*s, device=device, generator=g).to(dtype)
    mask = torch.zeros(prompts, TOKENS, dtype=torch.bool, device=device)
    mask[:, :6] = True
    key_bias = ((~mask).to(dtype) * torch.finfo(dtype).min).contiguous()
    scale = (C // HEADS) ** -0.5
    q_img, k_p, v_p = r(prompts, GRID * GRID, C), r(prompts, TOKENS, C), r(prompts, TOKENS, C)
    q_dec, k_img, v_img = r(prompts, 1 + QUERIES, C), r(prompts, GRID * GRID, C), r(prompts, GRID * GRID, C)
    boxes = (torch.rand(prompts, QUERIES, 4, device=device, generator=g) * 0.5 + 0.2).to(dtype)
    mlps = [r(C, 2), r(C), r(HEADS, C) / 16, r(HEADS)] * 2
    scores = torch.rand(prompts, QUERIES, device=device, generator=g).to(dtype)
    embed, pixels = r(prompts, QUERIES, C), r(prompts, C, PIXELS, PIXELS)
    weight, bias = r(C, C) / 16, r(C)
    ops = torch.ops.sam3edge
    big = 4 * PIXELS
    return {
        "prompt_attention (fusion encoder: 1024 image tokens -> 32 prompt tokens)": (
            lambda: reference.prompt_attention(q_img, k_p, v_p, key_bias, HEADS, scale),
            lambda: ops.prompt_attention(q_img, k_p, v_p, key_bias, HEADS, scale)),
        "box_attention (decoder layer: 51 queries -> 32x32 grid, BoxRPB)": (
            lambda: reference.box_attention(q_dec, k_img, v_img, boxes, GRID, GRID, *mlps, HEADS, scale),
            lambda: ops.box_attention(q_dec, k_img, v_img, boxes, GRID, GRID, *mlps, HEADS, scale)),
        "mask_topk (top-20 of 50, logits at 128x128)": (
            lambda: _unfused_masks(scores, embed, pixels, weight, bias, TOP_K, PIXELS, PIXELS, 0),
            lambda: ops.mask_topk(scores, embed, pixels, weight, bias, TOP_K, PIXELS, PIXELS, 0)),
        f"mask_topk (top-20 of 50, binary masks at {big}x{big})": (
            lambda: _unfused_masks(scores, embed, pixels, weight, bias, TOP_K, big, big, 2),
            lambda: ops.mask_topk(scores, embed, pixels, weight, bias, TOP_K, big, big, 2)),
    }


def bench_ops(prompts: int, device: str, dtype: torch.dtype, runs: int) -> list[dict]:
    measure = _timer(device)
    rows = []
    with torch.inference_mode():
        for name, (unfused, fused) in op_cases(prompts, device, dtype).items():
            for fn in (unfused, fused):
                for _ in range(3):
                    fn()
            if device == "cuda":
                torch.cuda.synchronize()
            u, f = measure(unfused, runs), measure(fused, runs)
            rows.append({"op": name, "prompts": prompts, "dtype": str(dtype).removeprefix("torch."),
                         "unfused_ms": round(u, 3), "fused_ms": round(f, 3), "speedup": round(u / f, 2),
                         "unfused_peak_mb": _peak_mb(unfused, device), "fused_peak_mb": _peak_mb(fused, device)})
    return rows


def _decoder_inputs(student, prompts: int, device: str):
    size = student.image_size
    with torch.no_grad():
        levels = student.image_encoder(torch.rand(1, 3, size, size, device=device)).levels
    text = torch.randn(prompts, TOKENS, C, device=device)
    mask = torch.zeros(prompts, TOKENS, dtype=torch.bool, device=device)
    mask[:, :6] = True
    return levels, text, mask


def bench_decoder_torch(prompts: int, device: str, runs: int) -> dict:
    from sam3edge.export.graphs import DecoderGraph
    from sam3edge.models.registry import create_student
    from sam3edge.ops import fused_ops

    torch.manual_seed(0)
    student = create_student("edge-s", text_mode="cache").eval().to(device)
    decoder = DecoderGraph(student).eval().to(device)
    levels, text, mask = _decoder_inputs(student, prompts, device)
    measure = _timer(device)

    def fused():
        with fused_ops():
            return decoder(*levels, text, mask)

    with torch.inference_mode():
        for _ in range(3):
            decoder(*levels, text, mask)
            fused()
        u, f = measure(lambda: decoder(*levels, text, mask), runs), measure(fused, runs)
    return {"graph": f"edge-s decoder, PyTorch {device}", "prompts": prompts, "plain_ms": round(u, 2),
            "fused_ms": round(f, 2), "speedup": round(u / f, 2)}


def bench_decoder_onnx(prompts: int, runs: int, threads: int) -> list[dict]:
    import onnxruntime as ort

    from sam3edge.export.onnx import export_fp32
    from sam3edge.models.registry import create_student
    from sam3edge.ops.onnx import inline
    from sam3edge.runtime.backends.openvino_backend import shared_core

    torch.manual_seed(0)
    student = create_student("edge-s", text_mode="cache").eval()
    size = student.image_size
    image = np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8)
    levels, text, mask = _decoder_inputs(student, prompts, "cpu")
    feed = {"feat0": levels[0].numpy(), "feat1": levels[1].numpy(), "feat2": levels[2].numpy(),
            "text": text.numpy(), "text_mask": mask.numpy()}
    measure = _timer("cpu")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = {kind: export_fp32(student, Path(tmp) / kind, [image], text[:2].numpy(), mask[:2].numpy(),
                                   fused=kind == "fused")["decoder"] for kind in ("plain", "fused")}
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        sessions = {k: ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"]) for k, p in paths.items()}
        for s in sessions.values():
            s.run(None, feed)
        t = {k: measure(lambda s=s: s.run(None, feed), runs) for k, s in sessions.items()}
        rows.append({"graph": f"edge-s decoder, onnxruntime CPU {threads} threads", "prompts": prompts,
                     "plain_ms": round(t["plain"], 2), "fused_ms": round(t["fused"], 2),
                     "speedup": round(t["plain"] / t["fused"], 2)})
        import onnx

        onnx.save(inline(onnx.load(str(paths["fused"]))), str(Path(tmp) / "fused_inlined.onnx"))
        core = shared_core()
        config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads}
        compiled = {"plain": core.compile_model(str(paths["plain"]), "CPU", config),
                    "fused": core.compile_model(str(Path(tmp) / "fused_inlined.onnx"), "CPU", config)}
        for c in compiled.values():
            c(feed)
        t = {k: measure(lambda c=c: c(feed), runs) for k, c in compiled.items()}
        rows.append({"graph": f"edge-s decoder, OpenVINO CPU {threads} threads (fused = inlined bodies)",
                     "prompts": prompts, "plain_ms": round(t["plain"], 2), "fused_ms": round(t["fused"], 2),
                     "speedup": round(t["plain"] / t["fused"], 2)})
    return rows


def to_markdown(r: dict) -> str:
    lines = [f"# Fused ops vs the unfused chains: {r['device_name']} ({r['device']})", "",
             f"torch {r['torch']}; edge-s sizes (C={C}, {HEADS} heads, {GRID}x{GRID} tokens, {PIXELS}x{PIXELS} "
             f"mask pixels, Q={QUERIES}, top-{TOP_K}); median of {r['runs']} runs.", "",
             "| op | prompts | dtype | unfused ms | fused ms | speedup | unfused peak MB | fused peak MB |",
             "|---|---:|---|---:|---:|---:|---:|---:|"]
    for o in r["ops"]:
        lines.append(f"| {o['op']} | {o['prompts']} | {o['dtype']} | {o['unfused_ms']} | {o['fused_ms']} | "
                     f"{o['speedup']} | {o['unfused_peak_mb'] if o['unfused_peak_mb'] is not None else '-'} | "
                     f"{o['fused_peak_mb'] if o['fused_peak_mb'] is not None else '-'} |")
    lines += ["", "| whole decoder | prompts | plain ms | fused ms | speedup |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {d['graph']} | {d['prompts']} | {d['plain_ms']} | {d['fused_ms']} | {d['speedup']} |"
              for d in r["decoder"]]
    if r["device"] == "cpu":
        lines += ["", "On a CPU the ops run their PyTorch reference: the attentions are the same math as the "
                  "unfused chain (no gain expected; the CUDA kernels are what fuses them), and mask_topk gains "
                  "from folding the 1x1 projection into the kept embeddings. GPU figures: run with --device cuda."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--prompts", default="1,8", help="prompt counts, e.g. 1,8")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    counts = [int(p) for p in args.prompts.split(",")]
    if args.device == "cuda":
        from sam3edge.ops.build import load_extension

        load_extension()
    dtypes = [torch.float32, torch.float16] if args.device == "cuda" else [torch.float32]
    from tqdm import tqdm

    ops, decoder = [], []
    for p in tqdm(counts, desc="prompt counts"):
        for dt in dtypes:
            ops += bench_ops(p, args.device, dt, args.runs)
        decoder.append(bench_decoder_torch(p, args.device, max(3, args.runs // 4)))
        if args.device == "cpu":
            decoder += bench_decoder_onnx(p, max(3, args.runs // 4), args.threads)
    name = torch.cuda.get_device_name() if args.device == "cuda" else (platform.processor() or platform.machine())
    r = {"device": args.device, "device_name": name, "torch": torch.__version__, "runs": args.runs,
         "threads": args.threads, "ops": ops, "decoder": decoder}
    slug = re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower() if args.device == "cuda" else f"cpu_{name}"
    stem = args.out / f"fused_ops_{slug}"
    atomic_write_text(stem.with_suffix(".json"), json.dumps(r, indent=2) + "\n")
    atomic_write_text(stem.with_suffix(".md"), to_markdown(r))
    print(to_markdown(r))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
