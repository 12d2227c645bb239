/* C ABI of the sam3edge fused-op CUDA kernels.
 *
 * Plain C declarations (no torch, no C++ types) so that the PyTorch extension (binding.cpp)
 * and a TensorRT plugin can call the very same launchers.
 *
 * Conventions shared by every launcher:
 *   - all tensors are contiguous and row-major; shapes are given in the comments;
 *   - every float input and float output of one call has the same dtype:
 *     dtype 0 = float32, 1 = float16 (__half); arithmetic is always accumulated in float32;
 *   - the launch goes on `stream`; the return value is cudaGetLastError() after the launch(es),
 *     cudaErrorInvalidValue when a size or pointer the kernels rely on is out of range (nothing
 *     is launched then), cudaSuccess without a launch when the output is empty.
 */
#ifndef SAM3EDGE_OPS_H
#define SAM3EDGE_OPS_H

#include <cuda_runtime_api.h>
#include <stdint.h>

/* Largest head dim d = C / num_heads: each lane of a warp owns d / 32 output dims in registers. */
#define SAM3EDGE_MAX_HEAD_DIM 128
/* Largest box_attention grid side (height and width each): the per-row BoxRPB tables live in
 * shared memory next to the K/V tile. */
#define SAM3EDGE_MAX_BOX_SIDE 128
/* Largest number of queries Q of mask_topk: one block sorts a whole score row in shared memory. */
#define SAM3EDGE_MAX_TOPK_QUERIES 4096

#ifdef __cplusplus
extern "C" {
#endif

/* out[n,i,hd] = sum_j softmax_j(scale * <q[n,i,hd], k[n,j,hd]> + key_bias[n,j]) v[n,j,hd]
 * q, out [N, Lq, C]; k, v [N, Lk, C]; key_bias [N, Lk]. Requires Lk >= 1, C % num_heads == 0,
 * C / num_heads <= SAM3EDGE_MAX_HEAD_DIM. */
cudaError_t sam3edge_prompt_attention(const void* q, const void* k, const void* v, const void* key_bias,
                                      void* out, int N, int Lq, int Lk, int C, int num_heads, float scale,
                                      int dtype, cudaStream_t stream);

/* Attention of q [N, Lq, C] to k, v [N, height*width, C] with SAM3's BoxRPB bias of
 * boxes [N, Qb, 4] (cx, cy, w, h) for the last Qb query rows (the first Lq - Qb rows get no bias).
 * x_w1 [Dx, 2], x_b1 [Dx], x_w2 [num_heads, Dx], x_b2 [num_heads]; y_* likewise with Dy.
 * Requires 0 <= Qb <= Lq, 1 <= height, width <= SAM3EDGE_MAX_BOX_SIDE, Dx, Dy >= 1 and the head
 * limits of sam3edge_prompt_attention. */
cudaError_t sam3edge_box_attention(const void* q, const void* k, const void* v, const void* boxes,
                                   const void* x_w1, const void* x_b1, const void* x_w2, const void* x_b2,
                                   const void* y_w1, const void* y_b1, const void* y_w2, const void* y_b2,
                                   void* out, int N, int Lq, int C, int height, int width, int Qb, int Dx, int Dy,
                                   int num_heads, float scale, int dtype, cudaStream_t stream);

/* Top-k queries of scores [N, Q] and their masks from embed [N, Q, C] and pixels [N, C, h, w]
 * through the folded 1x1 projection proj_weight [C, C] (out, in), proj_bias [C].
 * Outputs: top_scores [N, k] (dtype), indices [N, k] int64, masks [N, k, out_h, out_w]
 * (dtype for mode 0 = logits and 1 = sigmoid, uint8 for mode 2 = logit > 0).
 * Float32 scratch the caller allocates: fold_e2 [N, k, C], fold_b [N, k], and
 * low_scratch [N, k, h, w] only when (out_h, out_w) != (h, w) (may be NULL otherwise).
 * Requires 0 <= k <= Q <= SAM3EDGE_MAX_TOPK_QUERIES, C, h, w, out_h, out_w >= 1. */
cudaError_t sam3edge_mask_topk(const void* scores, const void* embed, const void* pixels, const void* proj_weight,
                               const void* proj_bias, void* top_scores, int64_t* indices, void* masks,
                               float* fold_e2, float* fold_b, float* low_scratch, int N, int Q, int C, int h, int w,
                               int k, int out_h, int out_w, int mode, int dtype, cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif /* SAM3EDGE_OPS_H */
