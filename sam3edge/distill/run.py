"""``sam3edge distill``: teacher cache -> stage 1 (encoders) -> stage 2 (end to end) -> student + report.

A run directory holds everything, so ``--resume`` (or simply running again) continues where a
killed run stopped::

    RUN/distill.json      the run's settings (a resumed run must use the same ones)
    RUN/cache/            the teacher cache (sam3edge.distill.cache)
    RUN/stage1/ stage2/   trainer logs (log.csv), checkpoints, train_config.json
    RUN/student/          the final student (save_student layout: config.json + weights + concepts)
    RUN/report.json       held-out evaluation: student vs teacher agreement, vs ground truth if any
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch

from sam3edge.atomic import atomic_write_text
from sam3edge.distill.config import DistillConfig


def _load_domain(images: str) -> tuple[list[Path], dict, object]:
    """Image paths, ground truth (resolved path -> phrase -> masks) and dataset (or None) of a folder or COCO JSON."""
    from sam3edge.data.coco import ConceptDataset, list_images

    src = Path(images)
    if src.suffix.lower() == ".json":
        ds = ConceptDataset.load(src)
        files = [ds.image_path(f).resolve() for f in ds.files]
        gt: dict = {}
        for f, pairs in ds.by_file.items():
            key = str(ds.image_path(f).resolve())
            for p in pairs:
                gt.setdefault(key, {})[p.phrase] = p.masks()
        return files, gt, ds
    return [p.resolve() for p in list_images(src)], {}, None


def _split(n: int, holdout: float, seed: int) -> tuple[list[int], list[int]]:
    import numpy as np

    perm = np.random.default_rng([seed, 7]).permutation(n).tolist()
    k = int(round(n * holdout)) if n > 1 else 0
    k = min(max(k, 1 if holdout > 0 and n > 1 else 0), n - 1)
    return sorted(perm[k:]), sorted(perm[:k])


def distill(cfg: DistillConfig, resume: bool = True, progress: bool = True, device: str = "cpu") -> dict:
    """Run (or resume) a distillation; returns the report (also written to ``RUN/report.json``)."""
    from sam3edge.distill.cache import TeacherCache, build_cache, dist_rank_world, read_json
    from sam3edge.distill.cache_batches import CacheBatches
    from sam3edge.distill.distributed import init_from_env
    from sam3edge.distill.feature_loss import (
        FeatureCriterion,
        ImageEncoderStage,
        regressed_levels,
    )
    from sam3edge.distill.losses import SetCriterion
    from sam3edge.distill.trainer import TrainConfig, Trainer
    from sam3edge.models.registry import create_student
    from sam3edge.models.student_io import init_heads_from_teacher, rank_teacher_queries, save_student
    from sam3edge.models.teacher import Sam3Teacher
    from sam3edge.runtime.concepts import ConceptCache, check_phrases
    from sam3edge.runtime.exemplars import VISUAL

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    init_from_env(device)  # under torchrun: one process group for caching and training
    if not cfg.concepts:
        raise ValueError("no concepts given: pass --concepts 'ripe apple,leaf' or a file with one phrase per line")
    check_phrases(cfg.concepts)
    if cfg.init_queries not in ("first", "used"):
        raise ValueError(f"init_queries must be 'first' or 'used', got {cfg.init_queries!r}")
    bad = [s for s in cfg.stages if s not in (1, 2)]
    if bad or not cfg.stages:
        raise ValueError(f"--stages must be a subset of 1,2, got {cfg.stages}")
    out = Path(cfg.out)
    meta = out / "distill.json"
    settings = asdict(cfg)
    if meta.is_file():
        old = read_json(meta, "delete it (or the run directory) to start over")
        diff = [k for k in settings if k not in ("threads",) and old.get(k) != settings[k]]
        if diff and resume:
            raise ValueError(f"{out} holds a distillation run with other settings ({', '.join(diff)} differ); "
                             "use another --out, or run with the same settings to resume")
    rank, world = dist_rank_world()
    out.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        atomic_write_text(meta, json.dumps(settings, indent=1))

    files, gt, dataset = _load_domain(cfg.images)
    teacher = Sam3Teacher.from_pretrained(cfg.teacher, device=device)
    torch.manual_seed(cfg.seed)  # the student's initial weights follow from the run's seed
    student = create_student(cfg.student, **cfg.student_overrides)
    _check_widths(teacher, student, cfg)
    backbone = None
    if cfg.backbone_weights:  # before stage 1 (a resumed run then loads its checkpoint over it)
        from sam3edge.models.pretrained import load_pretrained_backbone

        backbone = load_pretrained_backbone(student, cfg.backbone_weights)
    train_idx, held_idx = _split(len(files), cfg.holdout, cfg.seed)
    init = None
    # Before the cache (an incompatible student is refused before any teacher work) and before stage 1 (a
    # stage-1-only student carries the teacher's heads, its checkpoints too).
    if cfg.init_heads:
        queries = "first"
        if cfg.init_queries == "used":
            sample = [files[i] for i in train_idx[:32]]
            queries = rank_teacher_queries(teacher, sample, cfg.concepts)[: student.spec.heads.num_queries]
        init = init_heads_from_teacher(student, teacher, layers=cfg.init_layers, queries=queries)
    size = student.image_size
    grid = [size // 4, size // 8, size // 16]
    cache = build_cache(teacher, files, cfg.concepts, out / "cache", batch_size=cfg.cache_batch,
                        feature_sizes=grid, mask_size=size // 4, teacher_name=cfg.teacher, progress=progress,
                        exemplars=cfg.exemplars > 0)
    if world > 1:
        torch.distributed.barrier()
    cache = TeacherCache(out / "cache")
    text, text_mask = cache.text()
    phrases = list(cache.spec.phrases)
    if cfg.exemplars > 0 and VISUAL not in phrases:  # boxes alone ask "visual": the student's cache holds it too
        visual, visual_mask = cache.visual_text()
        text, text_mask, phrases = torch.cat([text, visual]), torch.cat([text_mask, visual_mask]), phrases + [VISUAL]
    if student.text_mode != "encoder":  # cache and both: the heads train on the teacher's features
        student.set_concepts(ConceptCache(phrases, text.float().numpy(), text_mask.numpy(), source=cfg.teacher))
    report: dict = {"teacher": cfg.teacher, "student": cfg.student, "images": len(cache),
                    "train_images": len(train_idx), "heldout_images": len(held_idx),
                    "cache_bytes_per_image": cache.bytes_per_image(),
                    # the heads were trained on the teacher's token grid; on another grid teacher-initialised heads
                    # lose accuracy even with perfect features (benchmarks/grid_oracle.py: 14 vs 16 -> 81 %)
                    "grid": {"teacher_tokens": _token_grid(teacher), "student": size // 16}}

    report["backbone_weights"] = backbone or {"source": "random"}
    if init is not None:
        report["init_heads"] = {k: (len(v) if k in ("loaded", "kept", "ignored", "reshaped") else v)
                                for k, v in init.items()}
        # which parts of the heads start from the teacher and which are trained from their initialisation
        parts = lambda names: sorted({".".join(n.split(".")[:2]) for n in names})  # noqa: E731
        report["init_heads"]["parts_from_teacher"] = parts(init["loaded"])
        report["init_heads"]["parts_not_from_teacher"] = sorted(set(parts(init["kept"])) - set(parts(init["loaded"])))

    if 1 in cfg.stages:
        s1 = TrainConfig(steps=cfg.stage1, lr=cfg.stage1_lr, warmup=max(1, min(100, cfg.stage1 // 10)), log_every=10,
                         ckpt_every=max(10, cfg.stage1 // 5), seed=cfg.seed, amp=cfg.amp)
        batches = CacheBatches(cache, student.tokenizer if student.text_mode == "encoder" else None, size, size // 4,
                               seed=cfg.seed, images_per_batch=cfg.batch, with_features=True, feature_sizes=grid,
                               indices=train_idx)
        stage = ImageEncoderStage(student)
        trainer = Trainer(stage, FeatureCriterion(), batches, s1, out / "stage1", device=device, progress=progress)
        trainer.fit(resume=resume)
        report["stage1_final"] = _last_row(out / "stage1" / "log.csv")
        report["stage1_levels"] = regressed_levels(student)  # FPN levels regressed onto the teacher's
        if student.has_text_encoder:  # on a broad phrase corpus around the run's concepts, not only on them
            from sam3edge.distill.text_corpus import distill_text_encoder

            report["text"] = distill_text_encoder(
                student, teacher, list(cache.spec.phrases), out, steps=cfg.text_encoder_steps,
                lr=cfg.stage1_lr, corpus_size=cfg.text_corpus, seed=cfg.seed, amp=cfg.amp, device=device,
                resume=resume, progress=progress)
            report["text_final"] = _last_row(out / "stage1_text" / "log.csv")

    if 2 in cfg.stages:
        s2 = TrainConfig(steps=cfg.steps, lr=cfg.lr, warmup=max(1, min(200, cfg.steps // 10)), log_every=10,
                         ckpt_every=max(10, cfg.steps // 10), seed=cfg.seed, amp=cfg.amp,
                         lr_mult={"student.heads.": cfg.heads_lr_mult} if cfg.heads_lr_mult != 1.0 else {})
        tokenizer = student.tokenizer if student.text_mode == "encoder" else _NoTokens()  # both: heads on the cache
        batches = CacheBatches(cache, tokenizer, size, size // 4, seed=cfg.seed, images_per_batch=cfg.batch,
                               pairs_per_image=cfg.pairs, target_min_score=cfg.target_min_score,
                               ground_truth=gt, gt_rate=cfg.gt_rate, indices=train_idx, exemplar_rate=cfg.exemplars)
        trainer = Trainer(StudentPairStage(student), SetCriterion(), batches, s2, out / "stage2", device=device,
                          progress=progress)
        trainer.fit(resume=resume)
        report["stage2_final"] = _last_row(out / "stage2" / "log.csv")

    if rank == 0:
        save_student(student.eval(), out / "student")
        report["eval"] = (evaluate_run(student, teacher, cache, held_idx, dataset, progress=progress) if held_idx
                          else {"note": "no held-out images (holdout 0): nothing to evaluate on"})
        atomic_write_text(out / "report.json", json.dumps(report, indent=1))
    return report


def _check_widths(teacher, student, cfg: DistillConfig) -> None:
    """Fail before any work if the student cannot learn from this teacher's features or text embeddings."""
    width = student.spec.heads.in_width
    fpn = teacher.config.vision_config.fpn_hidden_size
    text = teacher.config.detr_decoder_config.hidden_size
    if 1 in cfg.stages and fpn != width:
        raise ValueError(f"stage 1 regresses the student's features onto the teacher's, but teacher {cfg.teacher} has "
                         f"{fpn}-wide FPN features and student {cfg.student!r} a {width}-wide neck; pick a student "
                         f"built for this teacher (`sam3edge students`) or run --stages 2")
    if student.text_mode != "encoder" and text != width:
        raise ValueError(f"student {cfg.student!r} looks phrases up in the teacher's text embeddings, which are {text} "
                         f"wide for teacher {cfg.teacher}, but its heads are {width} wide; pick a student built for "
                         "this teacher (`sam3edge students`)")


def _token_grid(teacher) -> int:
    vc = teacher.config.vision_config
    return teacher.image_size // getattr(getattr(vc, "backbone_config", vc), "patch_size", 14)


class _NoTokens:
    """Cache-mode students look phrases up: the batches need no token ids."""

    def encode(self, phrases):
        import numpy as np

        return np.zeros((len(phrases), 1), dtype=np.int64), np.ones((len(phrases), 1), dtype=np.int64)


class StudentPairStage(torch.nn.Module):
    """Trainer model for stage 2: a PairBatch -> the student's HeadOutputs (every decoder layer)."""

    def __init__(self, student):
        super().__init__()
        self.student = student

    def forward(self, batch):
        return self.student.forward_pairs(batch)


def _last_row(log: Path) -> dict:
    import csv

    if not log.is_file():
        return {}
    with log.open(newline="") as f:
        rows = list(csv.DictReader(f))
    return {k: float(v) for k, v in rows[-1].items()} if rows else {}


@torch.no_grad()
def evaluate_run(student, teacher, cache, indices: list[int], dataset=None, progress: bool = True) -> dict:
    """Student vs teacher on held-out cache images (the teacher's kept instances as ground truth), and vs
    the dataset's ground truth where the domain came with annotations."""
    from sam3edge.eval.agreement import agreement_report, gt_report

    files = [cache.spec.images[i] for i in indices]
    result = {"vs_teacher": agreement_report(student, teacher, files, cache.spec.phrases, progress=progress)}
    if dataset is not None:
        phrases = cache.spec.phrases
        result["vs_ground_truth"] = {"student": gt_report(student, dataset, files, phrases),
                                     "teacher": gt_report(teacher, dataset, files, phrases)}
    return result
