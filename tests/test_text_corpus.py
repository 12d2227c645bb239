"""Open vocabulary: the broad phrase corpus, a text encoder distilled on it (held-out phrases), and a bundle that
looks known phrases up and encodes any other."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sam3edge.data.phrase_corpus import build_corpus, split_heldout, vocabulary_words

DOMAIN = ["ripe apple", "unripe apple", "leaf"]


def test_the_corpus_is_broad_deterministic_and_holds_the_domain_and_its_paraphrases():
    corpus = build_corpus(DOMAIN, size=3000, seed=1)
    assert corpus == build_corpus(DOMAIN, size=3000, seed=1) and corpus != build_corpus(DOMAIN, size=3000, seed=2)
    assert len(corpus) == 3000 == len(set(corpus))
    assert set(DOMAIN) <= set(corpus) and {"ripe apples", "a leaf", "small unripe apple"} <= set(corpus)
    lengths = [len(p.split()) for p in corpus]
    counts = {n: sum(k == n for k in lengths) for n in (1, 2, 3)}  # words, pairs, triples in equal shares
    assert min(counts.values()) > 800, counts
    words = vocabulary_words(50)
    assert words[:3] == ["the", "ing", "and"] and all(w.isalpha() for w in words)
    with pytest.raises(ValueError, match="size"):
        build_corpus(DOMAIN, size=10)


def test_the_heldout_split_is_a_property_of_each_phrase_and_never_takes_the_runs_concepts():
    corpus = build_corpus(DOMAIN, size=3000)
    train, held = split_heldout(corpus, 0.05, keep=DOMAIN)
    assert not set(train) & set(held) and len(train) + len(held) == len(corpus)
    assert 0.03 < len(held) / len(corpus) < 0.07 and not set(DOMAIN) & set(held)
    _, held_big = split_heldout(build_corpus(DOMAIN, size=6000), 0.05, keep=DOMAIN)
    assert set(held) <= set(held_big) | (set(corpus) - set(build_corpus(DOMAIN, size=6000)))
    with pytest.raises(ValueError, match="fraction"):
        split_heldout(corpus, 1.0)


@pytest.mark.slow  # about a minute: a distillation, an export and its verification
def test_a_both_mode_student_distils_its_encoder_on_the_corpus_and_its_bundle_takes_any_phrase(
        toy_width_teacher, orchard_small, scenes, tmp_path):
    """distill --text both: the heads keep the teacher's cached features; the text encoder is distilled on a broad
    corpus and scored on held-out phrases it never saw. The exported bundle lists the run's phrases (cache) and
    encodes any other with its text graph, equal to the PyTorch encoder."""
    import torch

    from sam3edge.distill.config import DistillConfig
    from sam3edge.distill.run import distill
    from sam3edge.export.bundle import export_bundle
    from sam3edge.models.student_io import load_student
    from sam3edge.runtime import Segmenter

    run = tmp_path / "run"
    cfg = DistillConfig(teacher=str(toy_width_teacher), images=str(orchard_small), concepts=DOMAIN, student="toy",
                        out=str(run), stages=[1], stage1_steps=2, text_steps=150, text_corpus=1500, batch=2,
                        holdout=0.34, student_overrides={"input_size": 128, "text_mode": "both"})
    report = distill(cfg, progress=False)
    text = report["text"]
    assert text["corpus"] == 1500 and text["heldout"] > 40 and text["train"] + text["heldout"] == 1500
    held = json.loads((run / "text_corpus" / "split.json").read_text())["heldout"]
    assert not set(held) & set(DOMAIN) and set(text["text_heldout"]["examples"]) <= set(held)
    assert text["text_heldout"]["cosine_mean"] > 0.9, text  # phrases it never saw
    student = load_student(run / "student")
    assert student.text_mode == "both" and student.has_text_encoder and list(student.concepts.phrases) == DOMAIN
    m = export_bundle(run, tmp_path / "b.sam3edge", "onnx", "fp32", calib=scenes, n_verify=2, progress=False,
                      force=True)
    assert set(m["graphs"]) == {"image_encoder", "decoder", "text_encoder", "exemplar_encoder"}
    assert m["concepts"] == DOMAIN
    seg = Segmenter.load(tmp_path / "b.sam3edge")
    seg.set_concepts(["ripe apple", "yellow pear on a branch"])
    assert seg._text_ms > 0  # the new phrase went through the text graph; the known one came from the cache
    phrases, feats, mask = seg._prompts
    with torch.no_grad():
        ref, ref_mask = student.text_encoder(*student.tokenize(["yellow pear on a branch"]))
    n = int(ref_mask[0].sum())
    assert mask[1].sum() == n and np.abs(feats[1, :n] - ref[0, :n].numpy()).max() < 1e-3
    cached, cmask = student.concepts.lookup(["ripe apple"])
    k = int(cmask[0].sum())
    assert np.abs(feats[0, :k] - cached[0, :k]).max() < 1e-5


def test_text_distillation_keeps_excluded_phrases_out_resumes_and_leaves_the_student_as_it_was(
        toy_width_teacher, tmp_path):
    """A few steps on a 300-phrase corpus: the excluded phrases (an evaluation's) neither train nor count as
    held-out, they are scored apart; the teacher's corpus features are reused by a second call; the student is back
    in eval mode (the trainer's train mode would leave its BatchNorm on batch statistics)."""
    from sam3edge.distill.text_corpus import distill_text_encoder
    from sam3edge.models.registry import create_student
    from sam3edge.models.teacher import Sam3Teacher

    teacher = Sam3Teacher.from_pretrained(toy_width_teacher)
    student = create_student("toy", input_size=128, text_mode="both").eval()
    exclude = ["ripe apple", "Bruised  Apple"]
    report = distill_text_encoder(student, teacher, DOMAIN, tmp_path, steps=20, lr=1e-3, corpus_size=300,
                                  progress=False, exclude=exclude)
    split = json.loads((tmp_path / "text_corpus" / "split.json").read_text())
    assert split["excluded"] == ["ripe apple", "bruised apple"]
    assert not set(split["excluded"]) & (set(split["train"]) | set(split["heldout"]))
    assert "unripe apple" in split["train"] and report["train"] == len(split["train"])
    assert report["text_excluded"]["phrases"] == 2 and -1 <= report["text_excluded"]["cosine_mean"] <= 1
    assert not student.training and not student.text_encoder.training
    stamp = (tmp_path / "text_corpus" / "features.npz").stat().st_mtime_ns
    again = distill_text_encoder(student, teacher, DOMAIN, tmp_path, steps=20, lr=1e-3, corpus_size=300,
                                 progress=False, exclude=exclude)
    assert (tmp_path / "text_corpus" / "features.npz").stat().st_mtime_ns == stamp  # features reused
    assert again["text_heldout"]["cosine_mean"] == pytest.approx(report["text_heldout"]["cosine_mean"], abs=1e-6)
