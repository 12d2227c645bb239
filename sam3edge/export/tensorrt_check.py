"""Is an ONNX graph one TensorRT's ONNX parser builds? Operators, opset, Q/DQ form and other limits.

Runs wherever ``onnx`` does (no TensorRT needed), so CI checks every graph a TensorRT bundle carries.
``SUPPORTED_OPS`` is the parser's operator list (``tensorrt_onnx_ops.txt`` names its source and
TensorRT version). TensorRT's Q/DQ must be signed int8 with zero points of 0 and float biases:
:func:`sam3edge.export.onnx.to_int8` writes that form with ``symmetric=True``.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np


def _read_ops(path: Path) -> tuple[frozenset[str], str, tuple[int, int]]:
    ops, version, opsets = set(), "unknown", (9, 24)
    for line in path.read_text().splitlines():
        line = line.strip()
        if m := re.match(r"#\s*tensorrt:\s*(\S+)", line):
            version = m.group(1)
        elif m := re.match(r"#\s*opset:\s*(\d+)-(\d+)", line):
            opsets = (int(m.group(1)), int(m.group(2)))
        elif line and not line.startswith("#"):
            ops.add(line)
    return frozenset(ops), version, opsets


SUPPORTED_OPS, OPS_TENSORRT_VERSION, OPSET_RANGE = _read_ops(Path(__file__).with_name("tensorrt_onnx_ops.txt"))
TOPK_MAX_K = 3840  # the parser's limit on TopK's K
QDQ_DTYPES = {"int8", "int4", "float8_e4m3fn"}  # numpy names of the quantized types TensorRT's Q/DQ take
RESIZE_MODES = {"nearest", "linear"}
RESIZE_COORDINATES = {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"}
# dtypes TensorRT takes at a network's inputs and outputs (ONNX names); float64 is cast down with a warning
IO_DTYPES = {"FLOAT", "FLOAT16", "BFLOAT16", "INT32", "INT64", "INT8", "UINT8", "BOOL", "DOUBLE"}
# --------------------------------------------------------------------------------------------- checks


def _subgraphs(node):
    from onnx import AttributeProto

    for a in node.attribute:
        if a.type == AttributeProto.GRAPH:
            yield a.g
        elif a.type == AttributeProto.GRAPHS:
            yield from a.graphs


def _walk(graph):
    """Every node of ``graph`` and of its subgraphs (If / Loop / Scan bodies)."""
    for node in graph.node:
        yield node
        for g in _subgraphs(node):
            yield from _walk(g)


def _op_name(node) -> str:
    return node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"


def _dims(value_info) -> list:
    return [d.dim_param or (d.dim_value if d.HasField("dim_value") else None)
            for d in value_info.type.tensor_type.shape.dim]


def _node_problem(node, constants: dict) -> str | None:
    """What TensorRT's parser refuses in this node beyond its op type (docs/operators.md restrictions).

    ``constants``: tensor name -> value of every constant; None where the value is not known here (a
    function body's Constant that takes the calling node's attribute), which is still a constant.
    """
    from onnx import helper

    # Inside a function body an attribute may refer to the calling node's (ref_attr_name): no value here.
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute if not a.ref_attr_name}
    if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
        has_zp = len(node.input) > 2 and node.input[2]
        if has_zp and node.input[2] not in constants:
            return "zero point is not a constant"
        zp = constants.get(node.input[2]) if has_zp else None
        x = constants.get(node.input[0]) if node.op_type == "DequantizeLinear" else None
        dtype = str(zp.dtype if zp is not None else x.dtype if x is not None else "int8")
        if dtype not in QDQ_DTYPES:
            bias = "; biases stay float" if dtype == "int32" else ""
            return (f"{dtype} quantization unsupported (TensorRT's Q/DQ are int8, int4 or fp8{bias}); "
                    "quantize with to_int8(symmetric=True)")
        if zp is not None and np.any(zp.astype(np.float32)):
            return "zero point must be 0 (symmetric quantization); quantize with to_int8(symmetric=True)"
    if node.op_type == "TopK":
        if node.input[1] not in constants:
            return "K must be a constant"
        k = constants[node.input[1]]
        if k is not None and int(k.reshape(-1)[0]) >= TOPK_MAX_K:
            return f"K={int(k.reshape(-1)[0])} must be < {TOPK_MAX_K}"
        if attrs.get("sorted", 1) != 1:
            return "sorted must be 1"
    if node.op_type == "Resize":
        mode = attrs.get("mode", b"nearest").decode()
        coords = attrs.get("coordinate_transformation_mode", b"half_pixel").decode()
        if mode not in RESIZE_MODES or coords not in RESIZE_COORDINATES or attrs.get("antialias", 0):
            return (f"mode {mode!r}, coordinate_transformation_mode {coords!r}, antialias {attrs.get('antialias', 0)}"
                    f" unsupported (modes {sorted(RESIZE_MODES)}, modes of coordinates {sorted(RESIZE_COORDINATES)},"
                    " no antialias)")
    if node.op_type.startswith("Reduce") and len(node.input) > 1 and node.input[1] and node.input[1] not in constants:
        return "axes must be an initializer"
    if node.op_type == "Einsum" and "..." in attrs.get("equation", b"").decode():
        return f"ellipsis in equation {attrs['equation'].decode()!r} unsupported"
    return None


def _node_problems(nodes, constants: dict) -> list[str]:
    """One line per kind of problem: op, what is wrong, how many nodes, the first one's name."""
    found: dict[tuple[str, str], list[str]] = {}
    for n in nodes:
        if (problem := _node_problem(n, constants)) is not None:
            found.setdefault((n.op_type, problem), []).append(n.name or n.output[0])
    return [f"{op}: {problem} ({len(names)} node{'s' * (len(names) > 1)}, e.g. {names[0]!r})"
            for (op, problem), names in found.items()]


def check_onnx_for_tensorrt(path: str | Path, strict: bool = False) -> dict:
    """What TensorRT's ONNX parser would make of the graph at ``path``.

    Runs ``onnx.checker.check_model(full_check=True)`` (its complaint, if any, is a problem), lists
    the op types of every node (subgraphs included) and returns ``{"file", "ops", "op_counts",
    "unsupported", "problems", "notes", "opset", "inputs", "outputs", "dynamic_inputs"}``:
    ``unsupported`` are op types missing from ``SUPPORTED_OPS`` (or of another domain than ONNX's),
    ``problems`` what the parser refuses otherwise (opset range, Q/DQ types and zero points, TopK's
    K, Resize modes, I/O dtypes), ``notes`` what it accepts at a cost (int64 I/O).
    ``dynamic_inputs``: input name -> shape with symbolic dims.
    ``strict``: raise ``ValueError`` naming the file, the unsupported ops and the problems instead.
    """
    import onnx
    from onnx import TensorProto, numpy_helper

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no ONNX graph at {path}")
    problems, notes = [], []
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:  # reported with the rest
        problems.append(f"onnx.checker: {' '.join(str(e).split())[:300]}")
    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    functions = {(f.domain, f.name) for f in model.functions}  # local functions: the parser inlines them
    nodes = [*_walk(graph), *(n for f in model.functions for n in f.node)]
    counts = Counter(_op_name(n) for n in nodes if (n.domain, n.op_type) not in functions)
    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer if not t.external_data}
    constants |= {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in nodes
                  if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"}
    # A Constant of a function body whose value is the calling node's attribute: constant, value per call.
    constants |= {n.output[0]: None for n in nodes
                  if n.op_type == "Constant" and n.attribute and n.attribute[0].ref_attr_name}
    lo, hi = OPSET_RANGE
    if not lo <= opset <= hi:
        problems.append(f"opset {opset} is outside the {lo}-{hi} range TensorRT {OPS_TENSORRT_VERSION}'s parser takes")
    problems.extend(_node_problems(nodes, constants))
    io = {}
    for kind, values in (("input", graph.input), ("output", graph.output)):
        for v in values:
            if v.name in constants:
                continue
            dtype = TensorProto.DataType.Name(v.type.tensor_type.elem_type)
            io.setdefault(kind, {})[v.name] = dtype
            if dtype not in IO_DTYPES:
                problems.append(f"{kind} {v.name!r} has dtype {dtype}, which TensorRT cannot bind")
            elif dtype == "INT64":
                notes.append(f"{kind} {v.name!r} is int64: TensorRT 10 binds it natively (TensorRT 8 casts to int32, "
                             "DLA has no int64)")
            elif dtype == "UINT8":
                notes.append(f"{kind} {v.name!r} is uint8: TensorRT takes it at the network's edge only (its first "
                             "layer casts it; on a DLA that layer runs on the GPU)")
    report = {
        "file": str(path), "ops": sorted(counts), "op_counts": dict(sorted(counts.items())),
        "unsupported": sorted(op for op in counts if op not in SUPPORTED_OPS), "problems": problems, "notes": notes,
        "opset": opset, "inputs": io.get("input", {}), "outputs": io.get("output", {}),
        "dynamic_inputs": {v.name: _dims(v) for v in graph.input
                           if v.name not in constants and not all(isinstance(d, int) for d in _dims(v))},
    }
    if strict:
        require_tensorrt_compatible(report)
    return report


def require_tensorrt_compatible(report: dict) -> None:
    """Raise ``ValueError`` if a :func:`check_onnx_for_tensorrt` report has unsupported ops or problems."""
    if not report["unsupported"] and not report["problems"]:
        return
    lines = [f"{report['file']} cannot be built by TensorRT {OPS_TENSORRT_VERSION}'s ONNX parser:"]
    if report["unsupported"]:
        ops = ", ".join(f"{op} ({report['op_counts'][op]} nodes)" for op in report["unsupported"])
        lines.append(f"unsupported operators: {ops}")
    lines.extend(report["problems"][:10])
    if len(report["problems"]) > 10:
        lines.append(f"... and {len(report['problems']) - 10} more problems")
    lines.append("export the graph without them (or choose the onnx / openvino target)")
    raise ValueError("\n  ".join(lines))
