"""ONNX Runtime backend: ``onnx`` bundles, and the ONNX graphs of ``tensorrt`` bundles.

device: ``"cpu"``, ``"cuda"`` / ``"cuda:N"`` (CUDAExecutionProvider) or ``"tensorrt"`` / ``"tensorrt:N"``
(TensorrtExecutionProvider, with CUDA and CPU behind it for the nodes it does not take). Default: the best
provider this onnxruntime has: TensorRT EP, then CUDA, then CPU for a ``tensorrt`` bundle; CUDA, then CPU
for an ``onnx`` bundle (its int8 graphs are uint8 QDQ, which TensorRT's parser refuses; the TensorRT
bundle's graphs are made for it).
``threads``: ``intra_op_num_threads`` (0: onnxruntime's default, one per core).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

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

PROVIDERS = {"tensorrt": "TensorrtExecutionProvider", "cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}
INSTALL_HINT = ("pip install 'sam3edge[cpu]' (onnxruntime) or 'sam3edge[gpu]' (onnxruntime-gpu: CUDA / TensorRT "
                "execution providers; on a Jetson the wheel from NVIDIA's Jetson Zoo); not both")


def _ort():
    return import_package("onnxruntime", "onnxruntime", "onnxruntime", INSTALL_HINT)


class OnnxRuntimeBackend(Backend):
    backend = "onnxruntime"
    targets = ("onnx", "tensorrt")
    runs = "onnx and tensorrt bundles"

    @classmethod
    def probe(cls, bundle) -> str:
        ort = _ort()
        return f"onnxruntime {ort.__version__} ({', '.join(ort.get_available_providers())})"

    concurrent_calls = True  # InferenceSession.run is thread-safe and returns fresh arrays per call

    def __init__(self, bundle, device: str | None = None, threads: int = 0):
        super().__init__(bundle, device, threads)
        ort = _ort()
        have = ort.get_available_providers()
        providers = self._providers(bundle, device, have)
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = int(threads)
        opts.log_severity_level = 3  # errors only: the TensorRT EP warns per unsupported node
        self._sessions = {}
        for name in bundle.manifest["graphs"]:
            self._sessions[name] = self.load_graph(
                name, lambda p: ort.InferenceSession(str(p), opts, providers=providers))
        self.device = self._sessions[DECODER_GRAPH].get_providers()[0]
        self._decoder_inputs = [t["name"] for t in bundle.graph(DECODER_GRAPH)["inputs"]]

    @property
    def executed_precision(self) -> str:
        """fp32 for a ``tensorrt`` fp16 bundle's fp32 graphs unless the TensorRT execution provider builds fp16 engines
        from them; the bundle's precision otherwise (int8 graphs hold their own Q/DQ)."""
        fp16_engines = self.device == PROVIDERS["tensorrt"]
        if self.bundle.target == "tensorrt" and self.bundle.precision == "fp16" and not fp16_engines:
            return "fp32"
        return self.bundle.precision

    @staticmethod
    def _providers(bundle, device: str | None, have: list[str]) -> list:
        if device is None:
            order = ("tensorrt", "cuda", "cpu") if bundle.target == "tensorrt" else ("cuda", "cpu")
            device = next(d for d in order if PROVIDERS[d] in have or d == "cpu")
        key = str(device).lower().split(":")[0]
        if key not in PROVIDERS:
            raise ValueError(f"onnxruntime device {device!r} is not one of {', '.join(PROVIDERS)}")
        if PROVIDERS[key] not in have:
            raise BackendUnavailable(f"onnxruntime device {device!r} needs {PROVIDERS[key]}, but this onnxruntime "
                                     f"has {', '.join(have)}; {INSTALL_HINT}, or pick device='cpu'")
        chain = list(PROVIDERS)[list(PROVIDERS).index(key):]  # TensorRT -> CUDA -> CPU for the nodes it leaves
        providers = [PROVIDERS[k] for k in chain if PROVIDERS[k] in have]
        index = str(device).partition(":")[2]
        if index and not index.isdigit():
            raise ValueError(f"onnxruntime device {device!r}: expected cpu, cuda, cuda:N, tensorrt or tensorrt:N")
        gpu = {"device_id": int(index)} if index else {}
        options = {"TensorrtExecutionProvider": gpu | (_tensorrt_ep_options(bundle) if key == "tensorrt" else {}),
                   "CUDAExecutionProvider": gpu}
        return [(p, options[p]) if options.get(p) else p for p in providers]

    def image(self, frame: np.ndarray):
        out = self._sessions[IMAGE_GRAPH].run(list(IMAGE_OUTPUTS), {"image": np.ascontiguousarray(frame)})
        return as_spec(IMAGE_OUTPUTS, out)

    def decoder(self, feat0, feat1, feat2, text, text_mask):
        values = (feat0, feat1, feat2, np.asarray(text, np.float32), np.asarray(text_mask, bool))
        out = self._sessions[DECODER_GRAPH].run(list(DECODER_OUTPUTS), dict(zip(self._decoder_inputs, values)))
        return as_spec(DECODER_OUTPUTS, out)

    def exemplars(self, features, boxes, box_labels):
        if EXEMPLAR_GRAPH not in self._sessions:
            return super().exemplars(features, boxes, box_labels)
        out = self._sessions[EXEMPLAR_GRAPH].run(list(EXEMPLAR_OUTPUTS), {
            "feat2": features[2], "boxes": np.asarray(boxes, np.float32),
            "box_labels": np.asarray(box_labels, np.int64)})
        return as_spec(EXEMPLAR_OUTPUTS, out)

    def text(self, input_ids, attention_mask):
        if TEXT_GRAPH not in self._sessions:
            return super().text(input_ids, attention_mask)
        out = self._sessions[TEXT_GRAPH].run(list(TEXT_OUTPUTS), {
            "input_ids": np.asarray(input_ids, np.int64), "attention_mask": np.asarray(attention_mask, np.int64)})
        return as_spec(TEXT_OUTPUTS, out)


def _tensorrt_ep_options(bundle) -> dict:
    """TensorRT EP settings: the bundle's precision, engines cached per bundle under ~/.cache/sam3edge (the bundle
    itself may be read-only, and its checksums cover what it holds)."""
    graphs = "".join(bundle.manifest["files"][g["file"]] for g in bundle.manifest["graphs"].values())
    cache = Path("~/.cache/sam3edge/ort-tensorrt").expanduser() / hashlib.sha256(graphs.encode()).hexdigest()[:16]
    cache.mkdir(parents=True, exist_ok=True)
    return {"trt_fp16_enable": bundle.precision in ("fp16", "int8"), "trt_int8_enable": bundle.precision == "int8",
            "trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache)}
