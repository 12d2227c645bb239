"""The per-concept decoder graph alone: fused ONNX decoder of a registry student (random weights; time does not
depend on the values) on onnxruntime and OpenVINO, fp32, at 1 and 16 concepts, with variants as spec overrides.

    python benchmarks/decoder_graph.py      # ~3 min: edge-s-fast as registered (128-wide decoder) and 256 wide

Writes ``benchmarks/results/decoder_graph_<KERNELS>.{json,md}``: median ms of ``--runs`` calls after 2 warm-ups,
``--threads`` threads, and the image encoder graph's ms for scale.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sam3edge.atomic import atomic_write_text  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
VARIANTS = {"edge-s-fast (registry: 128-wide decoder)": {},
            "edge-s-fast at width 256 (8 heads, FFN 1024)": {"hidden_size": 256, "input_dim": 0, "geometry_heads": 8,
                                                              "encoder_heads": 8, "decoder_heads": 8, "mask_heads": 8,
                                                              "decoder_ffn_size": 1024}}


def _median_ms(fn, runs: int) -> float:
    for _ in range(2):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return round(1000 * float(np.median(times)), 1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--student", default="edge-s-fast")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=9)
    args = ap.parse_args(argv)

    import onnxruntime as ort
    import torch

    from sam3edge.export.onnx import export_fp32
    from sam3edge.models.registry import create_student
    from sam3edge.ops.onnx import inline, rewrite_file
    from sam3edge.runtime.backends.openvino_backend import shared_core
    from sam3edge.runtime.cpu import cpu_info

    torch.set_num_threads(args.threads)
    cpu = cpu_info()
    rows = []
    for name, overrides in VARIANTS.items():
        torch.manual_seed(0)
        student = create_student(args.student, **overrides).eval()
        c, rng = student.spec.heads.in_width, np.random.default_rng(0)
        text = rng.normal(0, 1, (16, 32, c)).astype(np.float32)
        mask = np.zeros((16, 32), bool)
        mask[:, :4] = True
        image = rng.integers(0, 256, (student.image_size, student.image_size, 3), dtype=np.uint8)
        with tempfile.TemporaryDirectory() as tmp:
            paths = export_fp32(student, Path(tmp), [image], text, mask, fused=True)
            so = ort.SessionOptions()
            so.intra_op_num_threads = args.threads
            enc, dec = (ort.InferenceSession(str(paths[k]), so, providers=["CPUExecutionProvider"])
                        for k in ("image_encoder", "decoder"))
            feats = enc.run(None, {"image": image[None]})
            rewrite_file(paths["decoder"], inline)  # OpenVINO reads no model-local functions
            ov_dec = shared_core().compile_model(str(paths["decoder"]), "CPU", {
                "INFERENCE_NUM_THREADS": args.threads, "PERFORMANCE_HINT": "LATENCY",
                "INFERENCE_PRECISION_HINT": "f32"}).create_infer_request()
            row = {"variant": name, "overrides": overrides,
                   "image_encoder_ms": _median_ms(lambda e=enc, i=image: e.run(None, {"image": i[None]}),
                                                      args.runs)}
            for p in (1, 16):
                feeds = {"feat0": feats[0], "feat1": feats[1], "feat2": feats[2], "text": text[:p],
                         "text_mask": mask[:p]}
                row[f"onnxruntime_ms@{p}"] = _median_ms(lambda f=feeds, d=dec: d.run(None, f), args.runs)
                row[f"openvino_ms@{p}"] = _median_ms(lambda f=feeds, d=ov_dec: d.infer(f), args.runs)
        rows.append(row)
        print(json.dumps(row), flush=True)
    result = {"command": "python benchmarks/decoder_graph.py " + " ".join(argv or sys.argv[1:]),
              "student": args.student, "threads": args.threads, "runs": args.runs, "cpu": cpu.to_json(), "rows": rows}
    stem = REPO / "benchmarks" / "results" / f"decoder_graph_{cpu.int8_kernels}"
    atomic_write_text(stem.with_suffix(".json"), json.dumps(result, indent=1))
    md = [f"Decoder graph alone (fused ONNX, fp32, random weights), {args.threads} threads, {cpu.describe()}; median "
          f"of {args.runs} calls; `{result['command']}`.", "",
          "| variant | image encoder ms | ORT @1 | ORT @16 | OpenVINO @1 | OpenVINO @16 |", "|---|---|---|---|---|---|"]
    md += [f"| {r['variant']} | {r['image_encoder_ms']} | {r['onnxruntime_ms@1']} | {r['onnxruntime_ms@16']} | "
           f"{r['openvino_ms@1']} | {r['openvino_ms@16']} |" for r in rows]
    atomic_write_text(stem.with_suffix(".md"), "\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
