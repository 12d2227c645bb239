"""What every runtime backend provides, so the :class:`~sam3edge.runtime.segmenter.Segmenter` never knows which ran.

A backend runs a bundle's graphs (see ``sam3edge/export/graphs.py`` for their contract) and returns
numpy arrays of exactly the export spec's dtypes, whatever its format holds (Core ML's int32, an
engine's float16 ...):

* ``image(frame uint8 [1, S, S, 3]) -> (feat0, feat1, feat2)`` float32 [1, C, S/4 ...];
* ``decoder(feat0, feat1, feat2, text float32 [P, L, C], text_mask bool [P, L])`` ->
  ``(scores float32 [P, K], boxes float32 [P, K, 4], presence float32 [P], masks float32 [P, K, S/4, S/4],
  indices int64 [P, K])``;
* ``text(input_ids int64 [P, 32], attention_mask int64 [P, 32]) -> (text float32 [P, 32, C], text_mask bool
  [P, 32])`` where the bundle has a text encoder;
* ``exemplars(features, boxes float32 [P, K, 4], box_labels int64 [P, K]) -> (tokens float32 [P, K + 1, C],
  tokens_mask bool [P, K + 1])`` where the bundle has an exemplar encoder (its decoder then takes L + K + 1 tokens).

``features`` / ``decode`` are the same two steps with the features in the backend's own form (numpy here;
GPU tensors for TensorRT, so they never leave the device); the Segmenter uses those. ``prompts_changed(n)``
is called before a new prompt count is used (static-shape devices recompile there).
Threads: a backend whose ``concurrent_calls`` is True returns every call its own arrays when called from
several threads; the others are called one at a time by the Segmenter.
A backend's package (onnxruntime, openvino, tensorrt, coremltools) is imported inside its methods only.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from sam3edge.runtime.bundle import Bundle, BundleError

IMAGE_OUTPUTS = ("feat0", "feat1", "feat2")  # as sam3edge.export.graphs names them
DECODER_OUTPUTS = ("scores", "boxes", "presence", "masks", "indices")
TEXT_OUTPUTS = ("text", "text_mask")
EXEMPLAR_OUTPUTS = ("tokens", "tokens_mask")
_DTYPES = {"scores": np.float32, "boxes": np.float32, "presence": np.float32, "masks": np.float32,
           "indices": np.int64, "text": np.float32, "text_mask": bool, "tokens": np.float32, "tokens_mask": bool}


class BackendUnavailable(RuntimeError):
    """This host cannot run the backend (package missing, wrong OS, no such device); the message says what to do."""


def import_package(module: str, backend: str, package: str, hint: str):
    """The backend's package ``module``, or :class:`BackendUnavailable` saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise BackendUnavailable(f"the {backend} backend needs {package}: {hint}") from e


class Backend:
    """One bundle's graphs loaded for one backend. Subclasses set ``targets`` / ``runs``, implement ``probe`` and
    the three graphs."""

    backend: str = ""  # registry name: onnxruntime, openvino, tensorrt, coreml
    targets: tuple[str, ...] = ()  # the bundle targets whose graphs this backend runs
    runs: str = ""  # those bundles in words, for the refusal of another target's bundle
    # Whether image / decoder / text may run from several threads at once, each call getting its own results.
    # False: the Segmenter runs one call at a time (a shared execution context would mix calls' outputs).
    concurrent_calls: bool = False

    def __init__(self, bundle: Bundle, device: str | None = None, threads: int = 0):
        self.bundle, self.threads = bundle, int(threads)
        self.device = device

    @property
    def name(self) -> str:
        """``backend:device``, e.g. ``onnxruntime:CPUExecutionProvider``, ``openvino:CPU``."""
        return f"{self.backend}:{self.device}"

    @property
    def executed_precision(self) -> str:
        """The precision this backend's arithmetic runs at, which is not always the bundle's: a ``tensorrt`` fp16
        bundle holds fp32 graphs (TensorRT picks fp16 kernels when it builds engines), so anything else runs them
        in fp32. Benchmarks file results under this, not under the bundle's word."""
        return self.bundle.precision

    @classmethod
    def available(cls, bundle: Bundle) -> tuple[bool, str]:
        """(whether this host can run ``bundle`` with this backend, why not / what it would use)."""
        if bundle.target not in cls.targets:
            return False, f"{cls.backend} runs {cls.runs}, not {bundle.target} ones"
        try:
            return True, cls.probe(bundle)
        except BackendUnavailable as e:
            return False, str(e)

    @classmethod
    def probe(cls, bundle: Bundle) -> str:
        """What this host would run ``bundle`` (one of ``targets``) with; :class:`BackendUnavailable` if it cannot."""
        raise NotImplementedError

    # ---- the graphs -------------------------------------------------------------------------------
    def image(self, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        raise NotImplementedError

    def decoder(self, feat0, feat1, feat2, text: np.ndarray, text_mask: np.ndarray) -> tuple:
        raise NotImplementedError

    def text(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise BundleError(f"bundle {self.bundle.path} has no text encoder graph: it segments only its concepts "
                          f"({', '.join(self.bundle.concepts)})")

    def exemplars(self, features, boxes: np.ndarray, box_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Prompt tokens of exemplar boxes on the frame of ``features`` (see the module docstring)."""
        raise BundleError(f"bundle {self.bundle.path} ({self.bundle.target}) has no exemplar encoder graph, so it "
                          "takes no exemplar boxes; export it again with this version of sam3edge (every target "
                          "carries the exemplar encoder)")

    def features(self, frame: np.ndarray):
        """The image features in this backend's own form (what ``decode`` takes)."""
        return self.image(frame)

    def decode(self, features, text: np.ndarray, text_mask: np.ndarray) -> tuple:
        return self.decoder(*features, text, text_mask)

    def prompts_changed(self, n: int) -> None:
        """``n`` prompts will be decoded from now on (and text-encoded, where the bundle has a text encoder)."""

    # ---- helpers ----------------------------------------------------------------------------------
    def load_graph(self, name: str, load: Callable[[Path], object], path: Path | None = None):
        """``load(path of graph name)``, with any failure reported as a BundleError naming the file."""
        path = path or self.bundle.graph_path(name)
        try:
            return load(path)
        except Exception as e:  # each package raises its own types: the user needs the file and the reason
            rel = path.relative_to(self.bundle.path) if path.is_relative_to(self.bundle.path) else path
            raise BundleError(f"bundle {self.bundle.path}: {rel} ({name} graph) cannot be loaded by {self.backend} "
                              f"({type(e).__name__}: {str(e).strip()[:500]}); the file is damaged or was written for "
                              "another version: re-export the bundle") from e

    def input_dtype(self, graph: str, tensor: str, default: str) -> np.dtype:
        """The dtype the bundle's manifest says graph input ``tensor`` takes (Core ML: int32 for uint8 / bool)."""
        for t in self.bundle.graph(graph)["inputs"]:
            if t["name"] == tensor:
                return np.dtype(t.get("dtype", default))
        return np.dtype(default)


def as_spec(names: tuple[str, ...], arrays) -> tuple[np.ndarray, ...]:
    """Graph outputs as numpy arrays of the export spec's dtypes (float32 / int64 / bool)."""
    out = []
    for name, a in zip(names, arrays):
        a = np.asarray(a)
        dtype = _DTYPES.get(name, np.float32)
        out.append(a != 0 if dtype is bool and a.dtype != bool else a.astype(dtype, copy=False))
    return tuple(out)
