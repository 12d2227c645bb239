"""Tests for the offline CLIP tokenizer: build-time (transformers) vs runtime (tokenizers-only) forms."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sam3edge.runtime.tokenizer import ClipTokenizer

REPO_ROOT = Path(__file__).resolve().parent.parent
ASSET = REPO_ROOT / "sam3edge" / "assets" / "clip_tokenizer.json"
CAT_IDS = [49406, 320, 1125, 539, 320, 2368, 49407]

PHRASES = [
    "a photo of a cat",
    "yellow school bus",
    "Yellow SCHOOL Bus!!",
    "dog, cat; and (bird)?",
    "crème brûlée",
    "naïve café 東京 😀",
    "3 apples and 42 pears, 3.14",
    "  red    car\twith\nspaces  ",
    "don't stop, it's the person's hat",
    "<|endoftext|> special token typed by a user",
    " ".join(f"word{i}" for i in range(100)),  # far longer than 32 tokens: exercises truncation
]


def _require_build_deps() -> None:
    # find_spec, not importorskip: importing open_clip pulls in torch and costs seconds per run.
    for mod in ("transformers", "open_clip"):
        if importlib.util.find_spec(mod) is None:
            pytest.skip(f"{mod} not installed (build-time dependency)")


@pytest.fixture(scope="module")
def hf_tokenizer():
    _require_build_deps()
    from sam3edge.models.tokenizer import build_clip_tokenizer

    return build_clip_tokenizer()


@pytest.fixture(scope="module")
def runtime_tokenizer() -> ClipTokenizer:
    return ClipTokenizer.default()


def test_known_ids_transformers_form(hf_tokenizer):
    assert hf_tokenizer("a photo of a cat")["input_ids"] == CAT_IDS
    assert hf_tokenizer.pad_token_id == 49407
    assert len(hf_tokenizer) == 49408


def test_known_ids_runtime_form(runtime_tokenizer):
    ids, mask = runtime_tokenizer.encode(["a photo of a cat"])
    assert ids.dtype == np.int64 and mask.dtype == np.int64
    assert ids.shape == mask.shape == (1, 32)
    assert ids[0, :7].tolist() == CAT_IDS
    assert (ids[0, 7:] == 49407).all()
    assert mask[0].tolist() == [1] * 7 + [0] * 25
    assert runtime_tokenizer.vocab_size == 49408


def test_runtime_matches_transformers(hf_tokenizer, runtime_tokenizer):
    # Same call as Sam3Processor, plus truncation=True (the processor omits it; see runtime docstring).
    # Except for a typed "<|endoftext|>": transformers makes it the control token, sam3edge keeps it text
    # (test_special_tokens_typed_in_a_prompt_stay_text_and_bad_text_is_named).
    phrases = [p for p in PHRASES if "<|" not in p]
    ref = hf_tokenizer(phrases, padding="max_length", max_length=32, truncation=True)
    ids, mask = runtime_tokenizer.encode(phrases, context_length=32)
    np.testing.assert_array_equal(ids, np.array(ref["input_ids"], dtype=np.int64))
    np.testing.assert_array_equal(mask, np.array(ref["attention_mask"], dtype=np.int64))


def test_truncation_keeps_eos(runtime_tokenizer):
    ids, mask = runtime_tokenizer.encode([PHRASES[-1], "cat"])
    assert ids[0, 0] == 49406 and ids[0, -1] == 49407
    assert 49407 not in ids[0, 1:-1].tolist()
    assert mask[0].all()
    assert mask[1].sum() == 3
    ids16, _ = runtime_tokenizer.encode([PHRASES[-1]], context_length=16)
    assert ids16.shape == (1, 16) and ids16[0, -1] == 49407
    np.testing.assert_array_equal(ids16[0, :15], ids[0, :15])


def test_committed_asset_is_up_to_date(tmp_path):
    _require_build_deps()
    from sam3edge.models.tokenizer import write_tokenizer_json

    fresh = write_tokenizer_json(tmp_path / "tok.json")
    assert fresh.is_file()
    assert not list(tmp_path.glob("*.tmp")), "temporary file left behind"
    committed = json.loads(ASSET.read_text(encoding="utf-8"))
    assert committed == json.loads(fresh.read_text(encoding="utf-8")), (
        "sam3edge/assets/clip_tokenizer.json is stale; run `python -m sam3edge.models.tokenizer`"
    )


def test_runtime_import_is_torch_free():
    code = (
        "import sys; import sam3edge.runtime.tokenizer as t; t.ClipTokenizer.default().encode(['cat']); "
        "bad = [m for m in ('torch', 'transformers', 'open_clip') if m in sys.modules]; "
        "assert not bad, bad"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize(
    ("phrases", "match"),
    [
        ([], "empty"),
        ("a cat", "list of strings"),
        (["a cat", ""], r"phrases\[1\] is empty"),
        (["   \t\n"], "whitespace-only"),
        (["a cat", 3], r"phrases\[1\] is int"),
        ([None], "expected a string"),
    ],
)
def test_invalid_phrases(runtime_tokenizer, phrases, match):
    with pytest.raises(ValueError, match=match):
        runtime_tokenizer.encode(phrases)


def test_invalid_context_length(runtime_tokenizer):
    with pytest.raises(ValueError, match="context_length"):
        runtime_tokenizer.encode(["cat"], context_length=2)


def test_missing_file_names_path(tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(FileNotFoundError, match="nope.json"):
        ClipTokenizer.from_file(missing)


@pytest.mark.parametrize(
    "content",
    [
        "{ this is not json",
        '{"version": "1.0", "model": {"type": "BPE"}}',
        # a valid tokenizers file that is not CLIP (no <|startoftext|>/<|endoftext|>)
        (
            '{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],"normalizer":null,'
            '"pre_tokenizer":null,"post_processor":null,"decoder":null,'
            '"model":{"type":"WordLevel","vocab":{"[UNK]":0,"cat":1},"unk_token":"[UNK]"}}'
        ),
    ],
)
def test_corrupt_file_names_path(tmp_path, content):
    bad = tmp_path / "corrupt.json"
    bad.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match="corrupt.json"):
        ClipTokenizer.from_file(bad)


def test_from_file_roundtrip_matches_default(runtime_tokenizer):
    ids_a, mask_a = ClipTokenizer.from_file(ASSET).encode(PHRASES)
    ids_b, mask_b = runtime_tokenizer.encode(PHRASES)
    np.testing.assert_array_equal(ids_a, ids_b)
    np.testing.assert_array_equal(mask_a, mask_b)


def test_special_tokens_typed_in_a_prompt_stay_text_and_bad_text_is_named():
    from sam3edge.runtime.tokenizer import ClipTokenizer

    tok = ClipTokenizer.default()
    ids, mask = tok.encode(["red <|endoftext|> apple", "<|startoftext|> leaf"])
    bos, eos = tok._tok.token_to_id("<|startoftext|>"), tok._tok.token_to_id("<|endoftext|>")
    for row, m in zip(ids, mask):
        real = row[m.astype(bool)]
        assert real[0] == bos and real[-1] == eos  # exactly one BOS, first, and one EOS, last
        assert bos not in real[1:] and eos not in real[:-1]
    with pytest.raises(ValueError, match=r"phrases\[1\].*not valid text"):
        tok.encode(["leaf", "apple \udcff"])
