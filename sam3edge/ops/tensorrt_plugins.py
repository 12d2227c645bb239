"""TensorRT plugins for the fused ops, through TensorRT's Python plugin API (``tensorrt.plugin``, TensorRT >= 10.6).

Each plugin ``sam3edge::<op>`` runs the same CUDA kernels as the PyTorch custom op (``csrc/``, via
the torch extension), on TensorRT's stream, so there is one kernel code base to test and the
plugin needs no TensorRT headers to build. The ONNX parser maps a ``sam3edge`` node to the plugin
by its op type and ``plugin_namespace`` attribute (:func:`sam3edge.ops.onnx.for_tensorrt`); from
TensorRT 10.7 a registered plugin wins over the node's ONNX function body, and without the plugin
the parser builds the body instead (correct, not fused).

Needs TensorRT, torch with CUDA and ``nvcc`` (or a prebuilt extension) on the device; tested under
``pytest -m tensorrt``. Engines that use these plugins need :func:`register_plugins` called in the
process that deserialises them too.
"""

from __future__ import annotations

_REGISTERED: list[str] = []


def register_plugins() -> list[str]:
    """Register ``sam3edge::prompt_attention``, ``::box_attention`` and ``::mask_topk`` with TensorRT (once)."""
    if _REGISTERED:
        return list(_REGISTERED)
    try:
        import tensorrt as trt
        import tensorrt.plugin as trtp
    except ImportError as e:
        raise RuntimeError("the sam3edge TensorRT plugins need TensorRT >= 10.6 with its Python plugin API "
                           f"(tensorrt.plugin): {e}") from e
    import numpy as np
    import numpy.typing as npt
    import torch

    from . import library  # noqa: F401  (torch.ops.sam3edge.*; their CUDA kernels build on first use)
    from .build import load_extension

    load_extension()  # fail here, with the build log, rather than inside an engine build

    def tensor(t):
        return torch.as_tensor(t, device="cuda")

    def run(stream: int, fn, outputs):
        with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
            results = fn()
            results = results if isinstance(results, tuple) else (results,)
            for out, res in zip(outputs, results):
                tensor(out).copy_(res)

    floats = "FP32|FP16"

    # --- prompt_attention ---
    @trtp.register("sam3edge::prompt_attention")
    def _pa_desc(q: trtp.TensorDesc, k: trtp.TensorDesc, v: trtp.TensorDesc, key_bias: trtp.TensorDesc,
                 num_heads: int, scale: float) -> trtp.TensorDesc:
        return q.like()

    @trtp.autotune("sam3edge::prompt_attention")
    def _pa_tune(q: trtp.TensorDesc, k: trtp.TensorDesc, v: trtp.TensorDesc, key_bias: trtp.TensorDesc,
                 num_heads: int, scale: float, outputs: tuple[trtp.TensorDesc]) -> list[trtp.AutoTuneCombination]:
        return [trtp.AutoTuneCombination(", ".join([floats] * 5), "LINEAR")]

    @trtp.impl("sam3edge::prompt_attention")
    def _pa_impl(q: trtp.Tensor, k: trtp.Tensor, v: trtp.Tensor, key_bias: trtp.Tensor, num_heads: int,
                 scale: float, outputs: tuple[trtp.Tensor], stream: int) -> None:
        run(stream, lambda: torch.ops.sam3edge.prompt_attention(tensor(q), tensor(k), tensor(v), tensor(key_bias),
                                                                num_heads, scale), outputs)

    # --- box_attention ---
    @trtp.register("sam3edge::box_attention")
    def _ba_desc(q: trtp.TensorDesc, k: trtp.TensorDesc, v: trtp.TensorDesc, boxes: trtp.TensorDesc,
                 x_w1: trtp.TensorDesc, x_b1: trtp.TensorDesc, x_w2: trtp.TensorDesc, x_b2: trtp.TensorDesc,
                 y_w1: trtp.TensorDesc, y_b1: trtp.TensorDesc, y_w2: trtp.TensorDesc, y_b2: trtp.TensorDesc,
                 height: int, width: int, num_heads: int, scale: float) -> trtp.TensorDesc:
        return q.like()

    @trtp.autotune("sam3edge::box_attention")
    def _ba_tune(q: trtp.TensorDesc, k: trtp.TensorDesc, v: trtp.TensorDesc, boxes: trtp.TensorDesc,
                 x_w1: trtp.TensorDesc, x_b1: trtp.TensorDesc, x_w2: trtp.TensorDesc, x_b2: trtp.TensorDesc,
                 y_w1: trtp.TensorDesc, y_b1: trtp.TensorDesc, y_w2: trtp.TensorDesc, y_b2: trtp.TensorDesc,
                 height: int, width: int, num_heads: int, scale: float,
                 outputs: tuple[trtp.TensorDesc]) -> list[trtp.AutoTuneCombination]:
        return [trtp.AutoTuneCombination(", ".join([floats] * 13), "LINEAR")]

    @trtp.impl("sam3edge::box_attention")
    def _ba_impl(q: trtp.Tensor, k: trtp.Tensor, v: trtp.Tensor, boxes: trtp.Tensor, x_w1: trtp.Tensor,
                 x_b1: trtp.Tensor, x_w2: trtp.Tensor, x_b2: trtp.Tensor, y_w1: trtp.Tensor, y_b1: trtp.Tensor,
                 y_w2: trtp.Tensor, y_b2: trtp.Tensor, height: int, width: int, num_heads: int, scale: float,
                 outputs: tuple[trtp.Tensor], stream: int) -> None:
        args = [tensor(t) for t in (q, k, v, boxes)]
        mlps = [tensor(t) for t in (x_w1, x_b1, x_w2, x_b2, y_w1, y_b1, y_w2, y_b2)]
        run(stream, lambda: torch.ops.sam3edge.box_attention(*args, height, width, *mlps, num_heads, scale), outputs)

    # --- mask_topk (the ONNX node returns logits: mode 0) ---
    # k is a one-element INTS attribute in the ONNX node (so the function body's TopK has a constant K).
    @trtp.register("sam3edge::mask_topk")
    def _mt_desc(scores: trtp.TensorDesc, embed: trtp.TensorDesc, pixels: trtp.TensorDesc,
                 proj_weight: trtp.TensorDesc, proj_bias: trtp.TensorDesc, k: npt.NDArray[np.int32], out_h: int,
                 out_w: int) -> tuple[trtp.TensorDesc, trtp.TensorDesc, trtp.TensorDesc]:
        n, kk = scores.shape_expr[0], int(k[0])
        return (trtp.from_shape_expr((n, kk), dtype=scores.dtype),
                trtp.from_shape_expr((n, kk), dtype=trt.int64),
                trtp.from_shape_expr((n, kk, out_h, out_w), dtype=pixels.dtype))

    @trtp.autotune("sam3edge::mask_topk")
    def _mt_tune(scores: trtp.TensorDesc, embed: trtp.TensorDesc, pixels: trtp.TensorDesc,
                 proj_weight: trtp.TensorDesc, proj_bias: trtp.TensorDesc, k: npt.NDArray[np.int32], out_h: int,
                 out_w: int, outputs: tuple[trtp.TensorDesc]) -> list[trtp.AutoTuneCombination]:
        return [trtp.AutoTuneCombination(f"{', '.join([floats] * 6)}, INT64, {floats}", "LINEAR")]

    @trtp.impl("sam3edge::mask_topk")
    def _mt_impl(scores: trtp.Tensor, embed: trtp.Tensor, pixels: trtp.Tensor, proj_weight: trtp.Tensor,
                 proj_bias: trtp.Tensor, k: npt.NDArray[np.int32], out_h: int, out_w: int,
                 outputs: tuple[trtp.Tensor], stream: int) -> None:
        args = [tensor(t) for t in (scores, embed, pixels, proj_weight, proj_bias)]
        run(stream, lambda: torch.ops.sam3edge.mask_topk(*args, int(k[0]), out_h, out_w, 0), outputs)

    _REGISTERED.extend(["sam3edge::prompt_attention", "sam3edge::box_attention", "sam3edge::mask_topk"])
    return list(_REGISTERED)
