"""The set-prediction trainer: it learns, and an interrupted run resumes exactly."""

from __future__ import annotations

import csv

import pytest
import torch

from sam3edge.distill.checkpoint import latest_checkpoint, load_checkpoint
from sam3edge.distill.losses import SetCriterion
from sam3edge.distill.scene_batches import OrchardBatches
from sam3edge.distill.trainer import TrainConfig, Trainer
from sam3edge.models.sam3_heads import Sam3PairModel
from sam3edge.models.sam3_load import build_sam3, tiny_sam3_config
from sam3edge.runtime.tokenizer import ClipTokenizer


def _model(seed=0):
    return Sam3PairModel(build_sam3(tiny_sam3_config(image_size=112), seed=seed))


def _batches(seed=0):
    return OrchardBatches(ClipTokenizer.default(), seed=seed, images_per_batch=2, pairs_per_image=3,
                          image_size=112, mask_size=(32, 32))


class _Interrupt:
    """A data stream that dies at step ``at`` - as a killed process would."""

    def __init__(self, batches, at):
        self.batches, self.at = batches, at

    def __getitem__(self, step):
        if step == self.at:
            raise KeyboardInterrupt
        return self.batches[step]


def test_training_steps_lower_the_loss_on_a_fixed_batch(tmp_path):
    batch = _batches()[0]
    model = _model()
    crit = SetCriterion()
    with torch.no_grad():
        before = crit(model.eval()(batch), batch.targets)[1]["total"]
    cfg = TrainConfig(steps=25, lr=1e-3, warmup=2, log_every=5, ckpt_every=100)
    Trainer(model, crit, [batch] * 25, cfg, tmp_path, progress=False).fit()
    with torch.no_grad():
        after = crit(model.eval()(batch), batch.targets)[1]["total"]
    assert after < 0.9 * before  # measured: 0.84 after 25 steps


def test_interrupted_run_resumes_to_identical_weights_and_log(tmp_path):
    cfg = TrainConfig(steps=6, lr=5e-4, warmup=2, log_every=1, ckpt_every=3)
    straight = _model()
    Trainer(straight, SetCriterion(), _batches(), cfg, tmp_path / "a", progress=False).fit()

    run = tmp_path / "b"
    with pytest.raises(KeyboardInterrupt):
        Trainer(_model(), SetCriterion(), _Interrupt(_batches(), at=5), cfg, run, progress=False).fit()
    assert latest_checkpoint(run / "checkpoints").name == "step_0000003"
    resumed = _model(seed=123)  # different init: everything must come from the checkpoint
    Trainer(resumed, SetCriterion(), _batches(), cfg, run, progress=False).fit()

    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=name)
    with (run / "log.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5, 6]

    # TensorBoard sees the same curve: one value per step, the killed attempt's steps 4-5 purged
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tb")).Reload().Scalars("total")
    assert [e.step for e in events] == [1, 2, 3, 4, 5, 6]
    assert [e.value for e in events] == pytest.approx([float(r["total"]) for r in rows], rel=1e-6)


def test_resumed_steps_survive_an_earlier_event_file_that_sorts_last(tmp_path):
    """TensorBoard reads event files in name order (<seconds>.<host>.<pid>.<counter>); an earlier
    attempt's file stamped this second with a name sorting after ours used to purge the resumed steps."""
    import time

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = TrainConfig(steps=6, lr=5e-4, warmup=2, log_every=1, ckpt_every=3)
    run = tmp_path / "b"
    with pytest.raises(KeyboardInterrupt):
        Trainer(_model(), SetCriterion(), _Interrupt(_batches(), at=5), cfg, run, progress=False).fit()
    (killed,) = (run / "tb").glob("events.out.tfevents.*")
    # the second the resume below opens its writer in, with a host/pid/counter sorting after any real one
    killed.rename(killed.with_name(f"events.out.tfevents.{int(time.time()) + 1:010d}.~~~.99999.9"))
    Trainer(_model(), SetCriterion(), _batches(), cfg, run, progress=False).fit()
    events = EventAccumulator(str(run / "tb")).Reload().Scalars("total")
    assert [e.step for e in events] == [1, 2, 3, 4, 5, 6]


def test_corrupt_checkpoint_is_reported_not_silently_skipped(tmp_path):
    cfg = TrainConfig(steps=2, warmup=1, log_every=1, ckpt_every=2)
    Trainer(_model(), SetCriterion(), _batches(), cfg, tmp_path, progress=False).fit()
    ckpt = latest_checkpoint(tmp_path / "checkpoints")
    (ckpt / "model.safetensors").write_bytes(b"truncated")
    with pytest.raises(ValueError, match="corrupt"):
        load_checkpoint(ckpt, _model(), None)
    (tmp_path / "checkpoints" / "latest").write_text("step_0000099\n")
    with pytest.raises(FileNotFoundError, match="step_0000099"):
        latest_checkpoint(tmp_path / "checkpoints")


def test_learning_rate_warms_up_then_decays_to_the_floor():
    cfg = TrainConfig(steps=100, lr=1.0, warmup=10, min_lr_ratio=0.1)
    lrs = [cfg.lr_at(s) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[-1] == pytest.approx(0.1, abs=1e-3)


def test_periodic_evaluation_is_recorded_and_survives_resume(tmp_path):
    calls = []

    def eval_fn(model, step):
        calls.append(step)
        assert not model.training  # evaluation runs in eval mode
        return {"probe": float(step)}

    cfg = TrainConfig(steps=4, warmup=1, log_every=2, eval_every=2, ckpt_every=2)
    trainer = Trainer(_model(), SetCriterion(), _batches(), cfg, tmp_path, eval_fn=eval_fn, progress=False)
    history = trainer.fit()
    assert calls == [2, 4] and [h["step"] for h in history] == [2, 4]
    again = Trainer(_model(), SetCriterion(), _batches(), cfg, tmp_path, eval_fn=eval_fn, progress=False)
    assert again.resume() and [h["probe"] for h in again.history] == [2.0, 4.0]


def test_reference_grid_spreads_queries_and_positions_are_not_decayed(tmp_path):
    from sam3edge.distill.init import grid_reference_boxes, init_sam3_reference_grid

    boxes = grid_reference_boxes(16, 0.2).sigmoid()
    assert len({(round(x, 3), round(y, 3)) for x, y in boxes[:, :2].tolist()}) == 16
    assert boxes[:, :2].min() > 0.1 and boxes[:, :2].max() < 0.9
    torch.testing.assert_close(boxes[:, 2:], torch.full((16, 2), 0.2))
    model = _model()
    init_sam3_reference_grid(model.model)
    trainer = Trainer(model, SetCriterion(), _batches(), TrainConfig(weight_decay=0.1), tmp_path, progress=False)
    decay_of = {id(p): g["weight_decay"] for g in trainer.opt.param_groups for p in g["params"]}
    ref = model.model.detr_decoder.reference_points.weight
    assert decay_of[id(ref)] == 0.0 and decay_of[id(model.model.detr_decoder.query_embed.weight)] == 0.0
    assert decay_of[id(model.model.vision_encoder.backbone.embeddings.patch_embeddings.projection.weight)] == 0.1


def test_xavier_head_init_sharpens_attention_and_keeps_zero_layers_zero():
    from sam3edge.distill.init import xavier_init_heads

    sam = build_sam3(tiny_sam3_config(image_size=112), seed=0)
    zero = {n for n, p in sam.named_parameters() if p.ndim == 2 and p.abs().max() == 0}
    q = sam.detr_decoder.layers[0].vision_cross_attn.q_proj.weight
    std_before = float(q.std())
    assert xavier_init_heads(sam) > 10
    assert float(q.std()) > 3 * std_before  # N(0, 0.02) -> Xavier at width 32: ~0.18
    assert zero == {n for n, p in sam.named_parameters() if p.ndim == 2 and p.abs().max() == 0}
    vit = sam.vision_encoder.backbone.layers[0].attention.q_proj.weight
    assert float(vit.std()) < 0.05  # the trunk keeps transformers' init
