"""Open vocabulary on the device: a student's text encoder distilled on a broad phrase corpus, against the
teacher's embeddings, on phrases it never saw and on held-out orchard sets.

    make demo      # or any distillation run of a cache-mode student; here the quickstart's toy-fast student
    python benchmarks/text_encoder.py --student runs/quickstart/run/student      # ~6 min on 2 cores

1. The student (its heads, image encoder and concept cache as distilled) gets a text encoder (text mode
   ``both``; the registry's TextEncoderConfig, token table copied from the teacher), distilled on a corpus of
   ``--corpus`` phrases (``sam3edge.distill.text_corpus``) from which every phrase of the orchard sets below is
   removed; 5 % of the corpus is held out by a hash of each phrase.
2. Held-out phrases and the orchard sets' phrases: token cosine of the student encoder's features with the
   teacher's (mean, 5th percentile, worst).
3. cgF1 on orchard held-out sets (seeds ``--seeds``, never trained on) of the same student with the teacher's
   cached embeddings and with its own encoder's (phrases it never saw), per set; and the toy teacher's.
4. Latency: the text encoder graph (ONNX Runtime, ``--threads``) per phrase, batch 1, median; for this student's
   encoder and, with random weights, for ``edge-s``'s (the size a SAM3-distilled edge student carries).

Writes ``benchmarks/results/text_encoder_<KERNELS>.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sam3edge.atomic import atomic_write_text  # noqa: E402
from sam3edge.distill.config import TEXT_STEPS_MIN  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _with_encoder(student_dir: Path, teacher):
    """The saved student as text mode "both": same weights and cache, plus a text encoder (table from the teacher)."""
    from sam3edge.models.student import Sam3Student
    from sam3edge.models.student_io import load_student
    from sam3edge.models.text_encoder import teacher_token_table

    saved = load_student(student_dir)
    student = Sam3Student(saved.spec.with_overrides(text_mode="both"))
    missing, unexpected = student.load_state_dict(saved.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("text_encoder.") for k in missing), (missing, unexpected)
    student.set_concepts(saved.concepts)
    table = student.text_encoder.init_token_embedding(teacher_token_table(teacher))
    return student.eval(), table


def _encoder_ms(student, threads: int, work: Path, phrases: list[str], runs: int = 50) -> float:
    """Median ms per phrase of the student's text encoder graph as export writes it, ONNX Runtime, batch 1."""
    import onnxruntime as ort

    from sam3edge.export.onnx import export_text_encoder, text_encoder_inputs

    work.mkdir(parents=True, exist_ok=True)
    path = export_text_encoder(student, work / "text_encoder.onnx")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    times = []
    for i in range(runs + 5):
        one_ids, one_attn = text_encoder_inputs([phrases[i % len(phrases)]])
        start = time.perf_counter()
        sess.run(None, {"input_ids": one_ids, "attention_mask": one_attn})
        times.append(1000 * (time.perf_counter() - start))
    return float(np.median(times[5:]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--student", type=Path, default=REPO / "runs" / "quickstart" / "run" / "student")
    ap.add_argument("--teacher", default="orchard-toy")
    ap.add_argument("--steps", type=int, default=TEXT_STEPS_MIN, help="default: distill's (TEXT_STEPS_MIN)")
    ap.add_argument("--corpus", type=int, default=12000)
    ap.add_argument("--seeds", type=int, nargs="+", default=[4242, 9001])
    ap.add_argument("--n", type=int, default=100, help="scenes per held-out set")
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "text_encoder")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--paraphrases", action="store_true",
                    help="build the corpus around the orchard sets' phrases (their paraphrases train: 'a ripe apple', "
                         "'ripe apples'), the phrases themselves still kept out")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    import torch

    from sam3edge.data.coco import ConceptDataset
    from sam3edge.data.orchard_dataset import write_orchard_dataset
    from sam3edge.distill.text_corpus import distill_text_encoder
    from sam3edge.eval import evaluate
    from sam3edge.eval.agreement import summary
    from sam3edge.eval.predict import predict_dataset
    from sam3edge.models.bundled import resolve_model
    from sam3edge.models.registry import create_student
    from sam3edge.models.teacher import Sam3Teacher
    from sam3edge.runtime.cpu import cpu_info

    torch.set_num_threads(args.threads)
    cpu = cpu_info()
    teacher = Sam3Teacher.from_pretrained(resolve_model(args.teacher)).eval()
    student, table = _with_encoder(args.student, teacher)
    datasets = []
    for seed in args.seeds:
        ann = REPO / "runs" / "heldout_seeds" / str(seed) / "annotations.json"
        if not ann.is_file():
            write_orchard_dataset(ann.parent, n=args.n, seed=seed, size=224, progress=False)
        datasets.append((seed, ann, ConceptDataset.load(ann)))
    # the orchard sets' phrases (the run's concepts among them) never train the encoder: the cgF1 below is on
    # phrases it never saw, and the corpus is built without the domain's phrases and paraphrases
    eval_phrases = sorted({p.phrase for _, _, ds in datasets for pairs in ds.by_file.values() for p in pairs})
    start = time.time()
    text = distill_text_encoder(student, teacher, eval_phrases if args.paraphrases else [], args.work,
                                steps=args.steps, lr=1e-3,
                                corpus_size=args.corpus, progress=True, exclude=eval_phrases)
    text["train_s"] = round(time.time() - start, 1)
    text["token_table"] = table
    print(json.dumps(text), flush=True)

    sets = []
    cache = student.concepts
    for seed, ann, ds in datasets:
        row = {"seed": seed}
        with torch.no_grad():
            student.set_concepts(cache)  # every orchard phrase is in the cache: the teacher's embeddings
            row["cache"] = summary(evaluate(ann, predict_dataset(student, ds, progress=False)))["cgf1"]
            student.concepts = None  # no cache: every phrase through the student's encoder
            row["encoder"] = summary(evaluate(ann, predict_dataset(student, ds, progress=False)))["cgf1"]
            row["teacher"] = summary(evaluate(ann, predict_dataset(teacher, ds, progress=False)))["cgf1"]
        student.set_concepts(cache)
        row["ratio"] = row["encoder"] / row["cache"] if row["cache"] else None
        sets.append(row)
        print(json.dumps(row), flush=True)

    held = json.loads((args.work / "text_corpus" / "split.json").read_text())["heldout"]
    latency = {"this student": _encoder_ms(student, args.threads, args.work / "onnx_own", held)}
    edge = create_student("edge-s", text_mode="both").eval()
    latency["edge-s (random weights)"] = _encoder_ms(edge, args.threads, args.work / "onnx_edge", held)
    sizes = {"this student": student.spec.text_encoder, "edge-s (random weights)": edge.spec.text_encoder}
    result = {"command": "python benchmarks/text_encoder.py " + " ".join(argv or sys.argv[1:]),
              "student": str(args.student), "student_name": student.spec.name, "teacher": args.teacher,
              "threads": args.threads, "cpu": cpu.to_json(), "text": text, "sets": sets,
              "latency_ms_per_phrase": latency,
              "encoders": {k: {"width": v.width, "layers": v.layers, "heads": v.heads} for k, v in sizes.items()}}
    stem = REPO / "benchmarks" / "results" / (args.out or f"text_encoder_{cpu.int8_kernels}")
    atomic_write_text(stem.with_suffix(".json"), json.dumps(result, indent=1))
    h = text["text_heldout"]
    md = [f"Text encoder of `{student.spec.name}` ({args.student}) distilled from `{args.teacher}`'s on "
          f"{text['train']} corpus phrases ({args.steps} steps, {text['train_s']:.0f} s); {cpu.describe()}, "
          f"{args.threads} threads.", "",
          f"Held-out phrases ({text['heldout']}, never trained on, e.g. {', '.join(h['examples'][:5])}): token "
          f"cosine with the teacher's features {h['cosine_mean']:.3f} mean, {h['cosine_p5']:.3f} at the 5th "
          f"percentile, {h['cosine_min']:.3f} worst (trained phrases: {text['text_train']['cosine_mean']:.3f}).", "",
          f"The orchard sets' {len(eval_phrases)} phrases ({', '.join(eval_phrases[:6])}, ...) were kept out of the "
          + ("corpus, their paraphrases were in it" if args.paraphrases else
             "corpus (and no domain paraphrase was added)")
          + f": token cosine {text['text_excluded']['cosine_mean']:.3f} mean, "
          f"{text['text_excluded']['cosine_min']:.3f} worst; the cgF1 with the student's encoder below is on "
          "phrases it never saw.", "",
          "| orchard set (seed) | cgF1, teacher's embeddings (cache) | cgF1, student's encoder | ratio | toy teacher |",
          "|---|---|---|---|---|"]
    md += [f"| {r['seed']} | {r['cache']:.3f} | {r['encoder']:.3f} | "
           + (f"{r['ratio']:.1%}" if r["ratio"] is not None else "-") + f" | {r['teacher']:.3f} |" for r in sets]
    md += ["", "Text encoder graph, ONNX Runtime, one phrase per call (median ms):", ""]
    md += [f"- {k} (width {sizes[k].width}, {sizes[k].layers} layers): {v:.2f} ms" for k, v in latency.items()]
    atomic_write_text(stem.with_suffix(".md"), "\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
