"""Exemplar boxes on the phrase's own errors (sam3edge.distill.interactive): SAM3's interactive exemplar training."""

from __future__ import annotations

import pytest
import torch


def test_error_boxes_finds_the_best_false_positive_and_the_missed_instances():
    from sam3edge.distill.interactive import error_boxes

    gt = torch.tensor([[0.1, 0.1, 0.3, 0.3], [0.6, 0.6, 0.9, 0.9], [0.4, 0.0, 0.5, 0.1]])
    pred = torch.tensor([[0.1, 0.1, 0.3, 0.31],   # finds gt 0
                         [0.0, 0.5, 0.2, 0.7],    # a false positive, score 0.7
                         [0.7, 0.1, 0.9, 0.3],    # a false positive, score 0.9: the best one
                         [0.6, 0.6, 0.9, 0.9],    # gt 1, but scores under 0.5: gt 1 is missed
                         [0.0, 0.9, 0.1, 1.0],    # a false positive under 0.5: not kept, not an error
                         [0.1, 0.1, 0.3, 0.7]])   # a near miss of gt 0 (IoU 0.33), score 0.99: no clear error
    scores = torch.tensor([0.95, 0.7, 0.9, 0.4, 0.3, 0.99])
    fp, missed = error_boxes(scores, pred, gt)
    assert torch.equal(fp, pred[2]) and missed == [1, 2]
    fp, missed = error_boxes(scores, pred, gt[:0])  # an absent concept: every kept prediction is wrong
    assert torch.equal(fp, pred[5]) and missed == []
    fp, missed = error_boxes(torch.zeros(6), pred, gt)  # nothing kept: everything missed, no false positive
    assert fp is None and missed == [0, 1, 2]


def test_a_lower_negative_threshold_mines_near_false_positives_and_leaves_misses_alone():
    from sam3edge.distill.interactive import InteractivePairModel, error_boxes

    gt = torch.tensor([[0.1, 0.1, 0.3, 0.3], [0.6, 0.6, 0.9, 0.9]])
    pred = torch.tensor([[0.1, 0.1, 0.3, 0.31],   # finds gt 0, score 0.9
                         [0.0, 0.5, 0.2, 0.7],    # off every target, score 0.3: a near false positive
                         [0.7, 0.0, 0.9, 0.2],    # off every target, score 0.15
                         [0.6, 0.6, 0.9, 0.9],    # gt 1 at 0.45: missed whatever the negative threshold
                         [0.1, 0.1, 0.3, 0.7]])   # a near miss of gt 0 (IoU 0.33), 0.4: never a negative
    scores = torch.tensor([0.9, 0.3, 0.15, 0.45, 0.4])
    assert error_boxes(scores, pred, gt) == (None, [1])  # nothing off-target reaches 0.5
    fp, missed = error_boxes(scores, pred, gt, negative_threshold=0.2)
    assert torch.equal(fp, pred[1]) and missed == [1]
    fp, _ = error_boxes(scores, pred, gt, negative_threshold=0.1)
    assert torch.equal(fp, pred[1])  # the highest-scoring candidate, not the first or the lowest
    fp, missed = error_boxes(scores, pred, gt[:0], negative_threshold=0.2)  # absent concept: best above 0.2
    assert torch.equal(fp, pred[0]) and missed == []
    with pytest.raises(ValueError, match="negative_threshold is a score in"):
        InteractivePairModel(torch.nn.Module(), negative_threshold=0.7)


@pytest.fixture(scope="module")
def toy():
    from sam3edge.distill.scene_batches import OrchardBatches
    from sam3edge.models.bundled import resolve_model
    from sam3edge.models.sam3_load import load_sam3_model, load_tokenizer

    source = resolve_model("orchard-toy")
    model = load_sam3_model(source, dtype=torch.float32).eval()
    size = int(model.config.vision_config.backbone_config.image_size)
    g = size // 14 * 4
    batches = OrchardBatches(load_tokenizer(source), seed=5, images_per_batch=2, pairs_per_image=4,
                             image_size=size, mask_size=(g, g), prompt_mix=(0, 1, 0))
    return model, batches


def test_error_boxes_land_on_the_text_prompts_errors_and_targets_stay(toy):
    """Each replaced pair holds one box: a negative on a kept prediction of the phrase alone that matches no true
    instance, or a positive on a true instance the phrase missed. The choice repeats (a resumed run sees it)."""
    from sam3edge.distill.boxes import pairwise_iou_giou
    from sam3edge.distill.interactive import InteractivePairModel
    from sam3edge.models.heads.layers import cxcywh_to_xyxy
    from sam3edge.models.sam3_heads import run_heads, select_images
    from sam3edge.runtime.exemplars import PADDING_LABEL

    model, batches = toy
    pm = InteractivePairModel(model, rate=1.0)
    replaced = {"negative": 0, "positive": 0}
    for step in range(3):
        batch = batches[step]
        boxes, labels = pm.exemplars_on_errors(batch)
        again = pm.exemplars_on_errors(batch)
        assert torch.equal(boxes, again[0]) and torch.equal(labels, again[1])
        with torch.no_grad():
            vis = select_images(model.get_vision_features(pixel_values=batch.pixel_values), batch.pair_image)
            text = model.get_text_features(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
            out = run_heads(model, vis, text.pooler_output, batch.attention_mask)
        scores = out.logits.sigmoid() * out.presence_logits.sigmoid()
        for i, t in enumerate(batch.targets):
            if torch.equal(boxes[i], batch.input_boxes[i]) and torch.equal(labels[i], batch.input_boxes_labels[i]):
                continue
            assert (labels[i, 1:] == PADDING_LABEL).all() and labels[i, 0] in (0, 1)
            box = cxcywh_to_xyxy(boxes[i, 0])
            kept = out.boxes[i][scores[i] >= 0.5]
            if labels[i, 0] == 0:  # on a kept prediction that overlaps no true instance
                assert pairwise_iou_giou(box[None], kept)[0].max() > 0.999
                assert not len(t.boxes) or pairwise_iou_giou(box[None], t.boxes)[0].max() < 0.1
                replaced["negative"] += 1
            else:  # on a true instance no kept prediction found
                assert pairwise_iou_giou(box[None], t.boxes)[0].max() > 0.999
                assert not len(kept) or pairwise_iou_giou(box[None], kept)[0].max() < 0.5
                replaced["positive"] += 1
    assert replaced["negative"] + replaced["positive"] >= 3, replaced
    assert sum(pm.last_counts.values()) > 0


def test_rate_zero_keeps_the_drawn_boxes_and_training_reaches_the_geometry_encoder(toy):
    from sam3edge.distill.interactive import InteractivePairModel
    from sam3edge.distill.losses import LossWeights, SetCriterion

    model, batches = toy
    batch = batches[0]
    boxes, labels = InteractivePairModel(model, rate=0.0).exemplars_on_errors(batch)
    assert torch.equal(boxes, batch.input_boxes) and torch.equal(labels, batch.input_boxes_labels)
    with pytest.raises(ValueError, match="rate is a probability"):
        InteractivePairModel(model, rate=1.5)
    pm = InteractivePairModel(model, rate=1.0)
    assert set(pm.state_dict()) == {f"model.{k}" for k in model.state_dict()}  # checkpoints stay interchangeable
    try:
        loss, _ = SetCriterion(LossWeights())(pm.train()(batch), batch.targets)
        loss.backward()
        assert torch.isfinite(loss)
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.geometry_encoder.parameters())
    finally:
        pm.eval()
        model.zero_grad(set_to_none=True)


def test_refined_pairs_keep_their_boxes_whatever_the_phrase_got_wrong(toy):
    """A refined pair's targets ("apple" minus the kind under its negative box) hold only with its own boxes: the
    phrase alone finds the rejected kind, and a box on that "error" would be fine, but a positive box on a missed
    apple instead would leave targets the prompt no longer says."""
    from sam3edge.distill.interactive import InteractivePairModel
    from sam3edge.distill.scene_batches import OrchardBatches

    model, batches = toy
    refining = OrchardBatches(batches.tokenizer, seed=5, images_per_batch=2, pairs_per_image=6,
                              image_size=batches.size, mask_size=batches.mask_size, prompt_mix=(0, 1, 0), refine=1.0)
    pm = InteractivePairModel(model, rate=1.0)
    seen = 0
    for step in range(4):
        batch = refining[step]
        if not batch.refined:
            continue
        boxes, labels = pm.exemplars_on_errors(batch)
        for i, flag in enumerate(batch.refined):
            if flag:
                seen += 1
                assert torch.equal(boxes[i], batch.input_boxes[i]) and torch.equal(labels[i],
                                                                                   batch.input_boxes_labels[i])
    assert seen >= 2, seen
