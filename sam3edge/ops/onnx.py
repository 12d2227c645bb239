"""The fused ops in ONNX: one node each in the ``sam3edge`` domain, carrying an ONNX function body.

The body decomposes the op into standard opset-18 operators (the same math as :mod:`.reference`),
so onnxruntime runs the node without any plugin (it inlines model-local functions), and a
TensorRT build maps the node to the plugin of the same name (:func:`for_tensorrt`). Bodies are
type-polymorphic (every constant goes through ``CastLike``), so an fp16 conversion of the graph
keeps them valid. OpenVINO's ONNX frontend does not read model-local functions: :func:`inline`
expands them into plain nodes before conversion. The switch is ``sam3edge export --ops plain``
(``export_fp32(..., fused=False)``): the plain decomposition of the unfused modules instead.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TypeVar, Union

import onnx
import onnxscript
from onnxscript import FLOAT, FLOAT16, INT64
from onnxscript import opset18 as op
from onnxscript.values import Opset

DOMAIN = "sam3edge"
VERSION = 1
sam3edge = Opset(DOMAIN, VERSION)
# The exporter reads inputs and outputs from the annotations (unannotated outputs would be dropped).
T = TypeVar("T", bound=Union[FLOAT, FLOAT16])  # noqa: UP007  (onnxscript reads typing.Union, not X | Y)


@onnxscript.script(opset=sam3edge, default_opset=op)
def prompt_attention(q: T, k: T, v: T, key_bias: T, num_heads: int, scale: float) -> T:
    heads = op.Reshape(op.Constant(value_int=num_heads), op.Constant(value_ints=[1]))
    split = op.Concat(op.Constant(value_ints=[0, 0]), heads, op.Constant(value_ints=[-1]), axis=0)
    qh = op.Transpose(op.Reshape(q, split), perm=[0, 2, 1, 3])  # [N, heads, Lq, d]
    kt = op.Transpose(op.Reshape(k, split), perm=[0, 2, 3, 1])  # [N, heads, d, Lk]
    vh = op.Transpose(op.Reshape(v, split), perm=[0, 2, 1, 3])  # [N, heads, Lk, d]
    s = op.Mul(op.MatMul(qh, kt), op.CastLike(op.Constant(value_float=scale), q))
    s = op.Add(s, op.Unsqueeze(key_bias, op.Constant(value_ints=[1, 2])))
    out = op.MatMul(op.Softmax(s, axis=-1), vh)
    return op.Reshape(op.Transpose(out, perm=[0, 2, 1, 3]), op.Constant(value_ints=[0, 0, -1]))


@onnxscript.script(opset=sam3edge, default_opset=op)
def box_attention(q: T, k: T, v: T, boxes: T, x_w1: T, x_b1: T, x_w2: T, x_b2: T, y_w1: T, y_b1: T, y_w2: T,
                  y_b2: T, height: int, width: int, num_heads: int, scale: float) -> T:
    half = op.CastLike(op.Constant(value_float=0.5), boxes)
    eight = op.CastLike(op.Constant(value_float=8.0), boxes)
    one = op.CastLike(op.Constant(value_float=1.0), boxes)
    ln8 = op.CastLike(op.Constant(value_float=math.log(8.0)), boxes)
    last = op.Constant(value_ints=[-1])
    cx = op.Slice(boxes, op.Constant(value_ints=[0]), op.Constant(value_ints=[1]), last)
    cy = op.Slice(boxes, op.Constant(value_ints=[1]), op.Constant(value_ints=[2]), last)
    bw = op.Slice(boxes, op.Constant(value_ints=[2]), op.Constant(value_ints=[3]), last)
    bh = op.Slice(boxes, op.Constant(value_ints=[3]), op.Constant(value_ints=[4]), last)
    xs = op.Concat(op.Sub(cx, op.Mul(half, bw)), op.Add(cx, op.Mul(half, bw)), axis=-1)  # [N, Qb, 2]: x1, x2
    ys = op.Concat(op.Sub(cy, op.Mul(half, bh)), op.Add(cy, op.Mul(half, bh)), axis=-1)  # y1, y2
    h = op.Constant(value_int=height)
    w = op.Constant(value_int=width)
    zero = op.Constant(value_int=0)
    step = op.Constant(value_int=1)
    rows = op.Div(op.CastLike(op.Range(zero, h, step), boxes), op.CastLike(h, boxes))  # [H]: r / H
    cols = op.Div(op.CastLike(op.Range(zero, w, step), boxes), op.CastLike(w, boxes))
    axis2 = op.Constant(value_ints=[2])
    dy = op.Mul(op.Sub(op.Unsqueeze(rows, op.Constant(value_ints=[1])), op.Unsqueeze(ys, axis2)), eight)
    dx = op.Mul(op.Sub(op.Unsqueeze(cols, op.Constant(value_ints=[1])), op.Unsqueeze(xs, axis2)), eight)
    ly = op.Div(op.Mul(op.Sign(dy), op.Log(op.Add(op.Abs(dy), one))), ln8)  # [N, Qb, H, 2]
    lx = op.Div(op.Mul(op.Sign(dx), op.Log(op.Add(op.Abs(dx), one))), ln8)  # [N, Qb, W, 2]
    hy = op.Relu(op.Add(op.MatMul(ly, op.Transpose(y_w1, perm=[1, 0])), y_b1))
    by = op.Add(op.MatMul(hy, op.Transpose(y_w2, perm=[1, 0])), y_b2)  # [N, Qb, H, heads]
    hx = op.Relu(op.Add(op.MatMul(lx, op.Transpose(x_w1, perm=[1, 0])), x_b1))
    bx = op.Add(op.MatMul(hx, op.Transpose(x_w2, perm=[1, 0])), x_b2)  # [N, Qb, W, heads]
    # Heads first, and the box-less leading rows (zero bias) padded onto the per-axis terms rather than onto the
    # [N, heads, Lq, H*W] sum: the broadcast add then runs along W, not along a 4-8 wide heads axis (ORT: 3x).
    lead = op.Sub(op.Shape(q, start=1, end=2), op.Shape(boxes, start=1, end=2))  # rows without a box
    pads = op.Concat(op.Constant(value_ints=[0, 0]), lead, op.Constant(value_ints=[0, 0, 0, 0, 0]), axis=0)
    by = op.Pad(op.Transpose(by, perm=[0, 3, 1, 2]), pads)  # [N, heads, Lq, H]
    bx = op.Pad(op.Transpose(bx, perm=[0, 3, 1, 2]), pads)  # [N, heads, Lq, W]
    grid = op.Add(op.Unsqueeze(by, op.Constant(value_ints=[4])), op.Unsqueeze(bx, op.Constant(value_ints=[3])))
    bias = op.Reshape(grid, op.Constant(value_ints=[0, 0, 0, -1]))  # [N, heads, Lq, H*W]
    heads = op.Reshape(op.Constant(value_int=num_heads), op.Constant(value_ints=[1]))
    split = op.Concat(op.Constant(value_ints=[0, 0]), heads, op.Constant(value_ints=[-1]), axis=0)
    qh = op.Transpose(op.Reshape(q, split), perm=[0, 2, 1, 3])
    kt = op.Transpose(op.Reshape(k, split), perm=[0, 2, 3, 1])
    vh = op.Transpose(op.Reshape(v, split), perm=[0, 2, 1, 3])
    s = op.Add(op.Mul(op.MatMul(qh, kt), op.CastLike(op.Constant(value_float=scale), q)), bias)
    out = op.MatMul(op.Softmax(s, axis=-1), vh)
    return op.Reshape(op.Transpose(out, perm=[0, 2, 1, 3]), op.Constant(value_ints=[0, 0, -1]))


@onnxscript.script(opset=sam3edge, default_opset=op)
def mask_topk(scores: T, embed: T, pixels: T, proj_weight: T, proj_bias: T, k: Sequence[int], out_h: int,
              out_w: int) -> tuple[T, INT64, T]:
    # k is a one-element INTS attribute so that TopK's K is a Constant node (TensorRT's parser wants a constant K).
    top, idx = op.TopK(scores, op.Constant(value_ints=k), axis=1)
    channels = op.Shape(embed, start=2, end=3)
    gather = op.Expand(op.Unsqueeze(idx, op.Constant(value_ints=[2])), op.Concat(op.Shape(idx), channels, axis=0))
    e = op.GatherElements(embed, gather, axis=1)  # [N, k, C]
    folded = op.MatMul(e, proj_weight)  # W^T e: the 1x1 projection folded into the kept embeddings
    offset = op.MatMul(e, proj_bias)  # [N, k]
    low = op.MatMul(folded, op.Reshape(pixels, op.Constant(value_ints=[0, 0, -1])))  # [N, k, h*w]
    low = op.Reshape(low, op.Concat(op.Shape(low, start=0, end=2), op.Shape(pixels, start=2, end=4), axis=0))
    low = op.Add(low, op.Unsqueeze(offset, op.Constant(value_ints=[2, 3])))
    one = op.Constant(value_ints=[1])
    size = op.Concat(op.Shape(low, start=0, end=2), op.Reshape(op.Constant(value_int=out_h), one),
                     op.Reshape(op.Constant(value_int=out_w), one), axis=0)
    masks = op.Resize(low, None, None, size, mode="linear", coordinate_transformation_mode="pytorch_half_pixel")
    return top, idx, masks


FUNCTIONS = {"prompt_attention": prompt_attention, "box_attention": box_attention, "mask_topk": mask_topk}


# --- export -----------------------------------------------------------------------------------------------------
# The exporter inlines every model-local function when it converts opsets, so translations emit
# bare sam3edge nodes (known to onnx through registered schemas) and :func:`attach_functions` adds
# the bodies to the saved model.

_SIGNATURES = {  # name -> (inputs, outputs (name, type), attributes (name, type))
    "prompt_attention": (["q", "k", "v", "key_bias"], [("out", "T")], [("num_heads", "INT"), ("scale", "FLOAT")]),
    "box_attention": (["q", "k", "v", "boxes", "x_w1", "x_b1", "x_w2", "x_b2", "y_w1", "y_b1", "y_w2", "y_b2"],
                      [("out", "T")], [("height", "INT"), ("width", "INT"), ("num_heads", "INT"), ("scale", "FLOAT")]),
    "mask_topk": (["scores", "embed", "pixels", "proj_weight", "proj_bias"],
                  [("top_scores", "T"), ("indices", "I"), ("masks", "T")],
                  [("k", "INTS"), ("out_h", "INT"), ("out_w", "INT")]),  # k: [k], see mask_topk
}


def register_schemas() -> None:
    """Make the sam3edge ops known to ``onnx.defs`` (the exporter needs a schema to emit a node)."""
    from onnx.defs import OpSchema

    for name, (inputs, outputs, attrs) in _SIGNATURES.items():
        if onnx.defs.has(name, DOMAIN):
            continue
        param = OpSchema.FormalParameter
        onnx.defs.register_schema(OpSchema(
            name, DOMAIN, VERSION, doc=f"sam3edge fused op {name}; see sam3edge.ops.reference.{name}",
            inputs=[param(i, "T") for i in inputs], outputs=[param(o, t) for o, t in outputs],
            type_constraints=[("T", ["tensor(float)", "tensor(float16)"], "float tensors"),
                              ("I", ["tensor(int64)"], "indices")],
            attributes=[OpSchema.Attribute(a, getattr(OpSchema.AttrType, t), a) for a, t in attrs] + [
                OpSchema.Attribute(a, OpSchema.AttrType.STRING, "TensorRT plugin lookup (for_tensorrt)", required=False)
                for a in ("plugin_namespace", "plugin_version")]))


def _prompt_attention(q, k, v, key_bias, num_heads: int, scale: float):
    return sam3edge.prompt_attention(q, k, v, key_bias, num_heads=num_heads, scale=scale)


def _box_attention(q, k, v, boxes, height: int, width: int, x_w1, x_b1, x_w2, x_b2, y_w1, y_b1, y_w2, y_b2,
                   num_heads: int, scale: float):
    return sam3edge.box_attention(q, k, v, boxes, x_w1, x_b1, x_w2, x_b2, y_w1, y_b1, y_w2, y_b2, height=height,
                                  width=width, num_heads=num_heads, scale=scale)


def _mask_topk(scores, embed, pixels, proj_weight, proj_bias, k: int, out_h: int, out_w: int, mode: int):
    # The node always returns logits; sigmoid / threshold are standard ops after it (every backend fuses
    # those pointwise ops itself, and the node keeps one output type).
    top, idx, masks = sam3edge.mask_topk(scores, embed, pixels, proj_weight, proj_bias, k=[k], out_h=out_h,
                                         out_w=out_w)
    if mode == 1:
        masks = op.Sigmoid(masks)
    elif mode == 2:
        masks = op.Cast(op.Greater(masks, op.CastLike(op.Constant(value_float=0.0), masks)), to=onnx.TensorProto.UINT8)
    return top, idx, masks


def translation_table() -> dict:
    """``custom_translation_table`` for ``torch.onnx.export(dynamo=True)``: torch.ops.sam3edge.* -> sam3edge nodes."""
    import torch

    from . import library  # noqa: F401  (registers the torch ops)

    register_schemas()
    ops = torch.ops.sam3edge
    return {ops.prompt_attention.default: _prompt_attention, ops.box_attention.default: _box_attention,
            ops.mask_topk.default: _mask_topk}


def custom_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.domain == DOMAIN]


def attach_functions(model: onnx.ModelProto) -> onnx.ModelProto:
    """Add the function body of every sam3edge op the graph uses (in place), so any ONNX runtime can run it."""
    used = {n.op_type for n in custom_nodes(model)}
    unknown = used - set(FUNCTIONS)
    if unknown:
        raise ValueError(f"graph {model.graph.name!r} has sam3edge nodes {sorted(unknown)} without a known body; "
                         f"known: {sorted(FUNCTIONS)}")
    have = {(f.domain, f.name) for f in model.functions}
    for name in sorted(used):
        if (DOMAIN, name) not in have:
            model.functions.append(FUNCTIONS[name].to_function_proto())
    if used and not any(o.domain == DOMAIN for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid(DOMAIN, VERSION))
    return model


def file_has_custom_nodes(path) -> bool:
    """Whether the ONNX graph at ``path`` has sam3edge nodes (weights not loaded)."""
    return bool(custom_nodes(onnx.load(str(path), load_external_data=False)))


def rewrite_file(path, transform) -> bool:
    """Replace the graph at ``path`` by ``transform(model)`` if it has sam3edge nodes; whether it had any."""
    model = onnx.load(str(path))
    if not custom_nodes(model):
        return False
    onnx.save(transform(model), str(path))
    return True


def inline(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same graph with every sam3edge node replaced by its body (for OpenVINO, which ignores local functions)."""
    from onnx.inliner import inline_local_functions

    out = inline_local_functions(model)
    _give_body_nodes_their_callers_metadata(model, out)
    del out.functions[:]
    kept = [o for o in out.opset_import if o.domain != DOMAIN]
    del out.opset_import[:]
    out.opset_import.extend(kept)
    return out


def _give_body_nodes_their_callers_metadata(before: onnx.ModelProto, after: onnx.ModelProto) -> None:
    """Copy each sam3edge node's metadata (the exporter's module name scopes) onto the nodes of its inlined body.

    onnx's inliner drops it, and the int8 float islands are chosen by module scope
    (:func:`sam3edge.export.onnx.float_islands`): without this, the mask head's projection inside ``mask_topk``
    lost its scope after inlining and OpenVINO int8 quantised it (mask IoU 0.974 instead of 0.981 on the toy
    student). A call's body is every new node reached backwards from the call's outputs without crossing one
    of its inputs (a chained call's body stops at the tensor it receives).
    """
    old_names = {n.name for n in before.graph.node}
    new_nodes = [n for n in after.graph.node if n.name not in old_names]
    producer = {o: n for n in new_nodes for o in n.output}
    for call in custom_nodes(before):
        if not call.metadata_props:
            continue
        stop = set(call.input)
        todo = [o for o in call.output if o in producer]
        seen: set[str] = set()
        while todo:
            node = producer[todo.pop()]
            if node.name in seen:
                continue
            seen.add(node.name)
            if not node.metadata_props:
                node.metadata_props.extend(call.metadata_props)
            todo.extend(i for i in node.input if i in producer and i not in stop)


def for_tensorrt(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy for TensorRT's ONNX parser: sam3edge nodes name their plugin (``sam3edge::<op>``, version 1).

    From TensorRT 10.7 the parser prefers a registered plugin to a node's local function, but looks it
    up by the ``plugin_namespace`` attribute only (not the domain), so that is set; the function bodies
    stay, so a parser without the plugins builds the plain decomposition, and onnxruntime (which ignores
    the extra attributes) still runs the graph.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for node in custom_nodes(out):
        names = {a.name for a in node.attribute}
        if "plugin_namespace" not in names:
            node.attribute.append(onnx.helper.make_attribute("plugin_namespace", DOMAIN))
        if "plugin_version" not in names:
            node.attribute.append(onnx.helper.make_attribute("plugin_version", str(VERSION)))
    return out
