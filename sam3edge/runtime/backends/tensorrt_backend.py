"""TensorRT backend: a ``tensorrt`` bundle's engines, through the TensorRT 10 Python API.

Engines are specific to a GPU and a TensorRT version, so a bundle carries ONNX graphs and the engines
are built on the device, beside the graphs: ``graphs/engines/<key>/<stem>.<precision>.engine`` with the key
``trt<version>-<gpu name>-sm<cc>`` (the layout of ``sam3edge.export.tensorrt``, which builds them; building
stays on the export side, so a missing engine is an error that says to run ``sam3edge build-engines BUNDLE``
on the device, and ``backend="auto"`` falls back to onnxruntime meanwhile). Buffers are torch CUDA tensors,
imported lazily (torch ships with JetPack; it saves a cuda-python dependency), and the image features stay
on the GPU between the two engines. More prompts than the decoder's optimisation profile allows run in chunks.

device: a CUDA device index (``0``, ``"cuda:1"``); default 0.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
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
from sam3edge.runtime.bundle import BundleError
from sam3edge.runtime.names import DECODER_GRAPH, EXEMPLAR_GRAPH, IMAGE_GRAPH, TEXT_GRAPH

INSTALL_HINT = ("TensorRT runs where it is installed: on a Jetson it comes with JetPack (python3-libnvinfer), on "
                "x86 with an NVIDIA GPU `pip install tensorrt` (CUDA 12); the runtime's CUDA buffers need torch with "
                "CUDA")
CONFIG = "tensorrt.json"


def _tensorrt():
    return import_package("tensorrt", "tensorrt", "TensorRT", INSTALL_HINT)


def _cuda_devices() -> list[tuple[str, int, int]]:
    """(name, major, minor) of every CUDA device, read from the driver (libcuda) without torch; [] if none."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1" if os.name != "nt" else "nvcuda.dll")
    except OSError:
        return []
    count, devices = ctypes.c_int(0), []
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return []
    for i in range(count.value):
        dev, name, major, minor = ctypes.c_int(0), ctypes.create_string_buffer(256), ctypes.c_int(0), ctypes.c_int(0)
        cuda.cuDeviceGet(ctypes.byref(dev), i)
        cuda.cuDeviceGetName(name, 256, dev)
        cuda.cuDeviceGetAttribute(ctypes.byref(major), 75, dev)  # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR
        cuda.cuDeviceGetAttribute(ctypes.byref(minor), 76, dev)  # ..._MINOR
        devices.append((name.value.decode(errors="replace"), major.value, minor.value))
    return devices


def engine_key(trt_version: str, device: int = 0) -> str:
    """``trt<version>-<gpu name>-sm<cc>``, as ``sam3edge.export.tensorrt.engine_cache_key`` names engine folders."""
    devices = _cuda_devices()
    if device >= len(devices):
        raise BackendUnavailable(f"no CUDA device {device} (found {len(devices)}); TensorRT engines need an NVIDIA GPU")
    name, major, minor = devices[device]
    return f"trt{trt_version}-{re.sub(r'[^a-z0-9]+', '-', name.lower()).strip('-')}-sm{major}{minor}"


def _device_index(device) -> int:
    if device is None:
        return 0
    text = str(device).lower().removeprefix("cuda").lstrip(":") or "0"
    if not text.isdigit():
        raise ValueError(f"tensorrt device {device!r}: expected a CUDA device index such as 0 or 'cuda:0'")
    return int(text)


def engine_paths(bundle, key: str) -> dict[str, Path]:
    """Graph name -> where its engine for ``key`` lives in ``bundle`` (checked to stay inside the bundle)."""
    precision = read_config(bundle).get("precision", bundle.precision)
    out = {}
    for name, g in bundle.manifest["graphs"].items():
        rel = Path(g["file"])
        out[name] = bundle.resolve((rel.parent / "engines" / key / f"{rel.stem}.{precision}.engine").as_posix())
    return out


def read_config(bundle) -> dict:
    """The bundle's ``graphs/tensorrt.json`` (build settings), {} where it has none."""
    rel = (Path(bundle.graph(DECODER_GRAPH)["file"]).parent / CONFIG).as_posix()
    path = bundle.resolve(rel)
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"bundle {bundle.path}: {rel} is not valid JSON ({e}); re-export the bundle") from e


def _missing_engines(bundle, device: int) -> tuple[dict[str, Path], list[str]]:
    key = engine_key(_tensorrt().__version__, device)
    paths = engine_paths(bundle, key)
    return paths, [str(p.relative_to(bundle.path)) for p in paths.values() if not p.is_file()]


class TensorRtBackend(Backend):
    backend = "tensorrt"
    targets = ("tensorrt",)
    runs = "tensorrt bundles"

    @classmethod
    def probe(cls, bundle) -> str:
        trt = _tensorrt()
        _, missing = _missing_engines(bundle, 0)
        if missing:
            raise BackendUnavailable(f"no engine for this GPU and TensorRT {trt.__version__} ({', '.join(missing)}): "
                                     f"run `sam3edge build-engines {bundle.path}` on this device")
        return f"TensorRT {trt.__version__} engines"

    def __init__(self, bundle, device=None, threads: int = 0):
        super().__init__(bundle, device, threads)
        index = _device_index(device)
        trt = _tensorrt()
        paths, missing = _missing_engines(bundle, index)
        if missing:
            raise BackendUnavailable(f"bundle {bundle.path} has no TensorRT engine for this GPU and TensorRT "
                                     f"{trt.__version__}: missing {', '.join(missing)}. Build them once on this "
                                     f"device with `sam3edge build-engines {bundle.path}` (or use "
                                     "backend='onnxruntime')")
        try:
            import torch
        except ImportError as e:
            raise BackendUnavailable(f"the tensorrt backend keeps its buffers in torch CUDA tensors: install torch "
                                     f"with CUDA ({INSTALL_HINT})") from e
        if not torch.cuda.is_available():
            raise BackendUnavailable("torch sees no CUDA device: install a CUDA build of torch (JetPack's on a Jetson)")
        self._torch, self._trt = torch, trt
        self._dev = torch.device("cuda", index)
        self.device = f"cuda:{index}"
        self._dtype = {getattr(trt, n): getattr(torch, n) for n in (
            "float32", "float16", "bfloat16", "int32", "int64", "int8", "uint8", "bool") if hasattr(trt, n)}
        if read_config(bundle).get("plugins"):  # engines with the fused-op plugins need them registered to load
            from sam3edge.ops.tensorrt_plugins import register_plugins

            try:
                register_plugins()
            except RuntimeError as e:
                raise BackendUnavailable(f"bundle {bundle.path} was exported with fused ops: {e}") from e
        self._log = capturing_logger(trt)
        runtime = trt.Runtime(self._log)
        self._engines = {}
        for name, path in paths.items():
            engine = self.load_graph(name, lambda p: _deserialize(runtime, p, self._log), path)
            self._engines[name] = (engine, engine.create_execution_context())
        self._stream = torch.cuda.Stream(self._dev)
        self._max_prompts = int(self._engines[DECODER_GRAPH][0].get_tensor_profile_shape("text", 0)[2][0])

    @property
    def name(self) -> str:
        return f"tensorrt:{self.device}"

    def _execute(self, name: str, feeds: dict) -> dict:
        """Run one engine on the stream; ``feeds`` (torch tensors) are cast to the engine's dtypes."""
        torch, trt = self._torch, self._trt
        engine, context = self._engines[name]
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        for t in (t for t in names if engine.get_tensor_mode(t) == trt.TensorIOMode.INPUT):
            x = feeds[t] = feeds[t].to(self._dev, self._dtype[engine.get_tensor_dtype(t)]).contiguous()
            context.set_input_shape(t, tuple(x.shape))
            context.set_tensor_address(t, x.data_ptr())
        outputs = {}
        for t in (t for t in names if engine.get_tensor_mode(t) == trt.TensorIOMode.OUTPUT):
            outputs[t] = torch.empty(tuple(context.get_tensor_shape(t)), device=self._dev,
                                     dtype=self._dtype[engine.get_tensor_dtype(t)])
            context.set_tensor_address(t, outputs[t].data_ptr())
        if not context.execute_async_v3(self._stream.cuda_stream):
            raise RuntimeError(f"TensorRT failed to run the {name} engine:\n  " + "\n  ".join(self._log.lines[-10:]))
        return outputs

    def features(self, frame: np.ndarray):
        torch = self._torch
        # tensors made inside the stream context belong to the stream: freed ones are reused only by later work on it
        with torch.no_grad(), torch.cuda.stream(self._stream):
            levels = self._execute(IMAGE_GRAPH, {"image": torch.from_numpy(np.ascontiguousarray(frame))})
        self._stream.synchronize()
        return tuple(levels[n] for n in IMAGE_OUTPUTS)

    def image(self, frame: np.ndarray):
        return as_spec(IMAGE_OUTPUTS, [_numpy(f) for f in self.features(frame)])

    def decode(self, features, text, text_mask):
        torch = self._torch
        features = [f if torch.is_tensor(f) else torch.from_numpy(np.ascontiguousarray(f)) for f in features]
        chunks = []
        with torch.no_grad(), torch.cuda.stream(self._stream):
            for s in range(0, len(text), self._max_prompts):
                feeds = dict(zip(IMAGE_OUTPUTS, features))
                feeds["text"] = torch.from_numpy(np.ascontiguousarray(text[s:s + self._max_prompts], np.float32))
                feeds["text_mask"] = torch.from_numpy(np.ascontiguousarray(text_mask[s:s + self._max_prompts], bool))
                chunks.append(self._execute(DECODER_GRAPH, feeds))
        self._stream.synchronize()
        return as_spec(DECODER_OUTPUTS, [_numpy(torch.cat([c[n] for c in chunks])) for n in DECODER_OUTPUTS])

    def decoder(self, feat0, feat1, feat2, text, text_mask):
        return self.decode((feat0, feat1, feat2), text, text_mask)

    def exemplars(self, features, boxes, box_labels):
        if EXEMPLAR_GRAPH not in self._engines:
            return super().exemplars(features, boxes, box_labels)
        torch = self._torch
        feat2 = features[2] if torch.is_tensor(features[2]) else torch.from_numpy(np.ascontiguousarray(features[2]))
        boxes, box_labels = np.asarray(boxes, np.float32), np.asarray(box_labels, np.int64)
        with torch.no_grad(), torch.cuda.stream(self._stream):
            chunks = [self._execute(EXEMPLAR_GRAPH, {
                "feat2": feat2, "boxes": torch.from_numpy(np.ascontiguousarray(boxes[s:s + self._max_prompts])),
                "box_labels": torch.from_numpy(np.ascontiguousarray(box_labels[s:s + self._max_prompts]))})
                for s in range(0, len(boxes), self._max_prompts)]
        self._stream.synchronize()
        return as_spec(EXEMPLAR_OUTPUTS, [_numpy(torch.cat([c[n] for c in chunks])) for n in EXEMPLAR_OUTPUTS])

    def text(self, input_ids, attention_mask):
        if TEXT_GRAPH not in self._engines:
            return super().text(input_ids, attention_mask)
        torch = self._torch
        with torch.no_grad(), torch.cuda.stream(self._stream):
            out = self._execute(TEXT_GRAPH, {"input_ids": torch.from_numpy(np.asarray(input_ids, np.int64)),
                                                 "attention_mask": torch.from_numpy(np.asarray(attention_mask,
                                                                                               np.int64))})
        self._stream.synchronize()
        return as_spec(TEXT_OUTPUTS, [_numpy(out[n]) for n in TEXT_OUTPUTS])


def _numpy(t) -> np.ndarray:
    """A CUDA tensor on the host as numpy (bf16 / fp16 as float32: as_spec casts to the spec's dtypes)."""
    return (t.float() if t.is_floating_point() else t).cpu().numpy()


def _deserialize(runtime, path: Path, log):
    engine = runtime.deserialize_cuda_engine(path.read_bytes())
    if engine is None:
        raise RuntimeError("TensorRT could not deserialize it (built by another TensorRT version or for another "
                           "GPU? rebuild with `sam3edge build-engines`):\n  " + "\n  ".join(log.lines[-10:]))
    return engine


def capturing_logger(trt):
    class Log(trt.ILogger):
        """Keeps errors and warnings, so a failed build or load can say why (the export side builds with it too)."""

        def __init__(self):
            trt.ILogger.__init__(self)
            self.lines = []

        def log(self, severity, msg):
            if severity in keep:
                self.lines.append(f"[{getattr(severity, 'name', severity)}] {msg}")

    keep = {trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR, trt.ILogger.Severity.WARNING}
    return Log()
