"""Reading a bundle: ``Bundle.open(path)`` checks a ``NAME.sam3edge`` directory before anything runs it.

A bundle (written by ``sam3edge export``, see DESIGN.md) is a directory with ``manifest.json``, the
graphs, the concept cache and ``tokenizer.json``. Opening one never executes code from it (JSON and
``.npy`` without pickle) and refuses, with a :class:`BundleError` that names the bundle, the file or
field and what to do:

* a missing path, a file instead of a directory, no or unparsable ``manifest.json``;
* another format, or a format version this sam3edge does not read;
* missing or mistyped fields (:meth:`Bundle._check_fields`, in plain Python: the one definition of what a
  manifest holds, the JSON schema it replaced needed jsonschema and had drifted from it);
* any path in the manifest (``files`` keys, ``graphs[*].file``, ``tokenizer``) that is absolute,
  contains ``..``, or resolves (symlinks followed) outside the bundle;
* a listed file that is missing, a graph or tokenizer the manifest does not checksum, and (unless
  ``verify=False``) a file whose sha256 differs from the manifest's.

Standard library and numpy only: this is the torch-free runtime.
"""

from __future__ import annotations

import json
import re
from functools import cached_property
from pathlib import Path, PurePosixPath

from sam3edge.runtime.concepts import ConceptCache, sha256_file
from sam3edge.runtime.names import (
    DYNAMIC_AXES,
    EXEMPLAR_GRAPH,
    GRAPH_NAMES,
    MAX_PHRASE_CHARS,
    PRECISIONS,
    REQUIRED_GRAPHS,
    TARGETS,
    TEXT_GRAPH,
)

FORMAT = "sam3edge-bundle"  # the bundle format's one definition (sam3edge.export.bundle writes it)
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
INPUT_LAYOUT = {"dtype": "uint8", "layout": "NHWC", "channels": "RGB"}
TENSOR_DTYPES = ("uint8", "int32", "int64", "float16", "float32", "bool")


def check_manifest(m: dict) -> None:
    """Raise a BundleError naming the field unless ``m`` (a parsed manifest.json) holds every field this runtime
    reads, of the right type: the one definition of a manifest (export checks what it writes with it too)."""
    missing = [k for k in ("student", "target", "precision", "input", "graphs", "concepts", "tokenizer", "files",
                           "export_spec", "verification", "provenance") if k not in m]
    if missing:
        raise BundleError(f"{MANIFEST} lacks field(s) {', '.join(missing)}; the bundle is incomplete or was "
                          "edited: re-export it")
    if m["target"] not in TARGETS:
        raise BundleError(f"{MANIFEST}: target {m['target']!r} is not one of {', '.join(TARGETS)}")
    if m["precision"] not in PRECISIONS:
        raise BundleError(f"{MANIFEST}: precision {m['precision']!r} is not one of {', '.join(PRECISIONS)}")
    size = m["input"].get("size") if isinstance(m["input"], dict) else None
    if not isinstance(size, int) or isinstance(size, bool) or size < 32:
        raise BundleError(f"{MANIFEST}: input.size must be the student's input size in pixels (an int), "
                          f"got {size!r}")
    for key, value in INPUT_LAYOUT.items():  # what the Segmenter feeds; another layout would be misread
        if m["input"].get(key) != value:
            raise BundleError(f"{MANIFEST}: input.{key} is {m['input'].get(key)!r}; this runtime feeds "
                              f"{value!r} images (re-export the bundle)")
    for key in ("student", "verification", "provenance"):
        if not isinstance(m[key], dict):
            raise BundleError(f"{MANIFEST}: {key} must be an object, got {type(m[key]).__name__}")
    if not isinstance(m["verification"].get("ran"), bool):
        raise BundleError(f"{MANIFEST}: verification.ran must be true or false (whether export verified the "
                          "graphs against PyTorch)")
    spec = m["export_spec"]
    if not isinstance(spec, dict) or not isinstance(spec.get("text_length"), int):
        raise BundleError(f"{MANIFEST}: export_spec must be an object with an int text_length")
    concepts = m["concepts"]
    if not isinstance(concepts, list) or not all(isinstance(c, str) and 0 < len(c) <= MAX_PHRASE_CHARS
                                                  for c in concepts):
        raise BundleError(f"{MANIFEST}: concepts must be a list of phrases (1 to {MAX_PHRASE_CHARS} characters "
                          f"each), got {concepts!r:.80}")
    if len(set(concepts)) != len(concepts):
        raise BundleError(f"{MANIFEST}: concepts lists a phrase twice; each concept must be unique")
    if not isinstance(m["tokenizer"], str):
        raise BundleError(f"{MANIFEST}: tokenizer must be a relative path, got {m['tokenizer']!r}")
    files = m["files"]
    if not isinstance(files, dict) or not files:
        raise BundleError(f"{MANIFEST}: files must map every file of the bundle to its sha256")
    for rel, digest in files.items():
        if not isinstance(digest, str) or not _SHA256.match(digest):
            raise BundleError(f"{MANIFEST}: files[{rel!r}] is {digest!r}, not a hex sha256")
    graphs = m["graphs"]
    if not isinstance(graphs, dict):
        raise BundleError(f"{MANIFEST}: graphs must be an object (graph name -> file, inputs, outputs)")
    for name in REQUIRED_GRAPHS:
        if name not in graphs:
            raise BundleError(f"{MANIFEST}: no {name!r} graph (it has {', '.join(graphs) or 'none'}); "
                              "re-export the bundle")
    unknown = sorted(set(graphs) - set(GRAPH_NAMES))
    if unknown:
        raise BundleError(f"{MANIFEST}: unknown graph(s) {unknown}; a bundle holds {', '.join(GRAPH_NAMES)}")
    for name, g in graphs.items():
        ok = isinstance(g, dict) and isinstance(g.get("file"), str) and all(
            isinstance(g.get(k), list) and g[k] and all(_tensor_ok(t) for t in g[k]) for k in ("inputs", "outputs"))
        if not ok:
            raise BundleError(f"{MANIFEST}: graphs[{name!r}] must have a file and lists of inputs and outputs "
                              f"(name, dtype among {', '.join(TENSOR_DTYPES)}, shape of ints >= 1 or "
                              f"{' / '.join(map(repr, DYNAMIC_AXES))} each)")


def _tensor_ok(t) -> bool:
    """A graph input / output record: {"name": str, "dtype": one of TENSOR_DTYPES, "shape": [int >= 1 | a dynamic
    axis of DYNAMIC_AXES]}."""
    return (isinstance(t, dict) and isinstance(t.get("name"), str) and bool(t["name"])
            and t.get("dtype") in TENSOR_DTYPES and isinstance(t.get("shape"), list)
            and all((isinstance(d, int) and not isinstance(d, bool) and d >= 1) or d in DYNAMIC_AXES
                    for d in t["shape"]))


class BundleError(ValueError):
    """A bundle that cannot be used as it is: the message names the bundle, the file or field, and what to do."""


class Bundle:
    """An opened, checked bundle directory. Construct with :meth:`open`.

    Attributes: ``path`` (resolved directory), ``manifest`` (the parsed ``manifest.json``).
    """

    def __init__(self, path: Path, manifest: dict):
        self.path, self.manifest = path, manifest

    def __repr__(self) -> str:
        return (f"Bundle({str(self.path)!r}, {self.target} {self.precision}, {self.input_size} px, "
                f"{len(self.concepts)} concepts{', text encoder' if self.has_text_encoder else ''})")

    # ---- opening ----------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path, verify: bool = True) -> Bundle:
        """Read and check the bundle at ``path`` (see the module docstring); ``verify=False`` skips the sha256
        of every file (never the path checks nor the presence of each listed file)."""
        given = Path(path).expanduser()
        if not given.exists():
            raise BundleError(f"bundle {given} does not exist; pass the NAME.sam3edge directory written by "
                              "`sam3edge export`")
        if not given.is_dir():
            raise BundleError(f"bundle {given} is not a directory; a bundle is the NAME.sam3edge directory written "
                              "by `sam3edge export` (holding manifest.json)")
        root = given.resolve()
        manifest = _read_manifest(root)
        bundle = cls(root, manifest)
        bundle._check_fields()
        bundle._check_paths()
        if verify:
            bundle._check_checksums()
        return bundle

    def _error(self, message: str) -> BundleError:
        return BundleError(f"bundle {self.path}: {message}")

    def _check_fields(self) -> None:
        try:
            check_manifest(self.manifest)
        except BundleError as e:
            raise self._error(str(e)) from None

    def _check_paths(self) -> None:
        m = self.manifest
        for rel in m["files"]:
            p = self._resolve(rel, "files")
            if not p.is_file():
                raise self._error(f"{rel} is listed in {MANIFEST} but missing: the bundle is incomplete; copy it "
                                  "again or re-export it")
        listed = set(m["files"])
        for name, g in m["graphs"].items():
            p = self._resolve(g["file"], f"graphs.{name}.file")
            needed = [g["file"]]
            if p.suffix == ".xml":  # an OpenVINO IR reads its weights from the .bin beside it
                needed.append(PurePosixPath(g["file"]).with_suffix(".bin").as_posix())
            for rel in needed:
                covered = rel in listed or (p.is_dir() and any(f.startswith(rel.rstrip("/") + "/") for f in listed))
                if not covered:
                    raise self._error(f"{rel} (graph {name!r}) is not listed with a checksum in {MANIFEST}'s files; "
                                      "the bundle was edited: re-export it")
            self._check_graph_folder(p if p.is_dir() else p.parent, listed)
        self._resolve(m["tokenizer"], "tokenizer")
        if m["tokenizer"] not in listed:
            raise self._error(f"{m['tokenizer']} (the tokenizer) is not listed with a checksum in {MANIFEST}'s "
                              "files; the bundle was edited: re-export it")

    def _check_graph_folder(self, folder: Path, listed: set[str]) -> None:
        """Every file beside a graph is listed with a checksum: a runtime reads more than the graph file (ONNX
        external data), so an unlisted file there would be read unverified. ``engines/`` is exempt: TensorRT
        engines are built on the device itself, after the export (``sam3edge build-engines``)."""
        for f in sorted(folder.rglob("*")):
            rel = f.relative_to(self.path).as_posix()
            if "engines" in f.relative_to(folder).parts[:1]:
                continue
            if f.is_symlink():
                raise self._error(f"{rel} is a symbolic link beside the graphs; a bundle holds regular files only: "
                                  "copy it without links or re-export it")
            if f.is_file() and rel not in listed:
                raise self._error(f"{rel} lies beside the graphs but is not listed with a checksum in {MANIFEST}; "
                                  "a runtime could read it unverified: remove it or re-export the bundle")

    def _check_checksums(self) -> None:
        for rel, expected in self.manifest["files"].items():
            got = sha256_file(self.path / rel)
            if got != expected:
                raise self._error(f"{rel}: checksum mismatch (expected {expected[:12]}…, got {got[:12]}…): the "
                                  "bundle is corrupt or was edited; re-export it")

    def _resolve(self, rel, field: str) -> Path:
        """``rel`` (a manifest path) inside the bundle, or a BundleError: absolute, ``..``, or leaving it via links."""
        if not isinstance(rel, str) or not rel:
            raise self._error(f"{MANIFEST}: {field} has {rel!r}, expected a relative path inside the bundle")
        posix = PurePosixPath(rel)
        if posix.is_absolute() or re.match(r"^[A-Za-z]:", rel) or "\\" in rel:
            raise self._error(f"{MANIFEST}: {field} names the absolute path {rel!r}; a bundle only refers to its own "
                              "files by relative paths: the manifest was edited, re-export the bundle")
        if ".." in posix.parts:
            raise self._error(f"{MANIFEST}: {field} names {rel!r}, which contains '..' and could leave the bundle; "
                              "refusing it: re-export the bundle")
        path = (self.path / rel).resolve()
        if not path.is_relative_to(self.path):
            raise self._error(f"{rel} ({field}) resolves to {path}, outside the bundle (a symbolic link?); a bundle "
                              "must hold its files itself: copy them in (cp -L) or re-export it")
        return self.path / rel

    # ---- what it holds ----------------------------------------------------------------------------
    @property
    def target(self) -> str:
        return self.manifest["target"]

    @property
    def precision(self) -> str:
        return self.manifest["precision"]

    @property
    def input_size(self) -> int:
        """S: the graphs take uint8 RGB [1, S, S, 3]."""
        return int(self.manifest["input"]["size"])

    @property
    def concepts(self) -> list[str]:
        """The phrases of the bundle's concept cache (manifest order)."""
        return list(self.manifest["concepts"])

    @property
    def heads(self) -> str:
        """The student's head type ("sam3" or "fast"; bundles before fast heads existed are "sam3")."""
        return str(self.manifest["export_spec"].get("heads", "sam3"))

    @property
    def has_text_encoder(self) -> bool:
        return TEXT_GRAPH in self.manifest["graphs"]

    @property
    def has_exemplar_encoder(self) -> bool:
        """Whether the bundle takes exemplar boxes: an exemplar encoder graph, and a decoder whose ``text`` takes
        any number of prompt tokens (text + exemplar tokens)."""
        if EXEMPLAR_GRAPH not in self.manifest["graphs"]:
            return False
        text = next((t for t in self.graph("decoder")["inputs"] if t["name"] == "text"), None)
        return text is not None and text["shape"][1] == "tokens"

    @property
    def text_length(self) -> int:
        """L: text tokens per prompt the decoder takes (text [P, L, C], text_mask [P, L])."""
        return int(self.manifest["export_spec"]["text_length"])

    @property
    def device_profile(self) -> dict | None:
        """The device profile the bundle was exported for (``sam3edge export --profile``), or None."""
        profile = self.manifest.get("device_profile")
        return profile if isinstance(profile, dict) else None

    @property
    def size_bytes(self) -> int:
        """Bytes of every file the manifest lists (graphs, concept cache, tokenizer)."""
        return sum((self.path / rel).stat().st_size for rel in self.manifest["files"])

    def graph(self, name: str) -> dict:
        """The manifest entry of graph ``name``: file, inputs and outputs (name, dtype, shape each)."""
        graphs = self.manifest["graphs"]
        if name not in graphs:
            raise self._error(f"no graph {name!r}; it has {', '.join(graphs)}")
        return graphs[name]

    def graph_path(self, name: str) -> Path:
        """Path of graph ``name`` (``image_encoder``, ``decoder``, ``text_encoder``) inside the bundle."""
        return self._resolve(self.graph(name)["file"], f"graphs.{name}.file")

    def resolve(self, rel: str) -> Path:
        """A path relative to the bundle, checked to stay inside it (backends' side files, e.g. engines)."""
        return self._resolve(rel, "path")

    @cached_property
    def _concept_cache(self) -> ConceptCache:
        try:
            cache = ConceptCache.load(self.path)
        except (OSError, ValueError) as e:
            raise self._error(f"its concept cache cannot be read ({e}); re-export the bundle") from e
        if list(cache.phrases) != self.concepts:
            raise self._error(f"concepts.json lists {cache.phrases}, {MANIFEST} lists {self.concepts}; the bundle was "
                              "edited: re-export it")
        return cache

    def concept_cache(self) -> ConceptCache:
        """The bundle's concept cache (teacher text features of its concepts), read and checked once."""
        return self._concept_cache

    def tokenizer(self):
        """The bundle's CLIP tokenizer (``tokenizer.json``) as a :class:`~sam3edge.runtime.tokenizer.ClipTokenizer`."""
        from sam3edge.runtime.tokenizer import ClipTokenizer

        try:
            return ClipTokenizer.from_file(self._resolve(self.manifest["tokenizer"], "tokenizer"))
        except (OSError, ValueError) as e:
            raise self._error(f"{self.manifest['tokenizer']}: {e}") from e


def _read_manifest(root: Path) -> dict:
    path = root / MANIFEST
    if path.is_symlink():  # read only inside the bundle: a linked manifest could be any file on disk
        raise BundleError(f"bundle {root}: {MANIFEST} is a symbolic link; a bundle's files must be regular files "
                          "inside it: copy the bundle without links or re-export it")
    if not path.is_file():
        raise BundleError(f"bundle {root}: no {MANIFEST}; this is not a bundle written by `sam3edge export` (or "
                          "its copy is incomplete)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"bundle {root}: {MANIFEST} is not valid JSON ({e}); the bundle is corrupt: "
                          "re-export it") from e
    if not isinstance(manifest, dict):
        raise BundleError(f"bundle {root}: {MANIFEST} holds a {type(manifest).__name__}, expected a JSON object")
    if manifest.get("format") != FORMAT:
        raise BundleError(f"bundle {root}: {MANIFEST} has format {manifest.get('format')!r}, expected {FORMAT!r}; "
                          "this is not a sam3edge bundle")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        hint = ("upgrade sam3edge" if isinstance(version, int) and version > FORMAT_VERSION
                else "re-export it with this sam3edge")
        raise BundleError(f"bundle {root}: this bundle is format version {version!r}; this sam3edge reads "
                          f"{FORMAT_VERSION}: {hint}")
    return manifest
