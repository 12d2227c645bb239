"""Core ML backend: a ``coreml`` bundle's ML Program packages, on macOS (Core ML prediction exists nowhere else).

device: the compute units, a ``coremltools.ComputeUnit`` name (``ALL``, ``CPU_ONLY``, ``CPU_AND_GPU``,
``CPU_AND_NE``); default: the device profile's ``runtime.compute_units``, else ``ALL``. The packages take
int32 where Core ML has no uint8 / bool / int64 (the bundle's manifest records it, as
``sam3edge.export.coreml.COREML_DTYPES``); this backend feeds and returns the export spec's dtypes.
``threads`` has no Core ML equivalent and is ignored.
"""

from __future__ import annotations

import platform
import sys

import numpy as np

from sam3edge.runtime.backends.base import (
    DECODER_OUTPUTS,
    EXEMPLAR_OUTPUTS,
    IMAGE_OUTPUTS,
    TEXT_OUTPUTS,
    Backend,
    BackendUnavailable,
    as_spec,
    import_package,
)
from sam3edge.runtime.names import DECODER_GRAPH, EXEMPLAR_GRAPH, IMAGE_GRAPH, TEXT_GRAPH

COMPUTE_UNITS = ("ALL", "CPU_ONLY", "CPU_AND_GPU", "CPU_AND_NE")


def _not_macos() -> str:
    return (f"Core ML runs on macOS and iOS only (this is {platform.system() or sys.platform}); run this bundle on a "
            "Mac, or export one for this host (`sam3edge export --target onnx` or `--target openvino`)")


class CoreMlBackend(Backend):
    backend = "coreml"
    targets = ("coreml",)
    runs = "coreml bundles (.mlpackage graphs)"

    @classmethod
    def probe(cls, bundle) -> str:
        if sys.platform != "darwin":
            raise BackendUnavailable(_not_macos())
        coremltools = import_package("coremltools", "coreml", "coremltools", "pip install coremltools")
        return f"coremltools {coremltools.__version__}"

    def __init__(self, bundle, device: str | None = None, threads: int = 0):
        super().__init__(bundle, device, threads)
        ok, why = self.available(bundle)
        if not ok:
            raise BackendUnavailable(why)
        import coremltools as ct

        runtime = (bundle.device_profile or {}).get("runtime") or {}
        units = str(device or runtime.get("compute_units") or "ALL").upper()
        if units not in COMPUTE_UNITS:
            raise ValueError(f"Core ML compute units {device!r} are not one of {', '.join(COMPUTE_UNITS)}")
        self.device = units
        self._models = {name: self.load_graph(name, lambda p: ct.models.MLModel(
            str(p), compute_units=getattr(ct.ComputeUnit, units))) for name in bundle.manifest["graphs"]}
        self._image_dtype = self.input_dtype(IMAGE_GRAPH, "image", "uint8")
        self._mask_dtype = self.input_dtype(DECODER_GRAPH, "text_mask", "bool")

    def image(self, frame: np.ndarray):
        out = self._models[IMAGE_GRAPH].predict({"image": np.ascontiguousarray(frame).astype(self._image_dtype)})
        return as_spec(IMAGE_OUTPUTS, [out[n] for n in IMAGE_OUTPUTS])

    def decoder(self, feat0, feat1, feat2, text, text_mask):
        feeds = {"feat0": feat0, "feat1": feat1, "feat2": feat2, "text": np.asarray(text, np.float32),
                 "text_mask": np.asarray(text_mask).astype(self._mask_dtype)}
        out = self._models[DECODER_GRAPH].predict(feeds)
        return as_spec(DECODER_OUTPUTS, [out[n] for n in DECODER_OUTPUTS])

    def exemplars(self, features, boxes, box_labels):
        if EXEMPLAR_GRAPH not in self._models:
            return super().exemplars(features, boxes, box_labels)
        out = self._models[EXEMPLAR_GRAPH].predict({
            "feat2": np.asarray(features[2], np.float32), "boxes": np.asarray(boxes, np.float32),
            "box_labels": np.asarray(box_labels).astype(self.input_dtype(EXEMPLAR_GRAPH, "box_labels", "int64"))})
        return as_spec(EXEMPLAR_OUTPUTS, [out[n] for n in EXEMPLAR_OUTPUTS])

    def text(self, input_ids, attention_mask):
        if TEXT_GRAPH not in self._models:
            return super().text(input_ids, attention_mask)
        dtypes = {n: self.input_dtype(TEXT_GRAPH, n, "int64") for n in ("input_ids", "attention_mask")}
        out = self._models[TEXT_GRAPH].predict({"input_ids": np.asarray(input_ids).astype(dtypes["input_ids"]),
                                                    "attention_mask": np.asarray(attention_mask).astype(
                                                        dtypes["attention_mask"])})
        return as_spec(TEXT_OUTPUTS, [out[n] for n in TEXT_OUTPUTS])
