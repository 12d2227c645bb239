"""Student text encoder: shapes in the teacher's projected space, causality, padding, export, distillation."""

from __future__ import annotations

import pytest
import torch

from sam3edge.models.text_encoder import (
    StudentTextEncoder,
    attention_bias,
    teacher_token_table,
    text_distillation_loss,
)
from sam3edge.runtime.tokenizer import ClipTokenizer

PHRASES = ["ripe apple", "a bruised red apple on a branch", "leaf"]


@pytest.fixture(scope="module")
def tokens():
    ids, mask = ClipTokenizer.default().encode(PHRASES)
    return torch.from_numpy(ids), torch.from_numpy(mask)


@pytest.fixture(scope="module")
def student():
    torch.manual_seed(0)
    return StudentTextEncoder(out_dim=16, width=32, layers=2, heads=2).eval()


@pytest.fixture(scope="module")
def teacher():
    from sam3edge.models.sam3_load import build_sam3, tiny_sam3_config
    from sam3edge.models.teacher import Sam3Teacher

    return Sam3Teacher(build_sam3(tiny_sam3_config(image_size=56, vision_layers=1, vision_hidden=32)),
                       ClipTokenizer.default())


def test_features_are_per_token_at_head_width_with_bool_mask(student, tokens):
    feats, mask = student(*tokens)
    assert feats.shape == (3, 32, 16) and feats.dtype == torch.float32
    assert mask.dtype == torch.bool and torch.equal(mask, tokens[1].bool())
    with pytest.raises(ValueError, match=r"\[N, 32\]"):
        student(tokens[0][:, :16], tokens[1][:, :16])


def test_later_tokens_do_not_change_earlier_outputs(student, tokens):
    ids, mask = tokens[0][1:2].clone(), torch.ones(1, 32, dtype=torch.int64)
    changed = ids.clone()
    changed[0, 5] = 1000
    with torch.no_grad():
        a, _ = student(ids, mask)
        b, _ = student(changed, mask)
    assert torch.allclose(a[0, :5], b[0, :5], atol=1e-6)
    assert not torch.allclose(a[0, 5:], b[0, 5:], atol=1e-4)


def test_padded_tokens_do_not_affect_valid_ones(student, tokens):
    ids = tokens[0][1:2].clone()
    mask = torch.ones(1, 32, dtype=torch.int64)
    mask[0, 2:4] = 0  # padding inside the sequence: causality alone would not hide it from later tokens
    changed = ids.clone()
    changed[0, 2:4] = torch.tensor([1000, 2000])
    with torch.no_grad():
        a, _ = student(ids, mask)
        b, _ = student(changed, mask)
        c, _ = student(changed, torch.ones_like(mask))
    valid = mask[0].bool()
    assert torch.allclose(a[0, valid], b[0, valid], atol=1e-6)
    assert not torch.allclose(a[0, valid], c[0, valid], atol=1e-4)  # the mask is what hides them


def test_attention_bias_is_causal_and_masks_padding_keys():
    bias = attention_bias(torch.tensor([[1, 1, 0, 1]]), torch.float32)[0, 0]
    allowed = bias == 0
    expected = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 0, 1]], dtype=torch.bool)
    assert torch.equal(allowed, expected)
    assert torch.isfinite(bias).all()


def test_torch_export_matches_eager_with_dynamic_batch(student, tokens):
    n = torch.export.Dim("n", min=1, max=64)
    ep = torch.export.export(student, tokens, dynamic_shapes=({0: n}, {0: n}))
    ids, mask = tokens[0][:2], tokens[1][:2]
    exported, _ = ep.module()(ids, mask)
    with torch.no_grad():
        eager, _ = student(ids, mask)
    assert torch.allclose(exported, eager, atol=1e-5)


def test_token_embedding_init_copies_or_projects_teacher_table():
    torch.manual_seed(0)
    basis = torch.randn(4, 16)
    table = torch.randn(49408, 4) @ basis  # rank 4 in 16 dims: 8 principal directions keep all of it
    small = StudentTextEncoder(out_dim=8, width=8, layers=1, heads=2)
    assert small.init_token_embedding(table) == "pca"
    w = small.token_embedding.weight
    idx = torch.randint(0, 49408, (50,))
    dist = lambda x: (x[:, None] - x[None]).norm(dim=-1)
    assert torch.allclose(dist(w[idx].detach()), dist(table[idx]), atol=1e-4)
    same = StudentTextEncoder(out_dim=8, width=16, layers=1, heads=2)
    assert same.init_token_embedding(table) == "copy"
    assert torch.equal(same.token_embedding.weight, table)
    with pytest.raises(ValueError, match="49408"):
        small.init_token_embedding(table[:100])


def test_student_matches_teacher_shapes_and_learns_its_features(teacher, tokens):
    with torch.no_grad():
        target, tmask = teacher.encode_text(PHRASES)
    table = teacher_token_table(teacher)
    assert table.shape == (49408, teacher.config.text_config.hidden_size)
    torch.manual_seed(0)
    student = StudentTextEncoder(out_dim=target.shape[-1], width=16, layers=1, heads=2)
    student.init_token_embedding(table)
    opt = torch.optim.Adam(student.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        feats, mask = student(*tokens)
        assert feats.shape == target.shape and torch.equal(mask, tmask)
        loss = text_distillation_loss(feats, target, mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_distillation_loss_ignores_padding_and_is_zero_on_equal_features():
    t = torch.randn(2, 32, 8)
    mask = torch.zeros(2, 32, dtype=torch.bool)
    mask[:, :4] = True
    s = t.clone()
    s[:, 4:] += 10  # only padded positions differ
    assert text_distillation_loss(s, t, mask).item() == pytest.approx(0.0, abs=1e-6)
    s[:, 0] += 1
    assert text_distillation_loss(s, t, mask).item() > 0.01
