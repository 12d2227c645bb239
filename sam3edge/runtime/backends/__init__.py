"""Runtime backends, one module each: the registry, and how ``backend="auto"`` picks one for a bundle and host.

Every backend returns the same numpy results (:mod:`sam3edge.runtime.backends.base`). Adding one is a module
with a :class:`~sam3edge.runtime.backends.base.Backend` subclass and one entry in :data:`BACKENDS`.
"""

from __future__ import annotations

import importlib
import os

from sam3edge.runtime.backends.base import Backend, BackendUnavailable

# name -> (module, class); modules import their package (onnxruntime, openvino ...) only when a backend is made
BACKENDS = {
    "onnxruntime": ("onnxruntime_backend", "OnnxRuntimeBackend"),
    "openvino": ("openvino_backend", "OpenVinoBackend"),
    "tensorrt": ("tensorrt_backend", "TensorRtBackend"),
    "coreml": ("coreml_backend", "CoreMlBackend"),
}
BACKEND_NAMES = ("auto", *BACKENDS)

__all__ = ["BACKENDS", "BACKEND_NAMES", "Backend", "BackendUnavailable", "backend_class", "choose_backend",
           "create_backend"]


def backend_class(name: str) -> type[Backend]:
    """The Backend subclass registered as ``name`` (ValueError listing the names for an unknown one)."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; backends: {', '.join(BACKEND_NAMES)}")
    module, cls = BACKENDS[name]
    return getattr(importlib.import_module(f"sam3edge.runtime.backends.{module}"), cls)


def choose_backend(bundle) -> str:
    """The backend ``auto`` runs ``bundle`` with on this host: its target's own runtime, except that a
    TensorRT bundle runs on onnxruntime (TensorRT EP / CUDA / CPU) where TensorRT or its engines are missing."""
    if bundle.target == "tensorrt":
        return "tensorrt" if backend_class("tensorrt").available(bundle)[0] else "onnxruntime"
    return {"onnx": "onnxruntime", "openvino": "openvino", "coreml": "coreml"}[bundle.target]


def create_backend(bundle, name: str = "auto", device: str | None = None, threads: int = 0) -> Backend:
    """``bundle``'s graphs loaded for backend ``name`` (or the one ``auto`` picks).

    Raises ValueError for an unknown name or a backend that does not run the bundle's target,
    BackendUnavailable where this host cannot run it (the message says why and what to do), and
    BundleError for a graph the backend cannot load.
    """
    if name not in BACKEND_NAMES:
        raise ValueError(f"unknown backend {name!r}; backends: {', '.join(BACKEND_NAMES)}")
    if threads is None or isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
        raise ValueError(f"threads must be an int >= 0 (0: the backend's default), got {threads!r}")
    most = max(64, 8 * (os.cpu_count() or 1))  # far more would only hang session creation
    if threads > most:
        raise ValueError(f"threads={threads} is more than this host can use (it has {os.cpu_count()} CPUs; at most "
                         f"{most} accepted); pass 0 for the backend's default")
    chosen = choose_backend(bundle) if name == "auto" else name
    cls = backend_class(chosen)
    if bundle.target not in cls.targets:
        runs = ", ".join(n for n in BACKENDS if bundle.target in backend_class(n).targets)
        raise ValueError(f"backend {chosen!r} cannot run bundle {bundle.path}: it is a {bundle.target} bundle; run "
                         f"it with backend {runs or 'none of this sam3edge'} (or 'auto')")
    ok, why = cls.available(bundle)
    if not ok and chosen != "tensorrt":  # tensorrt's own error says more (which engines, which command)
        raise BackendUnavailable(f"backend {chosen!r} cannot run here: {why}")
    return cls(bundle, device=device, threads=threads)
