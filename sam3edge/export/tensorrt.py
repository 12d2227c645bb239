"""TensorRT target: the ONNX graphs a TensorRT bundle carries, checked for TensorRT, and engines built from them.

Engines are specific to a GPU and a TensorRT version, so a bundle carries ONNX graphs and the engines
are built where they run (at export time when ``tensorrt`` imports, else on the device), cached next
to the graphs under :func:`engine_cache_key`:

* fp16 engines are built from the fp32 graph: TensorRT picks fp16 kernels itself (``BuilderFlag.FP16``).
* int8 engines are built from a QDQ graph (explicit quantization; TensorRT 10 deprecates implicit
  calibrators). TensorRT's parser takes only signed int8 Q/DQ with zero points of 0, so the graph
  comes from ``onnx.to_int8(symmetric=True)`` (symmetric int8 activations), not the ONNX target's uint8
  QDQ graph, which :func:`~sam3edge.export.tensorrt_check.check_onnx_for_tensorrt` reports as a
  problem.

:func:`export_tensorrt` writes those graphs (checked for TensorRT's parser) and a build config, and
builds the engines where TensorRT and a GPU are present. Only :func:`build_engine`,
:func:`tensorrt_runner` and :func:`available` need TensorRT (imported lazily).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from sam3edge.runtime.backends.tensorrt_backend import _cuda_devices, capturing_logger, engine_key
from sam3edge.runtime.names import DECODER_GRAPH, EXEMPLAR_GRAPH, IMAGE_GRAPH, MAX_EXEMPLARS

INSTALL_HINT = ("TensorRT is needed to build and run TensorRT engines: on a Jetson it comes with JetPack "
                "(python3-libnvinfer), on x86 with an NVIDIA GPU `pip install tensorrt` (CUDA 12). The ONNX graphs "
                "of a TensorRT bundle are built into engines on the device, where TensorRT is installed.")



def optimization_profile(graph_spec, min_prompts: int = 1, opt_prompts: int = 8, max_prompts: int = 64,
                         text_length: int | None = None
                         ) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """Input name -> (min, opt, max) shapes of a :class:`~sam3edge.export.spec.GraphSpec`.

    The ``"prompts"`` axis ranges over ``min_prompts <= opt_prompts <= max_prompts``. In bundles that take
    exemplar boxes, the decoder's ``"tokens"`` axis ranges from ``text_length`` (text alone, also the optimum)
    to ``text_length + MAX_EXEMPLARS + 1`` and the exemplar encoder's ``"exemplars"`` from 1 (the optimum) to
    ``MAX_EXEMPLARS``. Every other dimension is fixed, so min == opt == max for inputs without those axes (the
    image, the feature levels).
    """
    if not 1 <= min_prompts <= opt_prompts <= max_prompts:
        raise ValueError(f"prompt counts must satisfy 1 <= min <= opt <= max; got min {min_prompts}, opt "
                         f"{opt_prompts}, max {max_prompts}")
    axes = {"prompts": (min_prompts, opt_prompts, max_prompts), "exemplars": (1, 1, MAX_EXEMPLARS)}
    if text_length is not None:
        if int(text_length) < 1:
            raise ValueError(f"text_length must be >= 1 (the concept cache's tokens per phrase); got {text_length}")
        axes["tokens"] = (int(text_length), int(text_length), int(text_length) + MAX_EXEMPLARS + 1)
    profile = {}
    for t in graph_spec.inputs:
        bad = [d for d in t.shape if not isinstance(d, int) and d not in axes]
        if bad == ["tokens"]:
            raise ValueError(f"input {t.name!r} of graph {graph_spec.name!r} has a 'tokens' axis (text, then exemplar "
                             "tokens): pass text_length, the concept cache's tokens per phrase")
        if bad:
            raise ValueError(f"input {t.name!r} of graph {graph_spec.name!r} has dimension(s) {bad}; only ints "
                             f"and {', '.join(repr(a) for a in axes)} have a TensorRT profile")
        profile[t.name] = tuple(tuple(axes[d][i] if d in axes else int(d) for d in t.shape) for i in range(3))
    return profile


# ------------------------------------------------------------------------------------------ TensorRT


def _tensorrt():
    try:
        import tensorrt as trt
    except ImportError as e:
        raise ImportError(INSTALL_HINT) from e
    return trt


def available() -> bool:
    """Whether this host can build and run engines: ``tensorrt`` imports and a CUDA device is present."""
    try:
        _tensorrt()
    except ImportError:
        return False
    return bool(_cuda_devices())


def engine_cache_key(device: int = 0) -> str:
    """``trt<version>-<gpu name>-sm<cc>``: engines built under one key run only under the same key (the runtime's
    TensorRT backend looks them up the same way)."""
    return engine_key(_tensorrt().__version__, device)


def cached_engine_path(onnx_path: Path, precision: str, key: str | None = None) -> Path:
    """Where the engine of ``onnx_path`` is cached: ``<graphs>/engines/<key>/<stem>.<precision>.engine``."""
    onnx_path = Path(onnx_path)
    return onnx_path.parent / "engines" / (key or engine_cache_key()) / f"{onnx_path.stem}.{precision}.engine"


def build_engine(onnx_path: str | Path, engine_path: str | Path, precision: str, graph_spec, *,
                 workspace_gb: float = 2, dla_core: int | None = None, gpu_fallback: bool = True,
                 opt_prompts: int = 8, max_prompts: int = 64, timing_cache: str | Path | None = None,
                 text_length: int | None = None) -> Path:
    """Build a serialized TensorRT engine of the ONNX graph at ``onnx_path``; returns ``engine_path``.

    precision: "fp32", "fp16" (from the fp32 graph) or "int8" (from a QDQ graph, fp16 allowed where a
    layer is not quantized). ``graph_spec``: the graph's :class:`~sam3edge.export.spec.GraphSpec`,
    whose "prompts" axis gets the profile 1 / ``opt_prompts`` / ``max_prompts`` (and a "tokens" axis one from
    ``text_length``: :func:`optimization_profile`). ``dla_core``: build
    for that DLA core of a Jetson (layers DLA cannot run go to the GPU if ``gpu_fallback``).
    ``timing_cache``: a file read before and written after the build (faster rebuilds). The engine is
    written atomically. Raises ``RuntimeError`` with the parser's or builder's messages on failure.
    """
    if precision not in ("fp32", "fp16", "int8"):
        raise ValueError(f"TensorRT engines are built in fp32, fp16 or int8; got {precision!r}")
    trt = _tensorrt()
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    log = capturing_logger(trt)
    builder = trt.Builder(log)
    flags = 0
    if int(trt.__version__.split(".")[0]) < 10:  # explicit batch is the only mode from TensorRT 10 on
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)  # not strongly typed: precision comes from the builder flags
    from sam3edge.ops.onnx import file_has_custom_nodes

    if file_has_custom_nodes(onnx_path):  # the parser maps sam3edge nodes to the plugins (else builds their bodies)
        from sam3edge.ops.tensorrt_plugins import register_plugins

        register_plugins()
    parser = trt.OnnxParser(network, log)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise RuntimeError(f"TensorRT's ONNX parser rejected {onnx_path}:\n  " + "\n  ".join(errors + log.lines[-20:]))
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    profile_shapes = optimization_profile(graph_spec, 1, opt_prompts, max_prompts, text_length)
    if sorted(t.name for t in inputs) != sorted(profile_shapes):
        raise ValueError(f"{onnx_path} has inputs {[t.name for t in inputs]}, but graph {graph_spec.name!r} of the "
                         f"export spec has {list(profile_shapes)}; export the graph and its spec from the same student")
    if precision == "int8" and not any(network.get_layer(i).type == trt.LayerType.QUANTIZE
                                       for i in range(network.num_layers)):
        raise ValueError(f"{onnx_path} has no QuantizeLinear nodes; int8 engines are built from a QDQ graph "
                         "(to_int8(symmetric=True)), TensorRT 10 no longer calibrates")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    if precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)  # explicit quantization: scales come from the Q/DQ nodes
    if dla_core is not None:
        if dla_core >= builder.num_DLA_cores:
            raise ValueError(f"DLA core {dla_core} requested; this device has {builder.num_DLA_cores} DLA cores")
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = dla_core
        if gpu_fallback:
            config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in profile_shapes.items():
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)
    cache = None
    if timing_cache is not None:
        timing_cache = Path(timing_cache)
        cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
        config.set_timing_cache(cache, ignore_mismatch=False)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT could not build a {precision} engine from {onnx_path}:\n  "
                           + "\n  ".join(log.lines[-30:] or ["(no messages)"]))
    _write_atomic(engine_path, memoryview(serialized))
    if cache is not None:
        _write_atomic(timing_cache, memoryview(cache.serialize()))
    return engine_path


def _write_atomic(path: Path, data) -> None:
    from sam3edge.atomic import atomic_write

    atomic_write(path, lambda f: f.write(data))


def tensorrt_runner(paths: dict[str, Path], device: int = 0) -> Callable:
    """``run(image, text, mask, boxes=None, labels=None) -> (scores, boxes, presence, masks, indices)`` on TensorRT
    engines.

    paths: "image_encoder" and "decoder" (and "exemplar_encoder" where the bundle has one) -> serialized engines
    (:func:`build_engine`). Buffers are
    torch CUDA tensors (torch is present wherever the export side runs, and it saves a cuda-python
    dependency); the features stay on the GPU between the two engines. More prompts than the
    decoder's profile allows run in chunks. Same signature as the runners of :mod:`~sam3edge.export.verify`.
    """
    import torch

    from sam3edge.export.graphs import DECODER_OUTPUTS, EXEMPLAR_OUTPUTS, IMAGE_OUTPUTS
    from sam3edge.export.verify import with_exemplars

    trt = _tensorrt()
    torch_dtype = {getattr(trt, n): getattr(torch, t) for n, t in (
        ("float32", "float32"), ("float16", "float16"), ("bfloat16", "bfloat16"), ("int32", "int32"),
        ("int64", "int64"), ("int8", "int8"), ("uint8", "uint8"), ("bool", "bool")) if hasattr(trt, n)}
    dev = torch.device("cuda", device)
    log = capturing_logger(trt)
    runtime = trt.Runtime(log)
    engines = {}
    for name in (n for n in (IMAGE_GRAPH, DECODER_GRAPH, EXEMPLAR_GRAPH) if n in paths):
        engine = runtime.deserialize_cuda_engine(Path(paths[name]).read_bytes())
        if engine is None:
            raise RuntimeError(f"TensorRT could not load {paths[name]} (built by another TensorRT version or for "
                               f"another GPU? key here: {engine_cache_key(device)}):\n  " + "\n  ".join(log.lines))
        engines[name] = (engine, engine.create_execution_context())
    stream = torch.cuda.Stream(dev)
    max_prompts = engines[DECODER_GRAPH][0].get_tensor_profile_shape("text", 0)[2][0]

    def execute(name: str, feeds: dict) -> dict:
        """Run one engine on ``stream``; ``feeds`` (torch tensors, any device) are cast to the engine's dtypes."""
        engine, context = engines[name]
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        for t in (t for t in names if engine.get_tensor_mode(t) == trt.TensorIOMode.INPUT):
            x = feeds[t] = feeds[t].to(dev, torch_dtype[engine.get_tensor_dtype(t)]).contiguous()
            context.set_input_shape(t, tuple(x.shape))
            context.set_tensor_address(t, x.data_ptr())
        outputs = {}
        for t in (t for t in names if engine.get_tensor_mode(t) == trt.TensorIOMode.OUTPUT):
            outputs[t] = torch.empty(tuple(context.get_tensor_shape(t)), device=dev,
                                     dtype=torch_dtype[engine.get_tensor_dtype(t)])
            context.set_tensor_address(t, outputs[t].data_ptr())
        if not context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError(f"TensorRT failed to run the {name} engine:\n  " + "\n  ".join(log.lines[-10:]))
        return outputs

    @torch.no_grad()
    def exemplars(feat2, boxes, labels):
        with torch.cuda.stream(stream):  # after the image encoder on the same stream: no wait between them
            chunks = [execute(EXEMPLAR_GRAPH, {"feat2": feat2, "boxes": torch.from_numpy(boxes[s:s + max_prompts]),
                                               "box_labels": torch.from_numpy(labels[s:s + max_prompts])})
                      for s in range(0, len(boxes), max_prompts)]
        stream.synchronize()
        out = {n: torch.cat([c[n] for c in chunks]).cpu() for n in EXEMPLAR_OUTPUTS}
        return out["tokens"].float().numpy(), out["tokens_mask"].numpy() != 0

    @torch.no_grad()
    def run(image: np.ndarray, text: np.ndarray, mask: np.ndarray, boxes=None, labels=None):
        # tensors allocated inside the stream context belong to ``stream``: freeing one before the stream
        # has finished with it is safe (the caching allocator reuses it only for later work on that stream)
        with torch.cuda.stream(stream):
            levels = execute(IMAGE_GRAPH, {"image": torch.from_numpy(np.ascontiguousarray(image))[None]})
        text, mask = with_exemplars(text, mask, exemplars, levels["feat2"], boxes, labels)
        with torch.cuda.stream(stream):
            chunks = []
            for s in range(0, len(text), max_prompts):
                feeds = {n: levels[n] for n in IMAGE_OUTPUTS}
                feeds["text"] = torch.from_numpy(np.ascontiguousarray(text[s:s + max_prompts], np.float32))
                feeds["text_mask"] = torch.from_numpy(np.ascontiguousarray(mask[s:s + max_prompts], bool))
                chunks.append(execute(DECODER_GRAPH, feeds))
        stream.synchronize()
        out = {n: torch.cat([c[n] for c in chunks]).cpu() for n in DECODER_OUTPUTS}
        return (*(out[n].float().numpy() for n in DECODER_OUTPUTS[:4]), out["indices"].long().numpy())

    run.exemplars = EXEMPLAR_GRAPH in engines
    return run


BUILD_OPTIONS = ("workspace_gb", "dla_core", "gpu_fallback", "opt_prompts", "max_prompts")


def export_tensorrt(student, out_dir: Path, precision: str, calib_images: list[np.ndarray], text: np.ndarray,
                    mask: np.ndarray, options: dict | None = None, fused: bool = False) -> dict[str, Path]:
    """The ONNX graphs TensorRT builds ``precision`` engines from, checked for its parser, plus ``tensorrt.json``
    (build settings: optimisation profiles, workspace, DLA core for the image encoder); engines too where
    TensorRT and a GPU are present. Returns graph name -> ONNX path.

    options: TensorRT entries of a device profile's ``backend_options`` (``BUILD_OPTIONS``); others are ignored.
    ``fused``: the decoder's sam3edge nodes run as the TensorRT plugins of :mod:`sam3edge.ops.tensorrt_plugins`
    (``tensorrt.json`` then lists them: building and loading the engines registers them).
    """
    import json
    import shutil

    from sam3edge.atomic import atomic_write_text
    from sam3edge.export.onnx import calibration_feeds, concept_phrases, export_fp32, quantizes, to_int8
    from sam3edge.export.spec import export_spec
    from sam3edge.export.targets import EXPORT_TARGETS
    from sam3edge.export.tensorrt_check import check_onnx_for_tensorrt

    supported = EXPORT_TARGETS["tensorrt"].precisions
    if precision not in supported:
        raise ValueError(f"TensorRT supports precisions {', '.join(supported)} (fp32 engines are not offered: "
                         f"fp16 keeps fp32's accuracy on these graphs); got {precision!r}")
    options = {k: v for k, v in (options or {}).items() if k in BUILD_OPTIONS}
    if precision == "fp16":  # TensorRT chooses fp16 kernels itself from the fp32 graph
        paths = export_fp32(student, out_dir, calib_images, text, mask, fused=fused, exemplars=True)
    else:
        work = out_dir / ".fp32-work"
        fp32 = export_fp32(student, work, calib_images, text, mask, fused=fused, exemplars=True)
        feeds = calibration_feeds(fp32, calib_images, text, mask, phrases=concept_phrases(student))
        # the graphs the ONNX target keeps float stay float here (their layers build in fp16 beside the int8 ones)
        paths = {n: to_int8(p, out_dir / p.name, feeds[n], symmetric=True) if quantizes(student, n) else
                 Path(shutil.copyfile(p, out_dir / p.name)) for n, p in fp32.items()}
        shutil.rmtree(work)
    from sam3edge.ops.onnx import for_tensorrt, rewrite_file

    plugins = [n for n, p in paths.items() if rewrite_file(p, for_tensorrt)]  # sam3edge nodes name their plugins
    checks = {n: check_onnx_for_tensorrt(p, strict=True) for n, p in paths.items()}  # a clear error, not a bad bundle
    spec = export_spec(student, text_length=text.shape[1], exemplars=True)
    opt, top, length = int(options.get("opt_prompts", 8)), int(options.get("max_prompts", 64)), int(text.shape[1])
    config = {"precision": precision, "workspace_gb": options.get("workspace_gb", 2),
              "dla_core": options.get("dla_core"), "gpu_fallback": options.get("gpu_fallback", True),
              "dla_graphs": [IMAGE_GRAPH] if options.get("dla_core") is not None else [],
              "opt_prompts": opt, "max_prompts": top, "text_length": length, "parser_ops_version": _ops_version(),
              "plugins": {"sam3edge": plugins} if plugins else {},
              "graphs": {n: {"file": p.name, "profile": {k: [list(s) for s in v] for k, v in optimization_profile(
                  spec.graph(n), 1, opt, top, length).items()}, "notes": checks[n]["notes"],
                  # an int8 bundle's float graphs (no Q/DQ nodes: see onnx.quantizes) build as fp16 engines
                  "precision": precision if precision != "int8" or quantizes(student, n) else "fp16"}
                  for n, p in paths.items()}}
    atomic_write_text(out_dir / "tensorrt.json", json.dumps(config, indent=1))
    if available():
        build_bundle_engines(paths, spec, config)
    return paths


def build_bundle_engines(paths: dict[str, Path], spec, config: dict, timing_cache: str | Path | None = None
                         ) -> dict[str, Path]:
    """Graph name -> engine for this GPU and TensorRT version, built from ``paths``' ONNX graphs as a bundle's
    ``tensorrt.json`` (``config``) says, unless already cached beside them."""
    key, out = engine_cache_key(), {}
    for name, onnx_path in paths.items():
        out[name] = cached_engine_path(onnx_path, config["precision"], key)
        if not out[name].is_file():
            precision = (config["graphs"].get(name) or {}).get("precision", config["precision"])  # per graph
            build_engine(onnx_path, out[name], precision, spec.graph(name),
                         workspace_gb=config["workspace_gb"], gpu_fallback=config["gpu_fallback"],
                         dla_core=config["dla_core"] if name in config["dla_graphs"] else None,
                         opt_prompts=config["opt_prompts"], max_prompts=config["max_prompts"],
                         timing_cache=timing_cache, text_length=config.get("text_length"))
    return out


def _ops_version() -> str:
    from sam3edge.export.tensorrt_check import OPS_TENSORRT_VERSION

    return OPS_TENSORRT_VERSION


def verification_runner(paths: dict[str, Path], precision: str) -> tuple[Callable, str]:
    """The runner that verifies a TensorRT bundle here, and what it measures: the engines where TensorRT runs,
    else onnxruntime on the graphs the engines are built from (for fp16 that is the fp32 graph)."""
    if available():
        engines = {n: cached_engine_path(p, precision) for n, p in paths.items()}
        return tensorrt_runner(engines), f"TensorRT {precision} engines on {engine_cache_key()}"
    from sam3edge.export.verify import onnx_runner

    what = "fp32 graph (TensorRT makes fp16 on the device)" if precision == "fp16" else "int8 QDQ graph"
    return onnx_runner(paths), f"onnxruntime CPU on the {what}; no TensorRT engine was built or run here"


def int8_ranges(path: Path) -> dict:
    """What the int8 kernels of a graph TensorRT builds from multiply: its graphs are ONNX QDQ (the export target
    contract; see :func:`sam3edge.export.onnx.int8_ranges`)."""
    from sam3edge.export import onnx

    return onnx.int8_ranges(path)
