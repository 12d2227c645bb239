"""Build SAM3's CLIP BPE tokenizer offline and write the runtime asset.

SAM3's text encoder is a CLIP text transformer (vocab 49408). Instead of downloading
``facebook/sam3``'s tokenizer files from the Hub, the vocabulary is rebuilt from the BPE merges file that
ships inside the ``open_clip_torch`` wheel, exactly the way OpenAI CLIP's ``SimpleTokenizer`` does, and
wrapped in ``transformers.CLIPTokenizer`` (the class ``AutoTokenizer`` maps ``sam3`` to).

Regenerate the committed asset with::

    python -m sam3edge.models.tokenizer            # writes sam3edge/assets/clip_tokenizer.json
    python -m sam3edge.models.tokenizer OUT.json   # or anywhere else
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from sam3edge.atomic import atomic_write_text
from sam3edge.runtime.names import CONTEXT_LENGTH

if TYPE_CHECKING:  # transformers is heavy; import it only when a tokenizer is actually built.
    from transformers import CLIPTokenizer

BPE_FILENAME = "bpe_simple_vocab_16e6.txt.gz"
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
# SAM3's text config sets max_position_embeddings=32 and Sam3Processor tokenizes with
# padding="max_length", max_length=32 (transformers/models/sam3/{configuration,processing}_sam3.py).
CLIP_VOCAB_SIZE = 49408
# CLIP keeps the first 49152 - 256 - 2 merges: 256 byte tokens + 256 "</w>" byte tokens + merges
# + 2 specials add up to 49408. Line 0 of the file is a version header, hence the +1 on the slice end.
_NUM_MERGES = 49152 - 256 - 2

DEFAULT_ASSET_PATH = Path(__file__).resolve().parent.parent / "assets" / "clip_tokenizer.json"


def clip_bpe_vocab_path() -> Path:
    """Return the path of ``bpe_simple_vocab_16e6.txt.gz`` inside the installed ``open_clip`` package.

    ``open_clip/__init__.py`` imports torch, so the package directory is located with ``find_spec``
    (which does not execute the package) rather than by importing it.

    Raises:
        ImportError: ``open_clip_torch`` is not installed.
        FileNotFoundError: the package is installed but the merges file is missing from it.
    """
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "open_clip is not installed; it provides the CLIP BPE merges file needed to build the "
            "tokenizer. Install it with: pip install open_clip_torch"
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / BPE_FILENAME
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"{BPE_FILENAME} not found in open_clip package at {list(spec.submodule_search_locations)}; "
        "the install looks broken. Reinstall with: pip install --force-reinstall open_clip_torch"
    )


def _byte_to_unicode() -> dict[int, str]:
    """Map each of the 256 byte values to a printable unicode character (GPT-2 / CLIP byte-level BPE).

    Printable Latin-1 bytes map to themselves; the remaining bytes (control chars, space, ...) are
    assigned code points from 256 upward in byte order, so no token contains whitespace.
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    # Order matters: CLIP's vocab ids follow this insertion order (printable bytes first).
    return table


def build_clip_vocab_and_merges(bpe_path: str | os.PathLike) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Rebuild OpenAI CLIP's vocabulary (49408 entries) and BPE merge list from the gzipped merges file.

    Ids: 256 byte chars, the same 256 with ``</w>``, one id per merge (the merged pair joined), then
    ``<|startoftext|>`` (49406) and ``<|endoftext|>`` (49407).
    """
    with gzip.open(bpe_path, "rt", encoding="utf-8") as fh:
        lines = fh.read().split("\n")
    merges: list[tuple[str, str]] = []
    for line in lines[1 : _NUM_MERGES + 1]:
        left, right = line.split()
        merges.append((left, right))
    byte_chars = list(_byte_to_unicode().values())
    tokens = (
        byte_chars + [c + "</w>" for c in byte_chars] + [a + b for a, b in merges] + [BOS_TOKEN, EOS_TOKEN]
    )
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != CLIP_VOCAB_SIZE:  # duplicates or a truncated file would silently shift every id
        raise ValueError(f"{bpe_path}: built {len(vocab)} unique tokens, expected {CLIP_VOCAB_SIZE}")
    return vocab, merges


def build_clip_tokenizer(model_max_length: int = CONTEXT_LENGTH) -> CLIPTokenizer:
    """Build the ``transformers.CLIPTokenizer`` SAM3 uses, fully offline.

    Pad token: ``<|endoftext|>`` (49407), the ``CLIPTokenizer`` default that ``facebook/sam3`` (loaded
    through ``AutoTokenizer`` -> ``CLIPTokenizer``) pads with, so ids match ``Sam3Processor`` bit for bit.
    The original Meta code (open_clip style) pads with 0 and derives the mask from ``ids != 0``; both are
    equivalent for the model because the CLIP text encoder is causal (padding after EOT cannot change
    earlier positions) and padded positions are masked out downstream via ``attention_mask``.
    """
    from transformers import CLIPTokenizer

    vocab, merges = build_clip_vocab_and_merges(clip_bpe_vocab_path())
    return CLIPTokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=EOS_TOKEN,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        model_max_length=model_max_length,
    )


def write_tokenizer_json(path: str | os.PathLike = DEFAULT_ASSET_PATH) -> Path:
    """Serialize the ``tokenizers`` JSON of :func:`build_clip_tokenizer` to ``path`` atomically.

    The file is written to a temp file in the same directory and moved into place with ``os.replace``
    so a crash never leaves a half-written asset. Returns the resolved path.
    """
    path = Path(path).resolve()
    # Padding/truncation are applied explicitly by the runtime; keep them out of the file so loading it
    # elsewhere has no hidden state.
    backend = build_clip_tokenizer().backend_tokenizer
    backend.no_padding()
    backend.no_truncation()
    text = backend.to_str(pretty=True)
    return atomic_write_text(path, text + "\n")


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: regenerate the tokenizer asset (default: the packaged one)."""
    args = sys.argv[1:] if argv is None else argv
    out = write_tokenizer_json(args[0] if args else DEFAULT_ASSET_PATH)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
