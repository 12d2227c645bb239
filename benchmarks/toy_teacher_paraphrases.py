"""Teach the toy teacher's text encoder that a phrase's paraphrases mean the phrase, as SAM3's does.

    python benchmarks/toy_teacher_paraphrases.py --run-dir runs/toy_teacher_para --steps 1500 [--publish]

Why. The toy teacher learned its orchard phrases from scratch, each as a code of its own: its projected text
feature of "basket" (a distractor, always absent) has a pooled cosine of -0.25 to -0.45 with "a basket",
"baskets" or "the basket", where a pretrained text encoder like SAM3's puts them together. A student's text
encoder distilled on a corpus that holds "a basket" but not "basket" (``benchmarks/text_encoder.py``, issue 16)
then has to guess a code no context predicts: its cgF1 with such never-seen phrases went from 88 % to 99 % of the
cache's by the luck of its initialisation.

What. Only the teacher's text encoder and text projection train (the image side, the fusion, the decoder and the
exemplar encoder are untouched). Two losses on the projected token features (the tokens the decoder reads):

* *paraphrases*: for every orchard phrase P (concepts and distractors), its paraphrases that keep its meaning
  (an article, the plural: ``sam3edge.data.phrase_corpus.paraphrases`` without the size / colour forms) take
  P's features, token for token aligned from the end (EOT with EOT, the noun with the noun); the tokens in front
  (the article) keep the features they had (the text encoder is causal: they never see the noun);
* *pins*: the orchard phrases themselves, their synonyms, "visual" and a sample of the broad corpus (phrases
  without an orchard word) keep the features they had, so what the teacher answers to them does not move.

Writes ``RUN_DIR/model`` (fp16, the teacher's layout) and ``benchmarks/results/<--out>.{json,md}``: per orchard
phrase, the pooled cosine of the phrase with its paraphrases before and after, and how far the pinned phrases
moved. ``--publish`` copies the weights over the bundled teacher's (then re-run its figures:
``toy_teacher_exemplars.py --eval-only``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPO = Path(__file__).resolve().parents[1]
ADJECTIVES = ("small", "large", "dark", "bright")  # paraphrases() forms that narrow the meaning: not trained


def orchard_phrases() -> tuple[list[str], list[str]]:
    """(the orchard phrases: concepts then distractors, the other phrases the teacher knows: synonyms, "visual")."""
    from sam3edge.data.orchard import ORCHARD_VOCABULARY
    from sam3edge.runtime.exemplars import VISUAL

    phrases = [c.phrase for c in ORCHARD_VOCABULARY.concepts] + list(ORCHARD_VOCABULARY.distractors)
    others = [s for c in ORCHARD_VOCABULARY.concepts for s in c.synonyms] + [VISUAL]
    return phrases, [p for p in dict.fromkeys(others) if p not in phrases]


def paraphrase_pairs(phrases: list[str], pinned: set[str]) -> list[tuple[str, str]]:
    """(paraphrase, phrase) for every meaning-keeping paraphrase of each phrase that is not itself pinned."""
    from sam3edge.data.phrase_corpus import paraphrases

    return [(q, p) for p in phrases for q in paraphrases(p)
            if q.split()[0] not in ADJECTIVES and q not in pinned]


def aligned_targets(f_q, m_q, f_p, m_p):
    """Targets of paraphrases: their own features, with the last min(len) tokens replaced by the phrase's (aligned
    from the end). f_* [N, L, D], m_* [N, L] bool, row i of q paraphrasing row i of p."""
    target = f_q.clone()
    for i in range(len(f_q)):
        lq, lp = int(m_q[i].sum()), int(m_p[i].sum())
        k = min(lq, lp) - 1  # everything but SOT (identical in both: causal)
        target[i, lq - k:lq] = f_p[i, lp - k:lp]
    return target


def pooled_cosine(feats, mask) -> np.ndarray:
    import torch

    m = mask.float()[..., None]
    pooled = torch.nn.functional.normalize((feats.float() * m).sum(1) / m.sum(1), dim=-1)
    return pooled.numpy()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--init", type=Path, default=None, help="teacher directory (default: the bundled orchard-toy)")
    ap.add_argument("--run-dir", type=Path, default=REPO / "runs" / "toy_teacher_para")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--pins", type=int, default=2000, help="broad-corpus phrases kept where they are")
    ap.add_argument("--batch", type=int, default=128, help="pinned corpus phrases per step")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--publish", action="store_true", help="copy the weights over the bundled teacher's")
    ap.add_argument("--out", default="toy_teacher_paraphrases")
    args = ap.parse_args(argv)
    if args.steps < 1 or args.lr <= 0 or args.batch < 1 or args.pins < 0:
        ap.error("--steps and --batch must be >= 1, --lr > 0, --pins >= 0")

    import torch
    from toy_teacher_exemplars import publish
    from tqdm import tqdm

    from sam3edge.atomic import atomic_write_text
    from sam3edge.data.phrase_corpus import _plural, build_corpus
    from sam3edge.models.bundled import resolve_model
    from sam3edge.models.sam3_load import load_sam3_model, load_tokenizer, save_sam3

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    source = Path(args.init or resolve_model("orchard-toy"))
    model = load_sam3_model(source, dtype=torch.float32)
    tokenizer = load_tokenizer(source)

    def encode(phrases):
        ids, mask = tokenizer.encode(list(phrases))
        ids, mask = torch.from_numpy(ids), torch.from_numpy(mask)
        return model.get_text_features(input_ids=ids, attention_mask=mask).pooler_output, mask.bool()

    phrases, others = orchard_phrases()
    words = {w for p in phrases + others for w in p.split()}
    words |= {_plural(w) for w in words}  # "lemons" is a paraphrase to train, not a corpus phrase to pin
    rng = np.random.default_rng(0)
    corpus = [c for c in build_corpus([], size=max(100, 3 * args.pins)) if not words & set(c.split())]
    corpus = [corpus[i] for i in sorted(rng.permutation(len(corpus))[:args.pins])]
    anchors = phrases + others
    pairs = paraphrase_pairs(phrases, set(anchors) | set(corpus))
    para, of = [q for q, _ in pairs], [p for _, p in pairs]
    with torch.no_grad():
        f0_anchor, m_anchor = encode(anchors)
        f0_corpus, m_corpus = encode(corpus) if corpus else (None, None)
        f_q, m_q = encode(para)
        f_p, m_p = encode(of)
        target_q = aligned_targets(f_q, m_q, f_p, m_p)
        before = _figures(encode, phrases, pairs)
    scale = float((f0_anchor.float() ** 2)[m_anchor].mean())  # features' mean square: losses are relative to it

    params = [p for n, p in model.named_parameters() if n.startswith(("text_encoder.", "text_projection."))]
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    model.text_encoder.train()
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    start = time.time()
    log = []
    for step in tqdm(range(args.steps), desc="paraphrases", unit="step"):
        lr = args.lr * min(1.0, (step + 1) / 100) * 0.5 * (1 + np.cos(np.pi * step / args.steps))
        for g in opt.param_groups:
            g["lr"] = lr
        f, _ = encode(para)
        loss_para = ((f - target_q) ** 2)[m_q].mean() / scale
        f, _ = encode(anchors)
        loss_pin = ((f - f0_anchor) ** 2)[m_anchor].mean() / scale
        if corpus:
            pick = torch.from_numpy(rng.choice(len(corpus), size=min(args.batch, len(corpus)), replace=False))
            f, _ = encode([corpus[i] for i in pick.tolist()])
            loss_pin = loss_pin + ((f - f0_corpus[pick]) ** 2)[m_corpus[pick]].mean() / scale
        loss = loss_para + 10.0 * loss_pin  # the phrases the heads know must not move
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == args.steps - 1:
            log.append({"step": step, "paraphrases": round(loss_para.item(), 5), "pins": round(loss_pin.item(), 6)})
    train_s = time.time() - start
    model.eval()
    with torch.no_grad():
        after = _figures(encode, phrases, pairs)
        f1, _ = encode(anchors)
        drift = torch.nn.functional.cosine_similarity(f1, f0_anchor, dim=-1)[m_anchor]
        rel = ((f1 - f0_anchor).norm(dim=-1) / f0_anchor.norm(dim=-1).clamp(min=1e-6))[m_anchor]
    out_dir = args.run_dir / "model"
    save_sam3(model, out_dir, dtype=torch.float16)
    if args.publish:
        publish(out_dir)

    command = "python benchmarks/toy_teacher_paraphrases.py " + " ".join(argv if argv is not None else sys.argv[1:])
    result = {"command": command, "init": str(source), "steps": args.steps, "lr": args.lr, "pins": len(corpus),
              "paraphrase_pairs": len(pairs), "train_s": round(train_s, 1), "log": log,
              "pinned_token_cosine_min": float(drift.min()), "pinned_relative_change_max": float(rel.max()),
              "before": before, "after": after}
    stem = REPO / "benchmarks" / "results" / args.out
    atomic_write_text(stem.with_suffix(".json"), json.dumps(result, indent=1))
    lines = [f"Toy teacher's text encoder taught that paraphrases mean the phrase: `{command}` ({len(pairs)} "
             f"(paraphrase, phrase) pairs, {len(corpus)} pinned corpus phrases, {train_s:.0f} s).", "",
             f"The phrases the teacher knows (orchard phrases, synonyms, \"visual\") moved by at most "
             f"{rel.max():.3f} of a token feature's norm (token cosine >= {drift.min():.4f}).", "",
             "| phrase | paraphrases | pooled cosine with the phrase, before | after |", "|---|---|---|---|"]
    for p in phrases:
        b, a = before[p], after[p]
        lines.append(f"| {p} | {', '.join(b['paraphrases'])} | {b['mean']:.2f} (min {b['min']:.2f}) | "
                     f"{a['mean']:.2f} (min {a['min']:.2f}) |")
    atomic_write_text(stem.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def _figures(encode, phrases, pairs) -> dict:
    """Per phrase: pooled cosine of the phrase's projected features with each of its trained paraphrases."""
    out = {}
    for p in phrases:
        qs = [q for q, of in pairs if of == p]
        f, m = encode([p] + qs)
        pooled = pooled_cosine(f, m)
        cos = pooled[1:] @ pooled[0]
        out[p] = {"paraphrases": qs, "mean": float(cos.mean()), "min": float(cos.min())}
    return out


if __name__ == "__main__":
    raise SystemExit(main())
