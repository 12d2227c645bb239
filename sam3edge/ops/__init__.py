"""Fused ops for a student's heads, with one contract and several implementations.

After the encoders shrink, a student's time on an edge GPU goes to chains of small memory-bound
kernels in the heads. :data:`OPS` lists the three we fuse, each with why it was chosen (figures:
``benchmarks/profile_heads.py``, results in ``benchmarks/results/profile_heads_*``). Each op has:

* a PyTorch reference (:mod:`.reference`), the definition, which runs anywhere;
* a ``torch.library`` custom op with a fake kernel (:mod:`.library`): one node for ``torch.export``;
* CUDA kernels (``csrc/``; C++ built on demand as a torch extension, :mod:`.build`);
* an ONNX node in the ``sam3edge`` domain carrying an ONNX function body of standard operators
  (:mod:`.onnx`), so onnxruntime and OpenVINO run it without any plugin;
* a TensorRT plugin (:mod:`.tensorrt_plugins`) that runs the same CUDA kernels.

The heads use them inside ``with fused_ops():`` (:mod:`.mode`); outside, nothing changes.
"""

from __future__ import annotations

from dataclasses import dataclass

from .mode import fused_ops, fused_ops_enabled

__all__ = ["OPS", "OpInfo", "fused_ops", "fused_ops_enabled"]


@dataclass(frozen=True)
class OpInfo:
    name: str  # torch.ops.sam3edge.<name>, ONNX sam3edge::<name>, TensorRT plugin sam3edge::<name>
    replaces: str  # the unfused chain
    avoids: str  # what the fused op never materialises
    why: str  # the measurement it was chosen from


OPS: dict[str, OpInfo] = {o.name: o for o in (
    OpInfo("prompt_attention",
           replaces="QK^T matmul, scale, key-padding bias add, softmax, PV matmul, head transposes "
                    "(fusion encoder, decoder text cross-attention, mask decoder prompt attention)",
           avoids="the [N, heads, Lq, Lk] score and probability tensors and the transposed head copies",
           why="edge-s, 512 px, CPU 2 threads: the fusion encoder's image->prompt cross-attention is 2.7 ms of the "
               "200 ms decoder (1.4 %); on a GPU each of its 6 kernels is launch- and bandwidth-bound at "
               "Lk <= 64, and the same op serves 3 more attentions per decoder layer and the mask decoder. The "
               "output projection stays a cuBLAS GEMM: it is compute-bound (C x C per token) and a hand kernel "
               "without tensor cores would lose to it."),
    OpInfo("box_attention",
           replaces="BoxRPB (box to cell log deltas, two MLPs per axis, broadcast sum to [N, heads, 1+Q, H*W], "
                    "pad for the presence token) then attention with that bias",
           avoids="the [N, heads, 1+Q, H*W] fp32 bias (per layer and prompt 8 x 51 x 32 x 32 x 4 B = 1.6 MiB at "
                  "edge-s, 8 x 201 x 72 x 72 x 4 B = 31.8 MiB at SAM3's size) and the score tensor of the same size",
           why="edge-s CPU: BoxRPB 3.8 ms + the biased attention 7.7 ms = 5.7 % of the decoder, 3 layers; the "
               "bias is built from H + W per-axis terms, so computing it inside the kernel costs H + W MLP "
               "evaluations per query instead of reading H x W x heads floats."),
    OpInfo("mask_topk",
           replaces="top-k of the scores, gather, 1x1 instance projection of every pixel embedding, "
                    "query x pixel product, (upsample, sigmoid / threshold at the runtime)",
           avoids="the C x h x w projected pixel embeddings and any Q x h x w logits: the projection is folded "
                  "into the k kept embeddings (W^T e), so only k x out_h x out_w values are written",
           why="edge-s CPU: the top-K mask path is 16.5 ms (8.3 % of the decoder), 13.7 ms of it the 1x1 "
               "projection of 128 x 128 x 256 pixel features that the fold replaces by a 20 x 256 x 256 matmul "
               "(measured: 8.4x faster mask path on CPU, benchmarks/results/fused_ops_cpu_*.md)."),
)}
