"""Which layers of a distilled student can be int8: per-layer sensitivity, the measurement the float islands of
``sam3edge.export.onnx.float_islands`` rest on, re-run on any student (here: the fast heads).

    python benchmarks/distill_toy.py --fresh --student toy-fast --stages 1,2 --stage1-steps 900 --steps 400 \\
        --lr 4e-4 --threads 1 --work runs/tf_nosa --name toy-fast     # first: a distilled toy-fast student
    python benchmarks/int8_sensitivity.py --run runs/tf_nosa/run --label toy-fast   # ~10 min

The student's fp32 graphs are exported as the ONNX target writes them (fused ops: their nodes stay float in
every int8 graph). Every Conv / MatMul / Gemm node is put in a group by its module path (a backbone stage, the
neck, one attention or FFN of a decoder layer, a head). Then, one group at a time, only that group is int8 (MinMax
calibration on the run's own images, per-channel weights, as the export) and everything else float, and the
bundle's agreement with the PyTorch student is measured on held-out orchard scenes: recall of PyTorch's kept
instances x their mask IoU, and the score error. The cost of a group is its agreement loss against the fp32
graphs'. Alongside: fp32, the shipped int8 (float islands kept float) and int8 everywhere. The table says for
each group whether the float-island rules keep it float, so a group the rules quantize but that costs much, or
one they keep float that costs nothing, stands out.

Writes ``benchmarks/results/int8_sensitivity_<label>_<KERNELS>.{json,md}``.
"""

from __future__ import annotations

import argparse
import ast
import json
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sam3edge.atomic import atomic_write_text  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
QUANTIZABLE = ("Conv", "MatMul", "Gemm")


def group_of(scope: str) -> str:
    """A node's module path -> its group: up to a numbered layer / stage / block and the part after it
    (``heads.detr_decoder.layers.1.self_attn``, ``image_encoder.backbone.stages.2``), else two levels."""
    parts = scope.split(".")
    for i, p in enumerate(parts):
        if p.isdigit() and i > 0 and parts[i - 1] in ("layers", "stages", "blocks", "refine", "lateral", "out"):
            return ".".join(parts[:i + 2] if parts[i - 1] == "layers" else parts[:i + 1])
    return ".".join(parts[:3])


def node_groups(path: Path) -> dict[str, list[str]]:
    """group -> names of its Conv / MatMul / Gemm nodes in the ONNX graph at ``path``."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    groups: dict[str, list[str]] = {}
    for n in model.graph.node:
        if n.op_type not in QUANTIZABLE:
            continue
        scopes = [p.value for p in n.metadata_props if p.key == "pkg.torch.onnx.name_scopes"]
        names = [s for s in ast.literal_eval(scopes[0]) if s] if scopes else []
        scope = names[-2] if len(names) > 1 else n.name  # full module paths, deepest last, then the op's own name
        groups.setdefault(group_of(scope), []).append(n.name)
    return groups


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, required=True, help="a distillation run (or a saved student with a cache)")
    ap.add_argument("--label", required=True, help="result name part, e.g. toy-fast")
    ap.add_argument("--heldout", type=int, default=12, help="held-out scenes the agreement is measured on")
    ap.add_argument("--heldout-seed", type=int, default=777)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    import torch
    from tqdm import tqdm

    from sam3edge.data.images import load_image, resize_batch
    from sam3edge.data.orchard import render_scene, scene_rng
    from sam3edge.export.bundle import domain_images, resolve_student_dir
    from sam3edge.export.onnx import calibration_feeds, export_fp32, float_islands, to_int8
    from sam3edge.export.verify import compare, onnx_runner, torch_runner
    from sam3edge.models.student_io import load_student
    from sam3edge.runtime.cpu import cpu_info
    from sam3edge.runtime.names import DECODER_GRAPH, IMAGE_GRAPH

    torch.set_num_threads(args.threads)
    cpu = cpu_info()
    student = load_student(resolve_student_dir(args.run)).eval()
    if student.concepts is None:
        raise SystemExit(f"{args.run}: the student has no concept cache (text mode {student.text_mode!r})")
    text, mask = student.concepts.features.astype(np.float32), student.concepts.mask.astype(bool)
    calib, _ = resize_batch([load_image(p) for p in domain_images(args.run, None)], student.image_size)
    held, _ = resize_batch([render_scene(scene_rng(args.heldout_seed, i), 224).image for i in range(args.heldout)],
                           student.image_size)
    held = list(held)
    work = REPO / "runs" / f"int8_sensitivity_{args.label}"
    shutil.rmtree(work, ignore_errors=True)
    fp32 = export_fp32(student, work / "fp32", list(calib), text, mask, fused=True)
    feeds = calibration_feeds(fp32, list(calib), text, mask, phrases=list(student.concepts.phrases))
    ref = torch_runner(student)

    def measure(paths: dict) -> dict:
        r = compare(ref, onnx_runner(paths, threads=args.threads), held, text, mask)
        return {"recall": r["recall"], "mask_iou": r["mask_iou"], "agreement": r["recall"] * r["mask_iou"],
                "score_mae": r["score_mae"], "reference_instances": r["reference_instances"]}

    def quantized(tag: str, graph: str | None, **kw) -> dict:
        out = dict(fp32)
        (work / tag).mkdir(parents=True, exist_ok=True)
        for name in ([graph] if graph else [IMAGE_GRAPH, DECODER_GRAPH]):
            out[name] = to_int8(fp32[name], work / tag / fp32[name].name, feeds[name], **kw)
        return out

    base = {"fp32": measure(fp32), "int8 (float islands, shipped)": measure(quantized("islands", None)),
            "int8 everywhere": measure(quantized("all", None, islands=False))}
    for k, v in base.items():
        print(json.dumps({"config": k} | v), flush=True)
    islands = {g: set(float_islands(p)) for g, p in fp32.items()}
    rows = []
    todo = [(g, name, nodes) for g in (IMAGE_GRAPH, DECODER_GRAPH) for name, nodes in node_groups(fp32[g]).items()]
    for graph, name, nodes in tqdm(todo, desc="one group int8 at a time", unit="group"):
        tag = f"g{len(rows):03d}"
        m = measure(quantized(tag, graph, only=nodes))
        shutil.rmtree(work / tag, ignore_errors=True)
        kept = sum(n in islands[graph] for n in nodes)
        rows.append({"graph": graph, "group": name, "nodes": len(nodes), "float_island_nodes": kept,
                     "cost": base["fp32"]["agreement"] - m["agreement"],
                     "score_mae_added": m["score_mae"] - base["fp32"]["score_mae"]} | m)
        print(json.dumps(rows[-1]), flush=True)
    rows.sort(key=lambda r: -r["cost"])
    result = {"command": "python benchmarks/int8_sensitivity.py " + " ".join(argv or sys.argv[1:]),
              "student": student.spec.name, "run": str(args.run), "input_size": student.image_size,
              "heldout_seed": args.heldout_seed, "heldout_images": args.heldout, "concepts": int(len(text)),
              "threads": args.threads, "cpu": cpu.to_json(), "baselines": base, "groups": rows}
    stem = REPO / "benchmarks" / "results" / f"int8_sensitivity_{args.label}_{cpu.int8_kernels}"
    atomic_write_text(stem.with_suffix(".json"), json.dumps(result, indent=1))
    md = [f"Per-layer int8 sensitivity of `{student.spec.name}` ({args.run}), onnxruntime CPU, {cpu.describe()}; "
          f"agreement = recall of PyTorch's kept instances x their mask IoU on {args.heldout} held-out orchard "
          f"scenes (seed {args.heldout_seed}) x {len(text)} concepts.", "",
          "| configuration | recall | mask IoU | agreement | score MAE |", "|---|---|---|---|---|"]
    md += [f"| {k} | {v['recall']:.3f} | {v['mask_iou']:.3f} | {v['agreement']:.3f} | {v['score_mae']:.4f} |"
           for k, v in base.items()]
    md += ["", "One group int8, the rest float; cost = fp32's agreement - this one's (most costly first). "
           "'float island': how many of the group's nodes the shipped rules keep float.", "",
           "| graph | group | nodes | float island | agreement | cost | score MAE added |",
           "|---|---|---|---|---|---|---|"]
    md += [f"| {r['graph']} | `{r['group']}` | {r['nodes']} | {r['float_island_nodes']} | {r['agreement']:.3f} | "
           f"{r['cost']:+.4f} | {r['score_mae_added']:+.4f} |" for r in rows]
    atomic_write_text(stem.with_suffix(".md"), "\n".join(md) + "\n")
    print("\n".join(md))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
