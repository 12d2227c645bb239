"""The torch-free runtime: ``Segmenter.load(bundle)`` -> ``set_concepts([...])`` -> ``segment(image)`` -> ``Instances``.

Imports nothing from the torch side; backends import their package (onnxruntime, openvino, tensorrt,
coremltools) only when used. Names are resolved lazily so ``import sam3edge.runtime.concepts`` stays light.
"""

from __future__ import annotations

_EXPORTS = {"Segmenter": "sam3edge.runtime.segmenter", "Bundle": "sam3edge.runtime.bundle",
            "BundleError": "sam3edge.runtime.bundle", "Instances": "sam3edge.runtime.instances",
            "open_source": "sam3edge.runtime.sources", "run_stream": "sam3edge.runtime.stream"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'sam3edge.runtime' has no attribute {name!r}")
