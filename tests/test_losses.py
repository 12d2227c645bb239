"""Hungarian matching and the SAM3 set-prediction losses."""

from __future__ import annotations

import itertools

import torch

from sam3edge.distill.boxes import paired_iou_giou, pairwise_iou_giou
from sam3edge.distill.losses import LossWeights, SetCriterion, sigmoid_focal
from sam3edge.distill.matcher import MatchCosts, hungarian_match
from sam3edge.distill.targets import PairTarget, masks_to_target
from sam3edge.models.heads.outputs import HeadOutputs


def _outputs(logits, boxes, masks, presence, layers=2):
    n, q = logits.shape
    return HeadOutputs(
        logits=logits, boxes=boxes, presence_logits=presence, mask_logits=masks,
        semantic_logits=masks.amax(1, keepdim=True),
        aux_logits=logits[None].repeat(layers, 1, 1), aux_boxes=boxes[None].repeat(layers, 1, 1, 1),
        aux_presence_logits=presence[None].repeat(layers, 1, 1),
    )


def _square(x0, y0, x1, y1, size=16):
    m = torch.zeros(1, size, size, dtype=torch.bool)
    m[0, y0:y1, x0:x1] = True
    return m


def test_giou_matches_hand_computed_values():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0]])
    iou, giou = pairwise_iou_giou(a, b)
    # intersection 1, union 7, enclosing box 9 -> giou = 1/7 - 2/9
    assert abs(iou.item() - 1 / 7) < 1e-6 and abs(giou.item() - (1 / 7 - 2 / 9)) < 1e-6
    iou2, giou2 = paired_iou_giou(a, b)
    assert torch.allclose(iou2, iou[0]) and torch.allclose(giou2, giou[0])


def test_hungarian_match_is_the_optimal_assignment_where_greedy_fails():
    # Query 0 is close to both targets; greedy would give it target 0 and leave query 1 a bad match.
    boxes = torch.tensor([[0.10, 0.10, 0.30, 0.30], [0.62, 0.62, 0.80, 0.80], [0.12, 0.12, 0.32, 0.32]])
    tgt = torch.tensor([[0.11, 0.11, 0.31, 0.31], [0.6, 0.6, 0.8, 0.8]])
    logits = torch.zeros(3)
    costs = MatchCosts(mask=0, dice=0)
    qi, ti = hungarian_match(logits, boxes, tgt, costs=costs)
    best = min(itertools.permutations(range(3), 2), key=lambda perm: sum(
        5 * (boxes[q] - tgt[t]).abs().sum() - 2 * pairwise_iou_giou(boxes[q:q + 1], tgt[t:t + 1])[1][0, 0]
        for t, q in enumerate(perm)))
    assert dict(zip(ti.tolist(), qi.tolist())) == {0: best[0], 1: best[1]}


def test_no_targets_match_nothing():
    qi, ti = hungarian_match(torch.zeros(4), torch.rand(4, 4), torch.zeros(0, 4))
    assert qi.numel() == 0 and ti.numel() == 0


def test_masks_to_target_gives_tight_normalised_boxes_and_area_fractions():
    t = masks_to_target(_square(4, 2, 12, 10), (8, 8))
    assert torch.allclose(t.boxes, torch.tensor([[4 / 16, 2 / 16, 12 / 16, 10 / 16]]))
    assert abs(t.masks.sum().item() * 4 - 64) < 1e-4  # 64 pixels, each low-res cell covers 4
    assert t.present == 1.0 and t.scores.tolist() == [1.0]


def test_perfect_prediction_costs_less_than_a_shifted_one_and_gradients_flow():
    target = masks_to_target(_square(2, 2, 8, 8), (16, 16))
    good_mask = torch.where(target.masks > 0.5, 8.0, -8.0)
    boxes = torch.cat([target.boxes, torch.tensor([[0.5, 0.5, 0.9, 0.9]])])[None]
    masks = torch.cat([good_mask, torch.full_like(good_mask, -8.0)])[None]
    logits = torch.tensor([[6.0, -6.0]])
    crit = SetCriterion(LossWeights())
    good, parts = crit(_outputs(logits, boxes, masks, torch.tensor([[6.0]])), [target])
    shifted_boxes = boxes.clone()
    shifted_boxes[0, 0] += 0.1
    bad_logits = logits.clone().requires_grad_(True)
    bad, _ = crit(_outputs(bad_logits, shifted_boxes, masks.roll(3, -1), torch.tensor([[6.0]])), [target])
    assert good < bad
    assert parts["l1"] < 1e-5 and parts["giou"] < 1e-4
    bad.backward()
    assert bad_logits.grad is not None and bad_logits.grad.abs().sum() > 0


def test_negative_pair_trains_presence_but_not_query_scores():
    empty = PairTarget(torch.zeros(0, 4), torch.zeros(0, 8, 8), torch.zeros(0), 0.0)
    logits = torch.full((1, 3), 5.0, requires_grad=True)
    presence = torch.tensor([[4.0]], requires_grad=True)
    out = _outputs(logits, torch.rand(1, 3, 4), torch.zeros(1, 3, 8, 8), presence)
    loss, parts = SetCriterion()(out, [empty])
    loss.backward()
    assert parts["score"] == 0.0 and parts["presence"] > 1.0
    assert logits.grad is None or logits.grad.abs().sum() == 0
    assert presence.grad.abs().sum() > 0


def test_focal_reduces_to_bce_at_gamma_zero_and_down_weights_easy_examples():
    x = torch.tensor([3.0, -3.0, 0.2])
    t = torch.tensor([1.0, 0.0, 1.0])
    bce = torch.nn.functional.binary_cross_entropy_with_logits(x, t, reduction="none")
    assert torch.allclose(sigmoid_focal(x, t, 0.0, -1.0), bce)
    focal = sigmoid_focal(x, t, 2.0, -1.0)
    assert (focal[:2] / bce[:2]).max() < 0.01 and focal[2] / bce[2] > 0.2


def test_score_target_of_the_last_layer_is_the_mask_iou():
    from sam3edge.distill.losses import mask_iou

    target = masks_to_target(_square(0, 0, 8, 8), (16, 16))
    half = torch.full((1, 16, 16), -8.0)
    half[0, 0:8, 0:4] = 8.0  # covers half of the instance: IoU 0.5
    assert abs(float(mask_iou(half, target.masks)) - 0.5) < 1e-6
    # A query whose logit already equals the IoU target has (near) zero score gradient.
    boxes = target.boxes[None].clone()
    logit = torch.logit(torch.tensor([[0.5]])).requires_grad_(True)
    out = _outputs(logit, boxes, half[None], torch.tensor([[6.0]]), layers=1)
    loss, _ = SetCriterion(LossWeights(aux=0.0))(out, [target])
    loss.backward()
    assert abs(float(logit.grad)) < 1e-6


def test_a_teachers_score_is_its_own_target_not_scaled_by_the_students_iou():
    target = masks_to_target(_square(0, 0, 8, 8), (16, 16))
    half = torch.full((1, 16, 16), -8.0)
    half[0, 0:8, 0:4] = 8.0  # IoU 0.5 with the instance
    teacher = PairTarget(target.boxes, target.masks, torch.tensor([0.8]), 1.0, teacher=True)
    grads = {}
    for p in (0.8, 0.4):  # 0.8: the teacher's score; 0.4 = 0.8 x IoU, what an IoU-aware target would be
        logit = torch.logit(torch.tensor([[p]])).requires_grad_(True)
        out = _outputs(logit, target.boxes[None].clone(), half[None], torch.tensor([[6.0]]), layers=1)
        SetCriterion(LossWeights(aux=0.0))(out, [teacher])[0].backward()
        grads[p] = float(logit.grad)
    assert abs(grads[0.8]) < 1e-6 and grads[0.4] < -0.1  # at 0.4 the loss still pushes the score up


def _two_instances_one_boxed(label: int):
    """Two true instances, three queries on them / on background; one exemplar box (cxcywh) on instance 0."""
    masks = torch.cat([_square(0, 0, 6, 6), _square(10, 10, 16, 16)])
    target = masks_to_target(masks, (16, 16))
    boxes = torch.cat([target.boxes, torch.tensor([[0.4, 0.0, 0.55, 0.15]])])[None]
    logit_masks = torch.where(torch.cat([target.masks, torch.zeros(1, 16, 16)]) > 0.5, 8.0, -8.0)[None]
    b = target.boxes[0] if label == 1 else boxes[0, 2]
    prompt = torch.stack([(b[0] + b[2]) / 2, (b[1] + b[3]) / 2, b[2] - b[0], b[3] - b[1]])[None, None]
    return target, boxes, logit_masks, prompt, torch.tensor([[label]])


def _score_grads(weights: LossWeights, target, boxes, masks, prompt, labels):
    logits = torch.zeros(1, 3, requires_grad=True)
    out = _outputs(logits, boxes, masks, torch.tensor([[0.0]]), layers=1)
    out.prompt_boxes, out.prompt_labels = prompt, labels
    loss, parts = SetCriterion(weights)(out, [target])
    loss.backward()
    return logits.grad[0], parts


def test_a_positive_box_weighs_the_score_of_its_own_instance_and_nothing_else():
    case = _two_instances_one_boxed(1)
    plain, plain_parts = _score_grads(LossWeights(aux=0.0), *case)
    boxed, _ = _score_grads(LossWeights(aux=0.0, boxed=4.0), *case)
    # query 0 is matched to the boxed instance: 4x the gradient; query 1 (other instance) and 2 (background): same
    assert torch.allclose(boxed[0], 4 * plain[0], rtol=1e-5) and abs(float(plain[0])) > 1e-3
    assert torch.allclose(boxed[1:], plain[1:], rtol=1e-5)
    # without exemplar boxes the weight changes nothing
    target, boxes, masks, _, _ = case
    logits = torch.zeros(1, 3)
    loss_a, _ = SetCriterion(LossWeights(boxed=4.0))(_outputs(logits, boxes, masks, torch.zeros(1, 1)), [target])
    loss_b, _ = SetCriterion(LossWeights())(_outputs(logits, boxes, masks, torch.zeros(1, 1)), [target])
    assert torch.allclose(loss_a, loss_b) and plain_parts["presence"] > 0


def test_a_second_detection_of_a_positive_boxs_instance_is_weighted_down():
    target, boxes, masks, prompt, labels = _two_instances_one_boxed(1)
    boxes = boxes.clone()
    boxes[0, 2] = target.boxes[0] + 0.01  # query 2: a duplicate of the boxed instance, matched to nothing
    plain, _ = _score_grads(LossWeights(aux=0.0), target, boxes, masks, prompt, labels)
    boxed, _ = _score_grads(LossWeights(aux=0.0, boxed=4.0), target, boxes, masks, prompt, labels)
    assert float(plain[2]) > 1e-3 and torch.allclose(boxed[2], 4 * plain[2], rtol=1e-5)
    assert torch.allclose(boxed[1], plain[1], rtol=1e-5)  # the other instance's query is not the box's


def test_a_positive_box_weighs_presence_and_a_negative_box_weighs_the_query_on_it():
    case = _two_instances_one_boxed(1)
    pres = {}
    for w in (1.0, 3.0):
        logits = torch.zeros(1, 3)
        presence = torch.zeros(1, 1, requires_grad=True)
        out = _outputs(logits, case[1], case[2], presence, layers=1)
        out.prompt_boxes, out.prompt_labels = case[3], case[4]
        SetCriterion(LossWeights(aux=0.0, boxed=w))(out, [case[0]])[0].backward()
        pres[w] = float(presence.grad)
    assert pres[1.0] < -1e-3 and abs(pres[3.0] - 3 * pres[1.0]) < 1e-6
    neg = _two_instances_one_boxed(0)  # negative box on query 2's (background) box
    plain, _ = _score_grads(LossWeights(aux=0.0), *neg)
    boxed, _ = _score_grads(LossWeights(aux=0.0, boxed=4.0), *neg)
    assert torch.allclose(boxed[2], 4 * plain[2], rtol=1e-5) and float(plain[2]) > 1e-3  # pushed down, 4x
    assert torch.allclose(boxed[:2], plain[:2], rtol=1e-5)
