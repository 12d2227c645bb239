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
* Exemplar boxes: ``exemplar_encoder.mlpackage`` (feat2, boxes [P, K, 4], box_labels [P, K] -> tokens,
  tokens_mask; K a ``RangeDim(1, MAX_EXEMPLARS)``), and the decoder's token axis a ``RangeDim(L, L + MAX_EXEMPLARS
  + 1)`` (the text's L tokens, then exemplar tokens). A trace fixes every shape it reads into a Python number, so
  the traced decoder is run at another token count and prompt count before conversion and compared with PyTorch
  (:func:`_check_trace_generalises`): a baked-in size is an export error here, not a wrong answer on the Mac.
* I/O: the spec's names, order and shapes; the prompt axis is ``RangeDim(1, 1024)``. Where Core ML
  has no equivalent dtype, :data:`COREML_DTYPES` says what the package takes instead: Core ML
  multi-arrays are float16/float32/float64/int32 (int8 from iOS26 on), never uint8, bool or int64.
  So ``image`` is int32 (0..255, exact; the graph casts it as it casts uint8), ``text_mask`` is int32
  (nonzero = token; :class:`CoreMLDecoderGraph` turns it into the bool mask), ``indices`` comes
  out int32, and the exemplar encoder takes ``box_labels`` and returns ``tokens_mask`` as int32. Float
  inputs and outputs stay float32 in every precision, so the runtime feeds every precision alike (fp16
  packages cast at their edges).

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

from sam3edge.export.graphs import (
    DECODER_OUTPUTS,
    EXEMPLAR_INPUTS,
    EXEMPLAR_OUTPUTS,
    IMAGE_OUTPUTS,
    DecoderGraph,
    ExemplarGraph,
    ImageEncoderGraph,
)
from sam3edge.runtime.names import DECODER_GRAPH, EXEMPLAR_GRAPH, IMAGE_GRAPH, MAX_EXEMPLARS, PRECISIONS

MAX_PROMPTS = 1024
DEPLOYMENT_TARGET = "iOS17"  # = macOS14; see the module docstring
# Where the Core ML packages' I/O dtypes differ from the export spec's (sam3edge.export.spec): how to feed / read them.
COREML_DTYPES = {
    IMAGE_GRAPH: {"image": "int32"},
    DECODER_GRAPH: {"text_mask": "int32", "indices": "int32"},
    EXEMPLAR_GRAPH: {"box_labels": "int32", "tokens_mask": "int32"},
}
_FP16_MAX = float(np.finfo(np.float16).max)


class CoreMLDecoderGraph(nn.Module):
    """:class:`DecoderGraph` taking ``text_mask`` as int32 [P, L] (nonzero = token): Core ML has no bool inputs."""

    def __init__(self, decoder: DecoderGraph):
        super().__init__()
        self.decoder = decoder

    def forward(self, feat0, feat1, feat2, text, text_mask):
        return self.decoder(feat0, feat1, feat2, text, text_mask != 0)


class CoreMLExemplarGraph(nn.Module):
    """:class:`ExemplarGraph` with int32 ``box_labels`` in, int32 ``tokens_mask`` out (no int64 / bool in Core ML)."""

    def __init__(self, exemplar: ExemplarGraph):
        super().__init__()
        self.exemplar = exemplar

    def forward(self, feat2, boxes, box_labels):
        tokens, mask = self.exemplar(feat2, boxes, box_labels.long())
        return tokens, mask.int()


def export_coreml(student, out_dir: Path, precision: str, calib_images: list[np.ndarray], text: np.ndarray,
                  mask: np.ndarray) -> dict[str, Path]:
    """Write ``image_encoder.mlpackage``, ``decoder.mlpackage`` and ``exemplar_encoder.mlpackage`` at ``precision``
    into ``out_dir``.

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
    exemplar = CoreMLExemplarGraph(ExemplarGraph(student).eval()).eval()
    img = torch.from_numpy(np.ascontiguousarray(calib_images[0]))[None]
    length, width = text.shape[1:]
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings of the (static) shape checks
        levels = image_graph(img)
        image_ts = torch.jit.trace(image_graph, (img,), check_trace=False)
        # two prompts with 3 and 2 exemplar boxes: no size-1 broadcast hides an axis, and the token axis is longer
        # than the text's, so the trace follows it instead of fixing it at L
        ex_args = _exemplar_args(levels[2], 2, 3)
        dec_args = (*levels, *_decoder_prompts(text, mask, exemplar, ex_args))
        exemplar_ts = torch.jit.trace(exemplar, ex_args, check_trace=False)
        decoder_ts = torch.jit.trace(decoder, dec_args, check_trace=False)
        other = _exemplar_args(levels[2], 3, 5)  # other prompt, box and so token counts than the example's
        _check_trace_generalises(decoder_ts, decoder, (*levels, *_decoder_prompts(text, mask, exemplar, other)),
                                 "decoder")
        _check_trace_generalises(exemplar_ts, exemplar, other, "exemplar encoder")
    prompts = ct.RangeDim(1, MAX_PROMPTS, default=1, symbol="prompts")
    tokens = ct.RangeDim(length, length + MAX_EXEMPLARS + 1, default=length, symbol="tokens")
    boxes = ct.RangeDim(1, MAX_EXEMPLARS, default=1, symbol="exemplars")
    f32 = np.float32
    image_io = ([ct.TensorType(name="image", shape=tuple(img.shape), dtype=np.int32)],
                [ct.TensorType(name=n, dtype=f32) for n in IMAGE_OUTPUTS])
    decoder_io = ([ct.TensorType(name=n, shape=tuple(f.shape), dtype=f32) for n, f in zip(IMAGE_OUTPUTS, levels)]
                  + [ct.TensorType(name="text", shape=(prompts, tokens, width), dtype=f32),
                     ct.TensorType(name="text_mask", shape=(prompts, tokens), dtype=np.int32)],
                  [ct.TensorType(name=n, dtype=np.int32 if n == "indices" else f32) for n in DECODER_OUTPUTS])
    feat2, box_dtypes = EXEMPLAR_INPUTS[0], COREML_DTYPES[EXEMPLAR_GRAPH]
    exemplar_io = ([ct.TensorType(name=feat2, shape=tuple(levels[2].shape), dtype=f32),
                    ct.TensorType(name="boxes", shape=(prompts, boxes, 4), dtype=f32),
                    ct.TensorType(name="box_labels", shape=(prompts, boxes), dtype=np.dtype(box_dtypes["box_labels"]))],
                   [ct.TensorType(name=n, dtype=np.dtype(box_dtypes.get(n, "float32"))) for n in EXEMPLAR_OUTPUTS])
    paths = {}
    for name, traced, (inputs, outputs) in ((IMAGE_GRAPH, image_ts, image_io), (DECODER_GRAPH, decoder_ts, decoder_io),
                                            (EXEMPLAR_GRAPH, exemplar_ts, exemplar_io)):
        # int8 bundles keep the exemplar encoder in float (fp16 here), as the other targets do: a few boxes per
        # call, and its ROI geometry exact
        graph_precision = "fp16" if name == EXEMPLAR_GRAPH and precision == "int8" else precision
        model = _convert(traced, inputs, outputs, graph_precision, skip=_SKIP_PASSES.get(name, ()))
        model.short_description = f"sam3edge {student.spec.name} {name} ({graph_precision}, {student.image_size} px)"
        model.user_defined_metadata.update({"sam3edge.graph": name, "sam3edge.precision": graph_precision,
                                            "sam3edge.student": student.spec.name})
        path = out_dir / f"{name}.mlpackage"
        if path.exists():
            shutil.rmtree(path)
        model.save(str(path))
        paths[name] = path
    return paths


def _exemplar_args(feat2: torch.Tensor, prompts: int, boxes: int) -> tuple[torch.Tensor, ...]:
    """Example (feat2, boxes, int32 box_labels) of the exemplar encoder: positives, a negative, padding."""
    from sam3edge.export.onnx import exemplar_example

    xyxy, labels = exemplar_example(prompts, boxes)
    return feat2, torch.from_numpy(xyxy), torch.from_numpy(labels.astype(np.int32))


def _decoder_prompts(text: np.ndarray, mask: np.ndarray, exemplar: nn.Module, ex_args: tuple
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(text [P, L + K + 1, C], int32 mask) of the concepts (cycled to P prompts) followed by exemplar tokens."""
    p = ex_args[1].shape[0]
    rows = np.arange(p) % len(text)
    tokens, tokens_mask = exemplar(*ex_args)
    return (torch.cat([torch.from_numpy(np.asarray(text[rows], np.float32)), tokens], 1),
            torch.cat([torch.from_numpy(mask[rows].astype(np.int32)), tokens_mask], 1))


def _check_trace_generalises(traced, module: nn.Module, args: tuple, what: str) -> None:
    """The trace run at shapes other than its example's equals the module: no size was fixed into the trace."""
    try:
        got, want = traced(*args), module(*args)
    except RuntimeError as e:
        raise RuntimeError(f"Core ML export: the traced {what} fails at shapes other than its example's ({e}); a "
                           "size read in Python was fixed into the trace") from e
    for name, (g, w) in enumerate(zip(got, want)):
        if g.shape != w.shape or not torch.allclose(g.float(), w.float(), atol=1e-4, rtol=1e-4):
            raise RuntimeError(f"Core ML export: the traced {what}'s output {name} differs from PyTorch at shapes "
                               f"other than its example's ({tuple(g.shape)} vs {tuple(w.shape)}); a size read in "
                               "Python was fixed into the trace")


# coremltools 9's ``fuse_stack_split`` fails on the exemplar encoder ("'identity' object has no attribute 'axes'"):
# its split of the boxes' last axis, squeezed on a symbolic shape, becomes an identity the pass does not expect.
# Skipping it there only leaves split + stack unfused (4 numbers per box).
_SKIP_PASSES = {EXEMPLAR_GRAPH: ("common::fuse_stack_split",)}


def _convert(traced, inputs, outputs, precision: str, skip: tuple[str, ...] = ()):
    import coremltools as ct

    pipeline = ct.PassPipeline.DEFAULT
    if skip:
        pipeline.remove_passes(list(skip))
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

    from sam3edge.export.verify import with_exemplars

    units = getattr(ct.ComputeUnit, compute_units)
    image = ct.models.MLModel(str(paths[IMAGE_GRAPH]), compute_units=units)
    decoder = ct.models.MLModel(str(paths[DECODER_GRAPH]), compute_units=units)
    exemplar = (ct.models.MLModel(str(paths[EXEMPLAR_GRAPH]), compute_units=units)
                if EXEMPLAR_GRAPH in paths else None)

    def exemplars(feat2, boxes, labels):
        out = exemplar.predict({"feat2": feat2, "boxes": boxes, "box_labels": labels.astype(np.int32)})
        return np.asarray(out["tokens"], np.float32), np.asarray(out["tokens_mask"]) != 0

    def run(img: np.ndarray, text: np.ndarray, mask: np.ndarray, boxes=None, labels=None):
        feats = image.predict({"image": np.ascontiguousarray(img)[None].astype(np.int32)})
        feed = {n: np.asarray(feats[n], np.float32) for n in IMAGE_OUTPUTS}
        text, mask = with_exemplars(text, mask, exemplars, feed["feat2"], boxes, labels)
        feed |= {"text": text, "text_mask": mask.astype(np.int32)}
        out = decoder.predict(feed)
        return tuple(np.asarray(out[n], np.int64 if n == "indices" else np.float32) for n in DECODER_OUTPUTS)

    run.exemplars = exemplar is not None
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
