"""OpenVINO backend: ``openvino`` bundles (IR ``.xml`` + ``.bin``) on CPU, GPU or NPU.

device: an OpenVINO device name (``CPU``, ``GPU``, ``GPU.1``, ``NPU``); default: the bundle's device profile's
``runtime.device`` where this host has it, else CPU. Compiled with the ``LATENCY`` performance hint (or the
profile's ``backend_options.performance_hint``) and, where the profile asks for one, a model cache in this
host's cache directory (:func:`model_cache_dir`; never the path the bundle names).
On CPU an fp32 bundle computes in f32 (OpenVINO would pick bf16 on CPUs that have it; the bundle was
verified in f32). The NPU compiles static shapes only: the decoder (and text encoder) are reshaped to the
number of concepts and recompiled when that number changes (``prompts_changed``).
Threads: each thread runs its own infer request per compiled graph (``CompiledModel.__call__`` shares one,
so concurrent calls overwrote each other's inputs and returned another image's results); outputs are copies.
Static-shape devices recompile when the prompt count changes, so there calls run one at a time.
Every graph compiles on this process's one ``ov.Core`` (:func:`shared_core`).
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from sam3edge.runtime.backends.base import (
    DECODER_OUTPUTS,
    EXEMPLAR_OUTPUTS,
    IMAGE_OUTPUTS,
    TEXT_OUTPUTS,
    Backend,
    BackendUnavailable,
    BundleError,
    as_spec,
    import_package,
)
from sam3edge.runtime.names import DECODER_GRAPH, EXEMPLAR_GRAPH, IMAGE_GRAPH, TEXT_GRAPH

INSTALL_HINT = "pip install openvino (the NPU and GPU plugins also need Intel's drivers for that device)"
STATIC_DEVICES = ("NPU",)  # plugins that compile static shapes only


def _openvino():
    return import_package("openvino", "openvino", "OpenVINO", INSTALL_HINT)


_core = None
_core_lock = threading.Lock()


def shared_core():
    """This process's one OpenVINO ``Core``, created on first use and never released.

    OpenVINO advises one Core per application; here it is also a matter of not crashing. Each Core's CPU
    plugin installs an alternate signal stack on the thread that first compiles on it and, when released,
    puts back the stack it found there. Cores released out of creation order (load bundle A, load B,
    drop A, drop B) leave the thread pointing at A's freed stack, and the next signal (a Ctrl-C, a SIGTERM)
    kills the process with SIGSEGV before any handler runs. One Core that is never released cannot do that.
    """
    global _core
    with _core_lock:
        if _core is None:
            _core = _openvino().Core()
        return _core


class OpenVinoBackend(Backend):
    backend = "openvino"
    targets = ("openvino",)
    runs = "openvino bundles (IR graphs)"

    @classmethod
    def probe(cls, bundle) -> str:
        ov = _openvino()
        return f"OpenVINO {ov.__version__} ({', '.join(shared_core().available_devices)})"

    def __init__(self, bundle, device: str | None = None, threads: int = 0):
        super().__init__(bundle, device, threads)
        self._core = shared_core()
        have = self._core.available_devices
        profile = bundle.device_profile or {}
        options = profile.get("backend_options") or {}
        if device is None:
            wanted = (profile.get("runtime") or {}).get("device")
            device = wanted if wanted and _has(have, wanted) else "CPU"
        device = str(device).upper()
        if not _has(have, device):
            raise BackendUnavailable(f"OpenVINO device {device!r} is not on this host; it has {', '.join(have)}")
        self.device = device
        self._config = {"PERFORMANCE_HINT": str(options.get("performance_hint", "LATENCY"))}
        if device.startswith("CPU"):
            if threads:
                self._config["INFERENCE_NUM_THREADS"] = int(threads)
            if bundle.precision == "fp32":
                self._config["INFERENCE_PRECISION_HINT"] = "f32"
        if options.get("cache_dir"):  # the bundle may ask for a compile cache; where it is, the host decides
            self._config["CACHE_DIR"] = str(model_cache_dir())
        kind = device.split(".")[0]
        self._static = kind in STATIC_DEVICES or (bool(options.get("static_prompts")) and kind != "CPU")
        self.concurrent_calls = not self._static
        self._local = threading.local()  # this thread's infer requests: {id(compiled): (compiled, request)}
        self._models = {name: self.load_graph(name, lambda p: self._core.read_model(str(p)))
                        for name in bundle.manifest["graphs"]}
        self._compiled = {IMAGE_GRAPH: self._compile(IMAGE_GRAPH)}
        self._prompts, self._text_static = None, {}
        if not self._static:
            for name in (DECODER_GRAPH, TEXT_GRAPH, EXEMPLAR_GRAPH):
                if name in self._models:
                    self._compiled[name] = self._compile(name)

    def _compile(self, name: str, prompts: int | None = None):
        def compile_(path: Path):
            model = self._models[name]
            if prompts is not None:
                model = model.clone()
                # a decoder's token axis (dynamic in bundles with an exemplar encoder) is fixed to the text tokens:
                # static devices take no exemplar boxes
                model.reshape({i.get_any_name(): [prompts, *(d.get_length() if d.is_static else self.bundle.text_length
                                                             for d in list(i.get_partial_shape())[1:])]
                               for i in model.inputs if i.get_partial_shape()[0].is_dynamic})
            return self._core.compile_model(model, self.device, self._config)

        return self.load_graph(name, compile_)

    def prompts_changed(self, n: int) -> None:
        if not self._static or n == self._prompts:
            return
        self._compiled[DECODER_GRAPH] = self._compile(DECODER_GRAPH, n)  # a failure leaves the previous one in place
        self._prompts = n

    def _run(self, name: str, feeds: dict, names: tuple[str, ...]):
        compiled = self._compiled.get(name)
        if compiled is None:  # static shapes, no prompt count yet (the Segmenter always sets one first)
            raise RuntimeError(f"OpenVINO {self.device} compiles static shapes: call prompts_changed(n) first")
        requests = self._local.__dict__.setdefault("requests", {})
        compiled_, request = requests.get(id(compiled), (None, None))
        if compiled_ is not compiled:  # first call in this thread, or the graph was recompiled
            request = compiled.create_infer_request()
            requests[id(compiled)] = (compiled, request)
        result = request.infer(feeds, share_outputs=False)  # copies: the request's buffers serve its next call
        return as_spec(names, [result[compiled.output(i)] for i in range(len(names))])

    def image(self, frame: np.ndarray):
        return self._run(IMAGE_GRAPH, {"image": np.ascontiguousarray(frame)}, IMAGE_OUTPUTS)

    def decoder(self, feat0, feat1, feat2, text, text_mask):
        feeds = {"feat0": feat0, "feat1": feat1, "feat2": feat2, "text": np.asarray(text, np.float32),
                 "text_mask": np.asarray(text_mask, bool)}
        return self._run(DECODER_GRAPH, feeds, DECODER_OUTPUTS)

    def exemplars(self, features, boxes, box_labels):
        if EXEMPLAR_GRAPH not in self._models:
            return super().exemplars(features, boxes, box_labels)
        if self._static:
            raise BundleError(f"OpenVINO {self.device} compiles static shapes only; exemplar boxes (any number per "
                              "concept) run on CPU or GPU: pass device='CPU'")
        return self._run(EXEMPLAR_GRAPH, {"feat2": features[2], "boxes": np.asarray(boxes, np.float32),
                                          "box_labels": np.asarray(box_labels, np.int64)}, EXEMPLAR_OUTPUTS)

    def text(self, input_ids, attention_mask):
        if TEXT_GRAPH not in self._models:
            return super().text(input_ids, attention_mask)
        if self._static:  # one compiled text encoder per prompt count (usually just one: the new phrases)
            n = len(input_ids)
            if n not in self._text_static:
                self._text_static[n] = self._compile(TEXT_GRAPH, n)
            self._compiled[TEXT_GRAPH] = self._text_static[n]
        return self._run(TEXT_GRAPH, {"input_ids": np.asarray(input_ids, np.int64),
                                          "attention_mask": np.asarray(attention_mask, np.int64)}, TEXT_OUTPUTS)


def model_cache_dir() -> Path:
    """Where OpenVINO keeps compiled models for bundles that ask for a cache: ``$SAM3EDGE_CACHE_DIR/openvino``
    (default ``~/.cache/sam3edge/openvino``). Never a path a bundle names: a bundle is untrusted input, and
    its manifest could point the runtime's writes anywhere on disk."""
    import os

    return Path(os.environ.get("SAM3EDGE_CACHE_DIR") or Path.home() / ".cache" / "sam3edge").expanduser() / "openvino"


def _has(available: list[str], device: str) -> bool:
    """Whether ``device`` (``GPU`` or ``GPU.0``) is among OpenVINO's ``available_devices``."""
    device = device.upper()
    return any(d == device or d.split(".")[0] == device for d in available)
