"""Core ML target: ML Program packages (``.mlpackage``) in fp32, fp16 or int8 (weight-only).

* Source: ``torch.jit.trace`` of the same wrappers as every target (:mod:`sam3edge.export.graphs`).
  coremltools 9's ``torch.export`` path refuses this decoder ("non-contiguous dim order") and
  costs ~15 s per graph to export, the TorchScript path converts in seconds.
* Deployment target iOS17 / macOS14 (:data:`DEPLOYMENT_TARGET`). No op here needs more than iOS16
  (float16 I/O, ``constexpr_affine_dequantize`` int8 weights); iOS17 is the oldest target of
  coremltools' activation quantization (``linear_quantize_activations``, W8A8 on the Neural
  Engine), so a later int8 with calibrated activations needs no re-conversion, and iOS17 runs on
  every device with a Neural Engine worth targeting (A12 / M1 and newer). iOS18 would turn the int8
  weights into ``constexpr_blockwise_shift_scale`` and raise the floor for nothing we use.
* Precisions (:data:`PRECISIONS`): fp32 (``compute_precision=FLOAT32``); fp16 (``FLOAT16``:
  weights and arithmetic in float16); int8: the fp16 program with per-channel symmetric int8
  linear/conv weights (``linear_quantize_weights``; float16 activations, no calibration, so
  ``calib_images`` only provides the example input).
* I/O: the spec's names, order and shapes; the prompt axis is ``RangeDim(1, 1024)``. Where Core ML
  has no equivalent dtype, :data:`COREML_DTYPES` says what the package takes instead: Core ML
  multi-arrays are float16/float32/float64/int32 (int8 from iOS26 on), never uint8, bool or int64.
  So ``image`` is int32 (0..255, exact; the graph casts it as it casts uint8), ``text_mask`` is int32
  (nonzero = token; :class:`CoreMLDecoderGraph` turns it into the bool mask), and ``indices`` comes
  out int32. Float inputs and outputs stay float32 in every precision, so the runtime feeds every
  precision alike (fp16 packages cast at their edges).

Conversion fixes (all here, none in the model code; see :func:`_converter_fixes`):

* coremltools' ``expand`` with a size read from a dynamic axis (``x.expand(n, -1, -1)``) loses
  every static dimension, and its ``unbind`` / ``group_norm`` then fail on the symbolic shape. A
  scoped replacement of the ``expand`` and ``group_norm`` converters keeps the static dimensions.
* ``padding_bias`` multiplies the inverted mask by ``finfo(float32).min``; coremltools turns that
  constant into float16 ``-inf`` and ``0 * -inf`` is NaN for every real token. A graph pass before
  the float16 cast maps finite constants beyond float16's range to float16's extremes (the same
  "most negative finite value", in the precision that computes).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import sys
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from sam3edge.export.graphs import DECODER_OUTPUTS, IMAGE_OUTPUTS, DecoderGraph, ImageEncoderGraph
from sam3edge.runtime.names import DECODER_GRAPH, IMAGE_GRAPH, PRECISIONS

MAX_PROMPTS = 1024
DEPLOYMENT_TARGET = "iOS17"  # = macOS14; see the module docstring
# Where the Core ML packages' I/O dtypes differ from the export spec's (sam3edge.export.spec): how to feed / read them.
COREML_DTYPES = {
    IMAGE_GRAPH: {"image": "int32"},
    DECODER_GRAPH: {"text_mask": "int32", "indices": "int32"},
}
_FP16_MAX = float(np.finfo(np.float16).max)


class CoreMLDecoderGraph(nn.Module):
    """:class:`DecoderGraph` taking ``text_mask`` as int32 [P, L] (nonzero = token): Core ML has no bool inputs."""

    def __init__(self, decoder: DecoderGraph):
        super().__init__()
        self.decoder = decoder

    def forward(self, feat0, feat1, feat2, text, text_mask):
        return self.decoder(feat0, feat1, feat2, text, text_mask != 0)


def export_coreml(student, out_dir: Path, precision: str, calib_images: list[np.ndarray], text: np.ndarray,
                  mask: np.ndarray) -> dict[str, Path]:
    """Write ``image_encoder.mlpackage`` and ``decoder.mlpackage`` at ``precision`` into ``out_dir``.

    calib_images: uint8 RGB [S, S, 3] domain images (the first is the example input; int8 is
    weight-only and needs no calibration); text [P, L, C] float / mask [P, L] bool: the concepts.
    Returns graph name -> package path.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"Core ML supports precisions {', '.join(PRECISIONS)}; got {precision!r}")
    if not calib_images:
        raise ValueError("Core ML export needs at least one image (the example input of the trace)")
    import coremltools as ct

    out_dir.mkdir(parents=True, exist_ok=True)
    image_graph = ImageEncoderGraph(student).eval()
    decoder = CoreMLDecoderGraph(DecoderGraph(student).eval()).eval()
    img = torch.from_numpy(np.ascontiguousarray(calib_images[0]))[None]
    two = np.arange(2) % len(text)  # two example prompts, so no size-1 broadcast hides the prompt axis
    text_t, mask_t = torch.from_numpy(np.asarray(text[two], np.float32)), torch.from_numpy(mask[two].astype(np.int32))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings of the (static) shape checks
        levels = image_graph(img)
        image_ts = torch.jit.trace(image_graph, (img,), check_trace=False)
        decoder_ts = torch.jit.trace(decoder, (*levels, text_t, mask_t), check_trace=False)
    prompts = ct.RangeDim(1, MAX_PROMPTS, default=1, symbol="prompts")
    length, width = text_t.shape[1:]
    f32 = np.float32
    image_io = ([ct.TensorType(name="image", shape=tuple(img.shape), dtype=np.int32)],
                [ct.TensorType(name=n, dtype=f32) for n in IMAGE_OUTPUTS])
    decoder_io = ([ct.TensorType(name=n, shape=tuple(f.shape), dtype=f32) for n, f in zip(IMAGE_OUTPUTS, levels)]
                  + [ct.TensorType(name="text", shape=(prompts, length, width), dtype=f32),
                     ct.TensorType(name="text_mask", shape=(prompts, length), dtype=np.int32)],
                  [ct.TensorType(name=n, dtype=np.int32 if n == "indices" else f32) for n in DECODER_OUTPUTS])
    paths = {}
    for name, traced, (inputs, outputs) in ((IMAGE_GRAPH, image_ts, image_io), (DECODER_GRAPH, decoder_ts, decoder_io)):
        model = _convert(traced, inputs, outputs, precision)
        model.short_description = f"sam3edge {student.spec.name} {name} ({precision}, {student.image_size} px)"
        model.user_defined_metadata.update({"sam3edge.graph": name, "sam3edge.precision": precision,
                                            "sam3edge.student": student.spec.name})
        path = out_dir / f"{name}.mlpackage"
        if path.exists():
            shutil.rmtree(path)
        model.save(str(path))
        paths[name] = path
    return paths


def _convert(traced, inputs, outputs, precision: str):
    import coremltools as ct

    pipeline = ct.PassPipeline.DEFAULT
    if precision != "fp32":
        _register_fp16_extremes_pass()
        pipeline.insert_pass(pipeline.passes.index("common::add_fp16_cast"), _FP16_EXTREMES_PASS)
    with _converter_fixes(), _quiet_coremltools(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = ct.convert(traced, inputs=inputs, outputs=outputs, convert_to="mlprogram",
                           minimum_deployment_target=getattr(ct.target, DEPLOYMENT_TARGET),
                           compute_precision=ct.precision.FLOAT32 if precision == "fp32" else ct.precision.FLOAT16,
                           pass_pipeline=pipeline, skip_model_load=sys.platform != "darwin")
        if precision == "int8":
            from coremltools.optimize.coreml import OpLinearQuantizerConfig, OptimizationConfig, linear_quantize_weights

            config = OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", granularity="per_channel")
            model = linear_quantize_weights(model, OptimizationConfig(global_config=config))
    return model


@contextlib.contextmanager
def _quiet_coremltools():
    """coremltools logs a warning per int64 constant it stores as int32 (all shape arithmetic): hide those."""
    logger = logging.getLogger("coremltools")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


# --- converter fixes ----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _converter_fixes():
    """Replace coremltools' ``expand`` and ``group_norm`` converters while converting (restored afterwards).

    The registry is process-global: a conversion in another thread meanwhile gets the same (stricter-shaped,
    otherwise equal) converters.
    """
    from coremltools.converters.mil.frontend.torch.torch_op_registry import _TORCH_OPS_REGISTRY

    table = _TORCH_OPS_REGISTRY.name_to_func_mapping
    saved = {name: table[name] for name in ("expand", "group_norm")}
    table["expand"] = _expand_keeping_static_dims(saved["expand"])
    table["group_norm"] = _group_norm_with_dynamic_batch(saved["group_norm"])
    try:
        yield
    finally:
        table.update(saved)


def _expand_keeping_static_dims(fallback):
    """``x.expand(sizes)`` as ``tile`` with repeats known per axis, so a dynamic size keeps the others static.

    coremltools builds the repeats at run time (select / real_div / cast) whenever one size is not a
    constant, and the result then has no static dimension at all.
    """
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.frontend.torch.ops import _get_inputs
    from coremltools.converters.mil.mil import Var
    from coremltools.converters.mil.mil.types.symbolic import is_symbolic

    def expand(context, node):
        x, shape = _get_inputs(context, node, expected=[2, 3])[:2]
        if isinstance(shape, Var):
            if shape.sym_val is None:
                return fallback(context, node)
            sizes = list(shape.sym_val)
        else:
            sizes = list(shape)
        if len(sizes) > x.rank:
            x = mb.expand_dims(x=x, axes=list(range(len(sizes) - x.rank)))
        reps = []
        for have, size in zip(x.shape, sizes):
            want = size.sym_val if isinstance(size, Var) else size
            known = want is not None and not is_symbolic(want)
            if known and (int(want) == -1 or (not is_symbolic(have) and int(want) == have)):
                reps.append(np.array([1], np.int32))
            elif not is_symbolic(have) and have == 1:
                reps.append(np.array([int(want)], np.int32) if known
                            else mb.reshape(x=mb.cast(x=size, dtype="int32"), shape=[1]))
            else:
                return fallback(context, node)
        context.add(mb.tile(x=x, reps=mb.concat(values=reps, axis=0), name=node.name))

    return expand


def _group_norm_with_dynamic_batch(fallback):
    """GroupNorm of [N, C, *static] with a dynamic N: reshapes with -1 (coremltools puts the symbol in a constant)."""
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.frontend.torch.ops import _get_inputs
    from coremltools.converters.mil.mil.types.symbolic import is_symbolic

    def group_norm(context, node):
        inputs = _get_inputs(context, node, min_expected=2)
        x = inputs[0]
        if len(inputs) != 6 or not is_symbolic(x.shape[0]) or any(is_symbolic(d) for d in x.shape[1:]):
            return fallback(context, node)
        groups, weight, bias, eps = int(inputs[1].val), inputs[2], inputs[3], float(inputs[4].val)
        c, rest = x.shape[1], list(x.shape[2:])
        axes = list(range(2, 3 + len(rest)))
        y = mb.reshape(x=x, shape=[-1, groups, c // groups, *rest])
        centred = mb.sub(x=y, y=mb.reduce_mean(x=y, axes=axes, keep_dims=True))
        var = mb.reduce_mean(x=mb.mul(x=centred, y=centred), axes=axes, keep_dims=True)
        y = mb.reshape(x=mb.real_div(x=centred, y=mb.sqrt(x=mb.add(x=var, y=eps))), shape=[-1, c, *rest])
        per_channel = [1, c] + [1] * len(rest)
        if weight is not None:
            y = mb.mul(x=y, y=mb.reshape(x=weight, shape=per_channel))
        if bias is not None:
            y = mb.add(x=y, y=mb.reshape(x=bias, shape=per_channel))
        context.add(y, node.name)

    return group_norm


_FP16_EXTREMES_PASS = "sam3edge::fp32_extremes_to_fp16"


def _register_fp16_extremes_pass() -> None:
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import types
    from coremltools.converters.mil.mil.passes.graph_pass import AbstractGraphPass
    from coremltools.converters.mil.mil.passes.pass_registry import PASS_REGISTRY

    class Fp32ExtremesToFp16(AbstractGraphPass):
        """Finite float32 constants beyond float16's range (``finfo(float32).min`` masks) -> float16's extremes.

        coremltools' float16 cast treats |v| >= 1e38 as infinity; a mask multiplied by -inf gives NaN.
        """

        def apply(self, prog):
            for f in prog.functions.values():
                self._block(f)

        def _block(self, block):
            for op in list(block.operations):
                for b in op.blocks:
                    self._block(b)
                out = op.outputs[0] if op.op_type == "const" else None
                if out is None or out.dtype != types.fp32 or out.val is None:
                    continue
                val = np.asarray(out.val)
                big = np.isfinite(val) & (np.abs(val) > _FP16_MAX)
                if not big.any():
                    continue
                new = np.where(big, np.sign(val) * _FP16_MAX, val).astype(np.float32)
                with block:
                    const = mb.const(val=new if new.ndim else np.float32(new), before_op=op)
                block.replace_uses_of_var_after_op(anchor_op=op, old_var=out, new_var=const)
                block.remove_ops([op])

    PASS_REGISTRY.add("sam3edge", Fp32ExtremesToFp16, override=True, name="fp32_extremes_to_fp16")


# --- runtime and inspection ---------------------------------------------------------------------------------------


def coreml_runner(paths: dict, compute_units: str = "ALL") -> Callable:
    """``run(image uint8 [S, S, 3], text [P, L, C], mask [P, L] bool) -> (scores, boxes, presence, masks, indices)``.

    Same contract as :func:`sam3edge.export.verify.torch_runner` (``indices`` returned as int64).
    compute_units: a ``coremltools.ComputeUnit`` name (ALL, CPU_ONLY, CPU_AND_GPU, CPU_AND_NE).
    """
    if sys.platform != "darwin":
        raise RuntimeError(f"Core ML prediction needs macOS (this is {sys.platform}); the packages "
                           f"{', '.join(str(p) for p in paths.values())} convert and load here but only run on "
                           "a Mac or an iOS device")
    import coremltools as ct

    units = getattr(ct.ComputeUnit, compute_units)
    image = ct.models.MLModel(str(paths[IMAGE_GRAPH]), compute_units=units)
    decoder = ct.models.MLModel(str(paths[DECODER_GRAPH]), compute_units=units)

    def run(img: np.ndarray, text: np.ndarray, mask: np.ndarray):
        feats = image.predict({"image": np.ascontiguousarray(img)[None].astype(np.int32)})
        feed = {n: np.asarray(feats[n], np.float32) for n in IMAGE_OUTPUTS}
        feed |= {"text": np.asarray(text, np.float32), "text_mask": np.asarray(mask).astype(np.int32)}
        out = decoder.predict(feed)
        return tuple(np.asarray(out[n], np.int64 if n == "indices" else np.float32) for n in DECODER_OUTPUTS)

    return run


_WEIGHT_OPS = ("const", "constexpr_affine_dequantize", "constexpr_blockwise_shift_scale", "constexpr_lut_to_dense")
_QUANTIZED_OPS = ("constexpr_affine_dequantize", "constexpr_blockwise_shift_scale")


def describe_mlpackage(path: str | Path) -> dict:
    """What a saved ``.mlpackage`` holds, read from its spec (no model load: works on Linux).

    Keys: ``spec_version`` and ``opset``; ``inputs`` / ``outputs`` as ``{name, dtype, shape}`` (a
    flexible axis is ``[lower, upper]``, an axis the program leaves open is None);
    ``compute_precision`` (float16, float32 or mixed: the float outputs of the compute ops);
    ``weights`` (elements per stored dtype of constant tensors of >= 16 elements);
    ``quantized_weight_ops`` (int8 constexpr weights); ``infinite_multipliers`` (``mul`` ops with an
    infinite constant operand: NaN wherever the other operand is 0); ``op_counts``; ``metadata``;
    ``bytes`` (package size).
    """
    import coremltools as ct

    path = Path(path)
    spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    if spec.WhichOneof("Type") != "mlProgram":
        raise ValueError(f"{path} holds a {spec.WhichOneof('Type')!r} model; expected an ML Program (mlprogram)")
    main = spec.mlProgram.functions["main"]
    ops = main.block_specializations[main.opset].operations
    weights, compute, scalars = Counter(), Counter(), {}
    var_dims = {o.name: list(o.type.tensorType.dimensions) for op in ops for o in op.outputs}
    for op in ops:
        if op.type in _WEIGHT_OPS:
            for attr in ("val", "quantized_data", "data"):
                if attr in op.attributes:
                    t = op.attributes[attr].type.tensorType
                    n = int(np.prod([d.constant.size for d in t.dimensions]))
                    if n >= 16:
                        weights[_mil_dtype(t)] += n
                    elif attr == "val" and (v := _immediate_floats(op.attributes[attr])) is not None:
                        scalars[op.outputs[0].name] = v
        elif op.type != "cast":
            compute.update(d for o in op.outputs if (d := _mil_dtype(o.type.tensorType)) in ("float16", "float32"))
    mixed = len(compute) > 1 and min(compute.values()) > 0.05 * sum(compute.values())
    infinite = [op.outputs[0].name for op in ops if op.type == "mul" and any(
        np.isinf(scalars.get(a.name, 0.0)).any() for arg in op.inputs.values() for a in arg.arguments)]
    return {
        "file": path.name, "spec_version": spec.specificationVersion, "opset": main.opset,
        "inputs": [_feature(f, var_dims) for f in spec.description.input],
        "outputs": [_feature(f, var_dims) for f in spec.description.output],
        "compute_precision": "mixed" if mixed else (compute.most_common(1)[0][0] if compute else "none"),
        "weights": dict(weights), "quantized_weight_ops": sum(op.type in _QUANTIZED_OPS for op in ops),
        "infinite_multipliers": infinite, "op_counts": dict(Counter(op.type for op in ops)),
        "metadata": dict(spec.description.metadata.userDefined),
        "bytes": sum(p.stat().st_size for p in path.rglob("*") if p.is_file()),
    }


def _mil_dtype(tensor_type) -> str:
    from coremltools.proto import MIL_pb2

    return MIL_pb2.DataType.Name(tensor_type.dataType).lower()


def _immediate_floats(value) -> np.ndarray | None:
    """The values of a small float constant stored in the program (float16 ones as raw bytes)."""
    if not value.HasField("immediateValue"):
        return None
    tensor, dtype = value.immediateValue.tensor, _mil_dtype(value.type.tensorType)
    if dtype == "float32":
        return np.asarray(tensor.floats.values, np.float32)
    if dtype == "float16":
        return np.frombuffer(tensor.bytes.values, np.float16)
    return None


def _feature(f, var_dims: dict) -> dict:
    """name, dtype and shape of a model input / output (outputs of a flexible graph: shape from the program)."""
    from coremltools.proto import FeatureTypes_pb2

    a = f.type.multiArrayType
    dtype = FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.Name(a.dataType).lower().replace("double", "float64")
    ranges = list(a.shapeRange.sizeRanges)
    if ranges:
        shape = [r.lowerBound if r.lowerBound == r.upperBound else [r.lowerBound, r.upperBound] for r in ranges]
    elif a.shape:
        shape = list(a.shape)
    else:
        shape = [d.constant.size if d.WhichOneof("dimension") == "constant" else None for d in var_dims.get(f.name, [])]
    return {"name": f.name, "dtype": dtype, "shape": shape}


def verification_runner(paths: dict[str, Path], precision: str):
    """(runner, what it runs), or (None, why) off macOS, where Core ML cannot predict (the export target contract).
    Core ML's int8 is weight-only (no integer arithmetic), so this module has no ``int8_ranges``."""
    import platform

    if platform.system() != "Darwin":
        return None, ("Core ML prediction needs macOS: the packages were converted and their specs checked here, "
                      "not run; verify on a Mac with `pytest -m macos`")
    return coreml_runner(paths), "Core ML on macOS"
