"""Distil a student's text encoder on a broad phrase corpus (:mod:`sam3edge.data.phrase_corpus`), not only on
the run's concepts, and measure it on phrases it never saw.

    RUN/text_corpus/features.npz    the teacher's token features of every corpus phrase (float16, cut to the
                                    longest phrase's tokens), its mask and the phrases; reused when a killed run
                                    resumes with the same corpus
    RUN/text_corpus/split.json      which phrases train and which are held out (by a hash of the phrase)
    RUN/stage1_text/                the trainer's log and checkpoints (resumable like every stage)

The held-out figure is the mean over phrases of the token-wise cosine between the student's and the teacher's
features (the tokens the decoder reads): ``report["text_heldout"]``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from sam3edge.atomic import atomic_write, atomic_write_text

__all__ = ["corpus_features", "distill_text_encoder", "token_cosine"]


def corpus_features(teacher, phrases: list[str], path: Path, batch: int = 256,
                    progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's text features of ``phrases``: float16 [N, L, C] (L: the longest phrase's tokens) and bool
    mask [N, L]; read from ``path`` when it holds exactly these phrases, else computed and written there."""
    path = Path(path)
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            if json.loads(str(z["phrases"])) == list(phrases):
                return torch.from_numpy(z["features"]), torch.from_numpy(z["mask"])
    from tqdm import tqdm

    feats, masks = [], []
    with torch.no_grad():
        for s in tqdm(range(0, len(phrases), batch), desc="teacher text (corpus)", unit="batch", disable=not progress):
            f, m = teacher.encode_text(list(phrases[s:s + batch]))
            feats.append(f.float().cpu())
            masks.append(m.cpu())
    length = max(int(m.sum(1).max()) for m in masks)
    features = torch.cat([f[:, :length] for f in feats]).half()
    mask = torch.cat([m[:, :length] for m in masks])
    atomic_write(path, lambda f: np.savez(f, features=features.numpy(), mask=mask.numpy(),
                                          phrases=np.array(json.dumps(list(phrases)))))
    return features, mask


def token_cosine(text_encoder, tokenizer, phrases: list[str], features: torch.Tensor, mask: torch.Tensor,
                 batch: int = 256) -> np.ndarray:
    """Per phrase: the mean cosine over its tokens between ``text_encoder``'s features and ``features``."""
    out = []
    was_training = text_encoder.training
    text_encoder.eval()
    device = next(text_encoder.parameters()).device
    with torch.no_grad():
        for s in range(0, len(phrases), batch):
            ids, attn = tokenizer.encode(list(phrases[s:s + batch]))
            got, _ = text_encoder(torch.from_numpy(ids).to(device), torch.from_numpy(attn).to(device))
            got = got.cpu()
            t = features[s:s + batch].float()
            m = mask[s:s + batch].float()
            cos = torch.nn.functional.cosine_similarity(got[:, :t.shape[1]].float(), t, dim=-1)
            out.append(((cos * m).sum(1) / m.sum(1).clamp(min=1)).numpy())
    text_encoder.train(was_training)
    return np.concatenate(out) if out else np.zeros(0)


def distill_text_encoder(student, teacher, concepts: list[str], out: Path, steps: int, lr: float,
                         corpus_size: int = 12000, heldout: float = 0.05, seed: int = 0, amp: bool = False,
                         device: str = "cpu", resume: bool = True, progress: bool = True,
                         exclude: list[str] = ()) -> dict:
    """Train ``student.text_encoder`` on the teacher's features of a broad corpus built around ``concepts`` (the
    run's phrases always train); returns {"corpus", "train", "heldout", "text_heldout": cosine figures}.
    ``exclude``: phrases kept out of training whatever the corpus holds (an evaluation's phrases), scored apart
    as "text_excluded"."""
    from sam3edge.data.phrase_corpus import build_corpus, split_heldout
    from sam3edge.distill.feature_loss import TextBatches, TextCriterion, TextEncoderStage
    from sam3edge.distill.trainer import TrainConfig, Trainer

    out = Path(out)
    corpus = build_corpus(concepts, size=corpus_size, seed=seed)
    train, held = split_heldout(corpus, heldout, keep=[" ".join(c.lower().split()) for c in concepts])
    excluded = list(dict.fromkeys(" ".join(p.lower().split()) for p in exclude))
    train = [p for p in train if p not in set(excluded)]
    held = [p for p in held if p not in set(excluded)]
    atomic_write_text(out / "text_corpus" / "split.json",
                      json.dumps({"train": train, "heldout": held, "excluded": excluded}))
    feats, mask = corpus_features(teacher, train + held + excluded, out / "text_corpus" / "features.npz",
                                  progress=progress)
    n = len(train)
    cfg = TrainConfig(steps=steps, lr=lr, warmup=max(1, min(100, steps // 10)), log_every=10,
                      ckpt_every=max(10, steps // 5), seed=seed, amp=amp)
    batches = TextBatches(train, feats[:n].float(), mask[:n], student.tokenizer, batch=64, seed=seed)
    was_training = student.training  # the trainer switches the whole student to train mode (BatchNorm!)
    Trainer(TextEncoderStage(student), TextCriterion(), batches, cfg, out / "stage1_text", device=device,
            progress=progress).fit(resume=resume)
    student.train(was_training)
    h = n + len(held)
    cos = token_cosine(student.text_encoder, student.tokenizer, held, feats[n:h], mask[n:h])
    seen = token_cosine(student.text_encoder, student.tokenizer, train[:len(held)], feats[:len(held)],
                        mask[:len(held)])
    report = {"corpus": len(corpus), "train": n, "heldout": len(held),
              "text_heldout": _figures(cos, held), "text_train": {"cosine_mean": float(seen.mean())}}
    if excluded:
        report["text_excluded"] = _figures(token_cosine(student.text_encoder, student.tokenizer, excluded, feats[h:],
                                                        mask[h:]), excluded)
    return report


def _figures(cos: np.ndarray, phrases: list[str]) -> dict:
    return {"phrases": len(phrases), "cosine_mean": float(cos.mean()), "cosine_p5": float(np.percentile(cos, 5)),
            "cosine_min": float(cos.min()), "examples": phrases[:8]}
