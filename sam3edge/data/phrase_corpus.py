"""A broad phrase corpus for distilling a student's text encoder: many more phrases than a run's concepts.

A text encoder distilled on the four phrases of a run learns those four; a user then types "yellow pear" and
gets noise. The corpus here is built offline from what ships with the package, deterministically:

* words: whole-word entries of the CLIP BPE vocabulary (``sam3edge/assets/clip_tokenizer.json``), alphabetic,
  3-14 letters, in merge order (BPE merges frequent pairs first, so early entries are frequent words);
* attribute x noun: colours, sizes, states, materials and textures on everyday, plant, animal, vehicle and
  tool nouns ("bruised pear", "small red car");
* the domain's phrases and their paraphrases: articles, plurals, an extra attribute ("a ripe apple",
  "ripe apples", "small ripe apple").

``split_heldout`` puts a fixed fraction aside by a hash of the phrase (not by position), so the held-out list
is the same whatever the corpus size, and a held-out phrase is never trained on. Torch-free.
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources

import numpy as np

__all__ = ["ATTRIBUTES", "NOUNS", "build_corpus", "paraphrases", "split_heldout", "vocabulary_words"]

ATTRIBUTES = {
    "colour": ("red", "green", "yellow", "orange", "brown", "black", "white", "blue", "purple", "pink", "gray",
               "golden", "dark", "pale"),
    "size": ("small", "large", "big", "tiny", "long", "short", "round", "thin", "tall"),
    "state": ("ripe", "unripe", "rotten", "bruised", "fresh", "dry", "wet", "broken", "damaged", "healthy",
              "dead", "young", "old", "clean", "dirty", "open", "closed", "empty", "full"),
    "material": ("wooden", "metal", "plastic", "glass", "paper", "stone", "leather"),
    "texture": ("shiny", "smooth", "rough", "striped", "spotted", "wrinkled", "fuzzy"),
}

NOUNS = (
    # plants, fruit and the field
    "apple", "pear", "peach", "plum", "cherry", "grape", "lemon", "orange", "banana", "strawberry", "tomato",
    "potato", "carrot", "pepper", "cucumber", "pumpkin", "melon", "berry", "nut", "fruit", "vegetable", "leaf",
    "branch", "twig", "trunk", "tree", "bush", "flower", "blossom", "stem", "root", "seed", "weed", "grass",
    "plant", "crop", "vine", "mushroom",
    # animals
    "bird", "bee", "insect", "worm", "snail", "dog", "cat", "horse", "cow", "sheep", "chicken", "mouse",
    # people and clothes
    "person", "worker", "hand", "glove", "hat", "boot", "shirt", "jacket",
    # tools, containers, machines
    "basket", "box", "crate", "bucket", "bag", "bottle", "cup", "ladder", "pole", "rope", "wire", "net",
    "shovel", "knife", "scissors", "hose", "pipe", "sign", "post", "fence", "gate", "wall", "door", "window",
    "table", "chair", "bench", "cart", "wheel", "tractor", "truck", "car", "bicycle", "robot", "drone",
    "camera", "cable", "tool", "hammer",
    # ground and scene
    "rock", "stone", "stick", "log", "puddle", "path", "road", "soil", "hole", "shadow", "sky", "cloud",
)

_ARTICLES = ("a", "the", "one")


def vocabulary_words(limit: int | None = None) -> list[str]:
    """Whole words of the CLIP BPE vocabulary: alphabetic ASCII, 3-14 letters, most frequent first (merge order)."""
    asset = resources.files("sam3edge").joinpath("assets/clip_tokenizer.json")
    vocab = json.loads(asset.read_text(encoding="utf-8"))["model"]["vocab"]
    words = sorted((i, w[:-4]) for w, i in vocab.items()
                   if w.endswith("</w>") and w[:-4].isascii() and w[:-4].isalpha() and 3 <= len(w) - 4 <= 14)
    return [w for _, w in words][:limit]


def _plural(noun: str) -> str:
    if noun.endswith(("s", "sh", "ch", "x")):
        return noun + "es"
    if noun.endswith("y") and noun[-2:-1] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + "s"


def paraphrases(phrase: str) -> list[str]:
    """Other ways to say ``phrase``: with an article, in the plural, with one more size / colour attribute."""
    words = phrase.split()
    if not words:
        return []
    plural = " ".join(words[:-1] + [_plural(words[-1])])
    out = [f"{a} {phrase}" for a in _ARTICLES] + [plural, f"the {plural}", f"some {plural}"]
    out += [f"{adj} {phrase}" for adj in ("small", "large", "dark", "bright")]
    return [p for p in dict.fromkeys(out) if p != phrase]


def build_corpus(domain_phrases: list[str] = (), size: int = 12000, seed: int = 0) -> list[str]:
    """About ``size`` distinct lowercase phrases (see the module docstring): the domain's phrases and their
    paraphrases always, then attribute x noun pairs, attribute x attribute x noun triples and vocabulary words in
    equal shares, drawn with ``seed``. Deterministic for given arguments."""
    if isinstance(size, bool) or not isinstance(size, int) or not 100 <= size <= 1_000_000:
        raise ValueError(f"build_corpus: size={size!r} must be an integer from 100 to 1000000")
    rng = np.random.default_rng(seed)
    domain = [" ".join(p.lower().split()) for p in domain_phrases]
    fixed = list(dict.fromkeys(domain + [q for p in domain for q in paraphrases(p)]))
    attrs = [a for group in ATTRIBUTES.values() for a in group]
    pairs = [f"{a} {n}" for a in attrs for n in NOUNS]
    triples = [f"{a} {b} {n}" for a in ATTRIBUTES["size"] for b in ATTRIBUTES["colour"] + ATTRIBUTES["state"]
               for n in NOUNS]
    words = vocabulary_words()
    share = max(0, size - len(fixed)) // 3
    picked = [rng.permutation(pool)[:share].tolist() for pool in (pairs, triples, words)]
    nouns = list(NOUNS) + [_plural(n) for n in NOUNS]
    corpus = list(dict.fromkeys(fixed + nouns + [p for part in picked for p in part]))
    return corpus[:max(size, len(fixed))]


def _bucket(phrase: str) -> float:
    digest = hashlib.sha256(("sam3edge-heldout:" + phrase).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64


def split_heldout(phrases: list[str], fraction: float = 0.05, keep: list[str] = ()) -> tuple[list[str], list[str]]:
    """(train, held-out): a phrase is held out when a hash of it falls below ``fraction`` (the same phrase is always
    on the same side, whatever else the list holds); phrases in ``keep`` (the run's own concepts) always train."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"split_heldout: fraction={fraction!r} must be in [0, 1)")
    keep = set(keep)
    held = [p for p in phrases if p not in keep and _bucket(p) < fraction]
    held_set = set(held)
    return [p for p in phrases if p not in held_set], held
