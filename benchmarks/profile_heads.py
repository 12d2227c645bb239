"""Where a student's heads spend their time: the measurement the fused ops (``sam3edge.ops``) were chosen from.

    python benchmarks/profile_heads.py --student edge-s --threads 2     # ~1 min on 2 cores
    python benchmarks/profile_heads.py --student edge-s --device cuda   # on a GPU

Runs the export decoder graph (the heads as a bundle runs them: one phrase, top-K masks) of a
registry student with random weights (time does not depend on the values) under
``torch.profiler``, with every region of interest labelled, and reports each region's share of the
decoder's time, plus the aten ops that dominate. Regions:

* ``fusion.cross_attn``: image tokens -> prompt tokens (key padding) in the fusion encoder;
* ``decoder.box_rpb``: building the BoxRPB bias [N, heads, 1+Q, H*W] (log deltas + two MLPs);
* ``decoder.vision_cross_attn``: the decoder's attention to the image, with that bias added;
* ``mask.masks``: the top-K mask path (mask-embedding MLP, the 1x1 instance projection of every
  pixel embedding, the query x pixel product), with ``mask.instance_projection`` the part of it
  spent in the projection.

Writes ``benchmarks/results/profile_heads_<student>_<device>.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile, record_function

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sam3edge.atomic import atomic_write_text  # noqa: E402
from sam3edge.export.graphs import DecoderGraph  # noqa: E402
from sam3edge.models.registry import create_student  # noqa: E402
from sam3edge.runtime.concepts import ConceptCache  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
REGIONS = ("fusion.cross_attn", "decoder.box_rpb", "decoder.vision_cross_attn", "mask.masks",
           "mask.instance_projection")


def _label_module(module: torch.nn.Module, name: str) -> None:
    """Open a profiler range named ``name`` around every call of ``module``."""
    ranges = []
    module.register_forward_pre_hook(lambda *_: ranges.append(record_function(name).__enter__()))
    module.register_forward_hook(lambda *_: ranges.pop().__exit__(None, None, None))


def _label_method(obj, attr: str, name: str) -> None:
    fn = getattr(obj, attr)

    def wrapped(*args, **kwargs):
        with record_function(name):
            return fn(*args, **kwargs)
    setattr(obj, attr, wrapped)


def _labelled_decoder(student, top_k: int) -> DecoderGraph:
    graph = DecoderGraph(student, top_k=top_k).eval()
    heads = graph.heads
    for layer in heads.detr_encoder.layers:
        _label_module(layer.cross_attn, "fusion.cross_attn")
    for layer in heads.detr_decoder.layers:
        _label_module(layer.vision_cross_attn, "decoder.vision_cross_attn")
    _label_method(heads.detr_decoder, "box_bias", "decoder.box_rpb")
    _label_module(heads.mask_decoder.instance_projection, "mask.instance_projection")
    masks = heads.mask_decoder.masks

    def product(queries, pixels):
        with record_function("mask.masks"):
            return masks(queries, pixels)
    heads.mask_decoder.masks = product
    return graph


def profile_student(name: str, device: str, runs: int, prompt_tokens: int) -> dict:
    student = create_student(name, concepts=None, text_mode="cache").eval().to(device)
    width = student.spec.heads.in_width
    rng = np.random.default_rng(0)
    mask = np.zeros((1, 32), bool)
    mask[0, :prompt_tokens] = True
    cache = ConceptCache(["ripe apple"], rng.standard_normal((1, 32, width)).astype(np.float32), mask)
    text = torch.from_numpy(cache.features).to(device)
    tmask = torch.from_numpy(cache.mask).to(device)
    size = student.image_size
    top_k = student.spec.export.top_k
    graph = _labelled_decoder(student, top_k).to(device)
    with torch.inference_mode():
        levels = student.image_encoder(torch.rand(1, 3, size, size, device=device)).levels
        for _ in range(3):  # warm-up (allocator, oneDNN / cuBLAS plans)
            graph(*levels, text, tmask)
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
        with profile(activities=activities) as prof:
            for _ in range(runs):
                with record_function("decoder.total"):
                    graph(*levels, text, tmask)
            if device == "cuda":
                torch.cuda.synchronize()
    key = "device_time_total" if device == "cuda" else "cpu_time_total"
    events = prof.key_averages()
    by_name = {e.key: e for e in events}
    total_us = getattr(by_name["decoder.total"], key) / runs
    regions = {}
    for r in REGIONS:
        us = getattr(by_name[r], key) / runs if r in by_name else 0.0
        regions[r] = {"ms": round(us / 1000, 3), "share": round(us / total_us, 4)}
    ops = defaultdict(float)
    self_key = "self_device_time_total" if device == "cuda" else "self_cpu_time_total"
    for e in events:
        if e.key.startswith("aten::"):
            ops[e.key] += getattr(e, self_key) / runs
    top_ops = sorted(ops.items(), key=lambda kv: -kv[1])[:10]
    heads = student.spec.heads
    grid = size // 16
    return {
        "student": name, "device": device, "device_name": (torch.cuda.get_device_name() if device == "cuda"
                                                             else platform.processor() or platform.machine()),
        "threads": torch.get_num_threads(), "runs": runs, "input_size": size, "grid": [grid, grid],
        "hidden": heads.hidden_size, "heads": heads.decoder_heads, "queries": heads.num_queries, "top_k": top_k,
        "prompt_tokens": 32, "valid_prompt_tokens": prompt_tokens,
        "box_bias_mb": round(4 * heads.decoder_heads * (1 + heads.num_queries) * grid * grid / 2**20, 2),
        "decoder_ms": round(total_us / 1000, 3), "regions": regions,
        "top_aten_ops_ms": [[k, round(v / 1000, 3)] for k, v in top_ops],
        "torch": torch.__version__,
    }


def to_markdown(r: dict) -> str:
    lines = [f"# Heads profile: {r['student']} on {r['device']} ({r['device_name']}, {r['threads']} threads)", "",
             f"Decoder graph (one phrase, {r['prompt_tokens']} prompt tokens, top-{r['top_k']} masks), "
             f"{r['input_size']} px, grid {r['grid'][0]}x{r['grid'][1]}, C={r['hidden']}, {r['heads']} heads, "
             f"Q={r['queries']}: **{r['decoder_ms']} ms** (mean of {r['runs']} runs, torch {r['torch']}). "
             f"The BoxRPB bias tensor of one decoder layer is {r['box_bias_mb']} MB (fp32).", "",
             "| region | ms | share of decoder |", "|---|---:|---:|"]
    for k, v in r["regions"].items():
        lines.append(f"| {k} | {v['ms']} | {100 * v['share']:.1f} % |")
    lines += ["", "| aten op (self time) | ms |", "|---|---:|"]
    lines += [f"| {k} | {v} |" for k, v in r["top_aten_ops_ms"]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--student", default="edge-s")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--prompt-tokens", type=int, default=4, help="valid (unpadded) tokens of the phrase")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    r = profile_student(args.student, args.device, args.runs, args.prompt_tokens)
    stem = args.out / f"profile_heads_{args.student}_{args.device}"
    atomic_write_text(stem.with_suffix(".json"), json.dumps(r, indent=2) + "\n")
    atomic_write_text(stem.with_suffix(".md"), to_markdown(r))
    print(to_markdown(r))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
