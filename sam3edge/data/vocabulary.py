"""Concept vocabularies: noun phrases, the categories they cover, synonyms and distractors.

A *concept* is what a user types ("ripe apple"); it covers one or more annotated categories
(``apple`` covers ripe, unripe and bruised apples) and may have synonyms that mean the same
thing ("red apple"). *Distractors* are phrases that never occur in the domain: they are the
hard negatives that teach a model to say "nothing here".
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Concept:
    """One noun phrase and the category ids whose instances it refers to."""

    phrase: str
    category_ids: tuple[int, ...]
    synonyms: tuple[str, ...] = ()
    attribute: str | None = None  # e.g. "ripeness" for ripe/unripe: used for attribute confusion


@dataclass(frozen=True)
class Vocabulary:
    """A domain's categories (id -> name), concepts and distractor phrases."""

    categories: dict[int, str]
    concepts: tuple[Concept, ...]
    distractors: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self):
        for c in self.concepts:
            unknown = [i for i in c.category_ids if i not in self.categories]
            if unknown:
                raise ValueError(f"concept {c.phrase!r} refers to unknown category ids {unknown}")
        phrases = [c.phrase for c in self.concepts]
        if len(set(phrases)) != len(phrases):
            raise ValueError(f"duplicate concept phrases in vocabulary: {phrases}")

    @property
    def phrases(self) -> list[str]:
        """Canonical concept phrases, in vocabulary order."""
        return [c.phrase for c in self.concepts]

    def concept(self, phrase: str) -> Concept:
        """The concept whose canonical phrase or synonym is ``phrase``."""
        key = phrase.strip().lower()
        for c in self.concepts:
            if key == c.phrase or key in c.synonyms:
                return c
        raise KeyError(f"phrase {phrase!r} is not in the vocabulary ({', '.join(self.phrases)})")

    def all_phrases(self) -> list[str]:
        """Every phrase a model should know: concepts, their synonyms, and distractors."""
        out = []
        for c in self.concepts:
            out.append(c.phrase)
            out.extend(c.synonyms)
        out.extend(self.distractors)
        return out

    def to_dict(self) -> dict:
        return {
            "categories": {str(k): v for k, v in self.categories.items()},
            "concepts": [
                {"phrase": c.phrase, "category_ids": list(c.category_ids), "synonyms": list(c.synonyms),
                 "attribute": c.attribute}
                for c in self.concepts
            ],
            "distractors": list(self.distractors),
        }

    @classmethod
    def from_dict(cls, d: dict) -> Vocabulary:
        try:
            return cls(
                categories={int(k): str(v) for k, v in d["categories"].items()},
                concepts=tuple(
                    Concept(c["phrase"], tuple(int(i) for i in c["category_ids"]),
                            tuple(c.get("synonyms", ())), c.get("attribute"))
                    for c in d["concepts"]
                ),
                distractors=tuple(d.get("distractors", ())),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"malformed vocabulary: {e!r}; expected keys categories, concepts") from e


def parse_phrases(spec: str | Path | list[str]) -> list[str]:
    """Read a phrase list from a list, a comma-separated string, or a file (one per line or JSON list).

    Raises ValueError for an empty list or an empty phrase: a model cannot segment "nothing".
    """
    if isinstance(spec, (list, tuple)):
        phrases = [str(p) for p in spec]
    else:
        path = Path(str(spec))
        if path.suffix in {".txt", ".json"} or path.exists():
            if not path.is_file():
                raise FileNotFoundError(f"concept file {path} does not exist; pass a file or 'a,b,c'")
            text = path.read_text(encoding="utf-8")
            if path.suffix == ".json":
                phrases = json.loads(text)
            else:  # one phrase per line; blank lines and '#' comments are layout, not phrases
                phrases = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
        else:
            phrases = str(spec).split(",")
    phrases = [" ".join(p.split()) for p in phrases]
    if not phrases or all(not p for p in phrases):
        raise ValueError("the phrase list is empty: give at least one noun phrase, e.g. 'ripe apple'")
    empty = [i for i, p in enumerate(phrases) if not p]
    if empty:
        raise ValueError(f"phrase list has empty entries at positions {empty}: remove them")
    return phrases
