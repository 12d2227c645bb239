// CUDA kernels of the sam3edge fused ops (see sam3edge_ops.h for the contract and
// sam3edge/ops/reference.py for the PyTorch definitions they must match).
//
// Only the CUDA runtime and cuda_fp16.h: a TensorRT plugin links the same launchers.
// Every kernel is templated on the storage type T (float or __half) and does all arithmetic in
// float32; precise expf/log2f (no fast math) because the outputs are compared to PyTorch.

#include "sam3edge_ops.h"

#include <climits>
#include <cmath>
#include <cstddef>
#include <cstdint>

#include <cuda_fp16.h>
#include <cuda_runtime.h>

namespace {

constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kWarp = 32;

// ---------------------------------------------------------------------------------------------
// Storage <-> float32
// ---------------------------------------------------------------------------------------------

template <typename T> __device__ __forceinline__ float to_f(T x);
template <> __device__ __forceinline__ float to_f<float>(float x) { return x; }
template <> __device__ __forceinline__ float to_f<__half>(__half x) { return __half2float(x); }

template <typename T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_f<__half>(float x) { return __float2half_rn(x); }

__device__ __forceinline__ float warp_max(float x) {
  for (int o = kWarp / 2; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(kFullMask, x, o));
  return x;
}

__device__ __forceinline__ float warp_sum(float x) {
  for (int o = kWarp / 2; o > 0; o >>= 1) x += __shfl_xor_sync(kFullMask, x, o);
  return x;
}

// One dynamic shared-memory buffer for all kernels; float4 so that every view is 16-byte aligned.
__device__ __forceinline__ float* dyn_smem() {
  extern __shared__ float4 sam3edge_dyn_smem[];
  return reinterpret_cast<float*>(sam3edge_dyn_smem);
}

// ---------------------------------------------------------------------------------------------
// Attention core shared by prompt_attention and box_attention.
//
// A block serves one (n, head) and kRowsPerBlock query rows, one warp per row, so every K/V tile
// read from global memory is reused by all the rows of the block. Keys are streamed in tiles of
// 32 through shared memory: lane j scores key j, then the probabilities are broadcast with
// __shfl_sync for P.V, where lane owns output dims lane, lane + 32, ... (no reduction needed).
// ---------------------------------------------------------------------------------------------

constexpr int kRowsPerBlock = 8;
constexpr int kAttnThreads = kRowsPerBlock * kWarp;
constexpr int kKeyTile = kWarp;
constexpr int kMaxDimsPerLane = SAM3EDGE_MAX_HEAD_DIM / kWarp;

// K rows are read across lanes (lane = key) at the same column: an odd row stride puts the
// 32 lanes in 32 different banks whatever d is. V and q are read along the row (no padding).
__host__ __device__ constexpr int k_stride(int d) { return d | 1; }

// Floats of shared memory used by attend_rows: K tile, V tile, one q row per warp.
__host__ __device__ constexpr int attn_smem_floats(int d) {
  return kKeyTile * k_stride(d) + kKeyTile * d + kRowsPerBlock * d;
}

// Online-softmax state of one query row (one warp): running max m, running denominator l and
// this lane's share of the unnormalised output.
struct RowState {
  float m;
  float l;
  float acc[kMaxDimsPerLane];
};

// Block-cooperative copy of keys [first_row, first_row + nkeys) of one head into shared memory,
// converted to float once here rather than at every use.
template <typename T>
__device__ void load_kv_tile(const T* __restrict__ k, const T* __restrict__ v, size_t first_row, int nkeys,
                             int C, int head_off, int d, float* Ks, float* Vs) {
  const int ks = k_stride(d);
  for (int e = threadIdx.x; e < nkeys * d; e += blockDim.x) {
    const int j = e / d, c = e - j * d;
    const size_t g = (first_row + j) * C + head_off + c;  // consecutive threads: consecutive channels
    Ks[j * ks + c] = to_f(k[g]);
    Vs[j * d + c] = to_f(v[g]);
  }
}

// Folds one tile into the row state; s is this lane's biased score (-inf past the tile end).
__device__ __forceinline__ void fold_tile(RowState& st, float s, int nkeys, const float* Vs, int d, int lane) {
  const float m_new = fmaxf(st.m, warp_max(s));
  // A tile whose scores are all -inf (only an explicit -inf bias does that; the documented
  // padding is a finite very negative value) would give exp(-inf - -inf) = NaN: use 0 as the
  // reference then, so such keys just get weight 0.
  const float m_ref = (m_new == -INFINITY) ? 0.f : m_new;
  const float corr = expf(st.m - m_ref);
  const float p = expf(s - m_ref);
  st.m = m_new;
  st.l *= corr;
#pragma unroll
  for (int t = 0; t < kMaxDimsPerLane; ++t) st.acc[t] *= corr;
  for (int j = 0; j < nkeys; ++j) {
    const float pj = __shfl_sync(kFullMask, p, j);
    st.l += pj;  // every lane sums the same broadcast values: l needs no reduction
    const float* vrow = Vs + j * d;
#pragma unroll
    for (int t = 0; t < kMaxDimsPerLane; ++t) {
      const int c = lane + t * kWarp;
      if (c < d) st.acc[t] += pj * vrow[c];
    }
  }
}

// Attention of query row `row` (this warp's) of head h of batch n to all Lk keys.
// bias_of_key(key) gives the additive bias of this row; it is only called for rows < Lq.
// Every warp of the block must call this (it synchronises the block), even past Lq.
template <typename T, typename BiasFn>
__device__ void attend_rows(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                            T* __restrict__ out, int n, int h, int row, int Lq, int Lk, int C, int d, float scale,
                            float* smem, BiasFn bias_of_key) {
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int ks = k_stride(d);
  float* Ks = smem;
  float* Vs = Ks + kKeyTile * ks;
  float* qs = Vs + kKeyTile * d + warp * d;
  const bool active = row < Lq;
  const int head_off = h * d;
  const size_t q_off = ((size_t)n * Lq + row) * C + head_off;

  if (active)
    for (int c = lane; c < d; c += kWarp) qs[c] = to_f(q[q_off + c]);
  __syncwarp();

  RowState st;
  st.m = -INFINITY;
  st.l = 0.f;
#pragma unroll
  for (int t = 0; t < kMaxDimsPerLane; ++t) st.acc[t] = 0.f;

  for (int key0 = 0; key0 < Lk; key0 += kKeyTile) {
    const int nkeys = min(kKeyTile, Lk - key0);
    __syncthreads();  // every warp is done with the previous tile
    load_kv_tile(k, v, (size_t)n * Lk + key0, nkeys, C, head_off, d, Ks, Vs);
    __syncthreads();
    if (!active) continue;  // idle rows still take part in the loads and barriers

    float s = -INFINITY;
    if (lane < nkeys) {
      const float* krow = Ks + lane * ks;
      float dot = 0.f;
#pragma unroll 8
      for (int c = 0; c < d; ++c) dot += qs[c] * krow[c];
      // Same order as the reference: (q.k) * scale + bias, all in float32.
      s = dot * scale + bias_of_key(key0 + lane);
    }
    fold_tile(st, s, nkeys, Vs, d, lane);
  }

  if (!active) return;
#pragma unroll
  for (int t = 0; t < kMaxDimsPerLane; ++t) {
    const int c = lane + t * kWarp;
    if (c < d) out[q_off + c] = from_f<T>(st.acc[t] / st.l);
  }
}

// ---------------------------------------------------------------------------------------------
// Op 1: prompt_attention. Grid: one block per (n, head, tile of kRowsPerBlock query rows),
// flattened into x so that no grid dimension limit applies to N.
// ---------------------------------------------------------------------------------------------

template <typename T>
__global__ void __launch_bounds__(kAttnThreads)
prompt_attention_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                        const T* __restrict__ key_bias, T* __restrict__ out, int Lq, int Lk, int C, int num_heads,
                        int d, float scale, int q_tiles) {
  const int q_tile = blockIdx.x % q_tiles;
  const int nh = blockIdx.x / q_tiles;
  const int h = nh % num_heads, n = nh / num_heads;
  const int row = q_tile * kRowsPerBlock + threadIdx.x / kWarp;
  // The bias row is read straight from global memory: lane = key makes it a coalesced load,
  // and it saves a shared buffer and a barrier.
  const T* bias_row = key_bias + (size_t)n * Lk;
  attend_rows(q, k, v, out, n, h, row, Lq, Lk, C, d, scale, dyn_smem(),
              [=](int key) { return to_f(bias_row[key]); });
}

// ---------------------------------------------------------------------------------------------
// Op 2: box_attention (BoxRPB computed in the kernel).
// ---------------------------------------------------------------------------------------------

// SAM3's compression of box-to-cell distances: sign(8t) log2(1 + |8t|) / log2(8).
__device__ __forceinline__ float log_distance(float t) {
  const float s = 8.f * t;
  return copysignf(log2f(1.f + fabsf(s)), s) / 3.f;  // copysign keeps sign(0) * 0 = 0
}

// One axis of BoxRPB for one head: bias[p] = b2 + sum_m w2h[m] relu(w1[m,0] f(p/npos - lo)
// + w1[m,1] f(p/npos - hi) + b1[m]). Lane = position keeps the D-long sum in one thread (no
// shuffles), and all lanes read the same weight at a time, which the cache broadcasts.
template <typename T>
__device__ void box_rpb_axis(float* bias, int npos, float lo, float hi, const T* __restrict__ w1,
                             const T* __restrict__ b1, const T* __restrict__ w2h, float b2, int D, int lane) {
  for (int p = lane; p < npos; p += kWarp) {
    const float t = (float)p / (float)npos;  // cell corner, as SAM3 was trained
    const float f_lo = log_distance(t - lo), f_hi = log_distance(t - hi);
    float acc = 0.f;
    for (int m = 0; m < D; ++m) {
      const float hidden = to_f(w1[2 * m]) * f_lo + to_f(w1[2 * m + 1]) * f_hi + to_f(b1[m]);
      acc += to_f(w2h[m]) * fmaxf(hidden, 0.f);
    }
    bias[p] = acc + b2;
  }
}

// Grid as prompt_attention. Each warp first builds its row's per-axis tables by[H], bx[W] for
// head h in shared memory (H + W MLP evaluations instead of H * W), then bias(r, c) = by[r] + bx[c].
template <typename T>
__global__ void __launch_bounds__(kAttnThreads)
box_attention_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                     const T* __restrict__ boxes, const T* __restrict__ x_w1, const T* __restrict__ x_b1,
                     const T* __restrict__ x_w2, const T* __restrict__ x_b2, const T* __restrict__ y_w1,
                     const T* __restrict__ y_b1, const T* __restrict__ y_w2, const T* __restrict__ y_b2,
                     T* __restrict__ out, int Lq, int C, int height, int width, int Qb, int Dx, int Dy,
                     int num_heads, int d, float scale, int q_tiles) {
  const int q_tile = blockIdx.x % q_tiles;
  const int nh = blockIdx.x / q_tiles;
  const int h = nh % num_heads, n = nh / num_heads;
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int row = q_tile * kRowsPerBlock + warp;

  float* smem = dyn_smem();
  float* by = smem + attn_smem_floats(d) + warp * (height + width);
  float* bx = by + height;

  if (row < Lq) {
    const int box = row - (Lq - Qb);  // the first Lq - Qb rows (presence token) have no box
    if (box >= 0) {
      const T* b = boxes + ((size_t)n * Qb + box) * 4;
      const float cx = to_f(b[0]), cy = to_f(b[1]), bw = to_f(b[2]), bh = to_f(b[3]);
      box_rpb_axis(by, height, cy - 0.5f * bh, cy + 0.5f * bh, y_w1, y_b1, y_w2 + (size_t)h * Dy,
                   to_f(y_b2[h]), Dy, lane);
      box_rpb_axis(bx, width, cx - 0.5f * bw, cx + 0.5f * bw, x_w1, x_b1, x_w2 + (size_t)h * Dx,
                   to_f(x_b2[h]), Dx, lane);
    } else {
      for (int p = lane; p < height; p += kWarp) by[p] = 0.f;
      for (int p = lane; p < width; p += kWarp) bx[p] = 0.f;
    }
  }
  __syncwarp();  // the tables are private to this warp

  attend_rows(q, k, v, out, n, h, row, Lq, height * width, C, d, scale, smem, [=](int key) {
    const int r = key / width;
    return by[r] + bx[key - r * width];
  });
}

// ---------------------------------------------------------------------------------------------
// Op 3: mask_topk.
// ---------------------------------------------------------------------------------------------

constexpr int kSortThreads = 512;
constexpr int kFoldThreads = 256;
constexpr int kMaskThreads = 256;   // pixels per block of the logits kernel
constexpr int kMasksPerBlock = 16;  // masks per block: each pixel value read feeds 16 FMAs
constexpr int kChanChunk = 32;      // channels of folded embeddings staged per step
constexpr int kUpsampleThreads = 256;

// Mask output modes; kModeRaw is the internal float32 scratch before upsampling.
constexpr int kModeLogits = 0, kModeSigmoid = 1, kModeBinary = 2, kModeRaw = -1;

template <typename T>
__device__ __forceinline__ void store_mask(void* out, size_t i, float m, int mode) {
  switch (mode) {
    case kModeLogits: static_cast<T*>(out)[i] = from_f<T>(m); break;
    case kModeSigmoid: static_cast<T*>(out)[i] = from_f<T>(1.f / (1.f + expf(-m))); break;
    case kModeBinary: static_cast<uint8_t*>(out)[i] = m > 0.f ? 1 : 0; break;
    default: static_cast<float*>(out)[i] = m; break;
  }
}

// Total order as an unsigned key: larger float -> larger key, NaN above everything (as
// torch.topk ranks NaN), -0 == +0 so that zeros tie and fall back to the index order.
__device__ __forceinline__ uint32_t order_key(float x) {
  if (isnan(x)) return 0xffffffffu;
  if (x == 0.f) x = 0.f;
  const uint32_t u = __float_as_uint(x);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// Does element (ka, ia) come before (kb, ib)? Score descending, then index ascending.
__device__ __forceinline__ bool ranks_before(uint32_t ka, int ia, uint32_t kb, int ib) {
  return ka > kb || (ka == kb && ia < ib);
}

// Kernel A: one block per batch row bitonic-sorts the whole row (padded to P = 2^p >= Q) in
// shared memory; deterministic, and the cost does not grow with k.
template <typename T>
__global__ void __launch_bounds__(kSortThreads)
topk_kernel(const T* __restrict__ scores, T* __restrict__ top_scores, int64_t* __restrict__ indices, int Q, int P,
            int k) {
  uint32_t* keys = reinterpret_cast<uint32_t*>(dyn_smem());
  int* idx = reinterpret_cast<int*>(keys + P);
  const T* row = scores + (size_t)blockIdx.x * Q;

  for (int i = threadIdx.x; i < P; i += blockDim.x) {
    // Padding gets key 0 (below -inf's key) and the largest index: it always sorts last.
    keys[i] = i < Q ? order_key(to_f(row[i])) : 0u;
    idx[i] = i < Q ? i : INT_MAX;
  }
  __syncthreads();

  for (int size = 2; size <= P; size <<= 1) {
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      for (int pair = threadIdx.x; pair < P / 2; pair += blockDim.x) {
        const int i = 2 * stride * (pair / stride) + pair % stride, j = i + stride;
        // Sub-sequences alternate direction so that each merge step sees a bitonic sequence;
        // at size == P every i has (i & size) == 0: the final order is "ranks_before".
        const bool forward = (i & size) == 0;
        const bool swap = forward ? ranks_before(keys[j], idx[j], keys[i], idx[i])
                                  : ranks_before(keys[i], idx[i], keys[j], idx[j]);
        if (swap) {
          const uint32_t tk = keys[i]; keys[i] = keys[j]; keys[j] = tk;
          const int ti = idx[i]; idx[i] = idx[j]; idx[j] = ti;
        }
      }
      __syncthreads();
    }
  }

  for (int t = threadIdx.x; t < k; t += blockDim.x) {
    const size_t o = (size_t)blockIdx.x * k + t;
    indices[o] = idx[t];
    top_scores[o] = row[idx[t]];  // the stored value itself, bit-exact
  }
}

// Kernel B: folds the 1x1 instance projection into each kept embedding (one block per (n, t)):
// e2[c] = sum_j W[j, c] e[j] and b = sum_j e[j] bias[j], so the pixels never get projected.
// e[j] is read from global memory by all threads at once (a broadcast), so C has no limit.
template <typename T>
__global__ void __launch_bounds__(kFoldThreads)
fold_kernel(const T* __restrict__ embed, const T* __restrict__ proj_weight, const T* __restrict__ proj_bias,
            const int64_t* __restrict__ indices, float* __restrict__ fold_e2, float* __restrict__ fold_b, int Q,
            int C, int k) {
  const int nt = blockIdx.x;  // n * k + t
  const int n = nt / k;
  const T* e = embed + ((size_t)n * Q + (size_t)indices[nt]) * C;

  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    float acc = 0.f;
    for (int j = 0; j < C; ++j) acc += to_f(proj_weight[(size_t)j * C + c]) * to_f(e[j]);  // coalesced in c
    fold_e2[(size_t)nt * C + c] = acc;
  }
  if (threadIdx.x < kWarp) {
    float acc = 0.f;
    for (int j = threadIdx.x; j < C; j += kWarp) acc += to_f(e[j]) * to_f(proj_bias[j]);
    acc = warp_sum(acc);
    if (threadIdx.x == 0) fold_b[nt] = acc;
  }
}

// Kernel C: logits[n, t, p] = e2[n, t, :] . pixels[n, :, p] + b[n, t] for kMasksPerBlock masks and
// kMaskThreads pixels per block (thread = pixel: coalesced along x). The folded embeddings are
// staged [channel][mask] so that one broadcast float4 read serves 4 masks.
// Grid: flattened (n, mask tile, pixel tile), pixel tile fastest.
template <typename T>
__global__ void __launch_bounds__(kMaskThreads)
mask_logits_kernel(const T* __restrict__ pixels, const float* __restrict__ fold_e2,
                   const float* __restrict__ fold_b, void* __restrict__ out, int C, int hw, int k, int p_tiles,
                   int t_tiles, int mode) {
  __shared__ float4 e2s[kChanChunk][kMasksPerBlock / 4];
  float* e2f = reinterpret_cast<float*>(e2s);
  int b = blockIdx.x;
  const int p_tile = b % p_tiles;
  b /= p_tiles;
  const int t0 = (b % t_tiles) * kMasksPerBlock, n = b / t_tiles;
  const int p = p_tile * kMaskThreads + threadIdx.x;
  const T* px = pixels + (size_t)n * C * hw + p;

  float acc[kMasksPerBlock];
#pragma unroll
  for (int t = 0; t < kMasksPerBlock; ++t) acc[t] = 0.f;

  for (int c0 = 0; c0 < C; c0 += kChanChunk) {
    const int nc = min(kChanChunk, C - c0);
    __syncthreads();  // the previous chunk is consumed
    for (int e = threadIdx.x; e < kChanChunk * kMasksPerBlock; e += blockDim.x) {
      const int tt = e / kChanChunk, cc = e % kChanChunk;  // global read coalesced along c
      const int t = t0 + tt;
      e2f[cc * kMasksPerBlock + tt] = (cc < nc && t < k) ? fold_e2[((size_t)n * k + t) * C + c0 + cc] : 0.f;
    }
    __syncthreads();
    if (p < hw) {
      for (int cc = 0; cc < nc; ++cc) {
        const float x = to_f(px[(size_t)(c0 + cc) * hw]);
#pragma unroll
        for (int t4 = 0; t4 < kMasksPerBlock / 4; ++t4) {
          const float4 w = e2s[cc][t4];
          acc[4 * t4 + 0] += w.x * x;
          acc[4 * t4 + 1] += w.y * x;
          acc[4 * t4 + 2] += w.z * x;
          acc[4 * t4 + 3] += w.w * x;
        }
      }
    }
  }

  if (p >= hw) return;
#pragma unroll
  for (int tt = 0; tt < kMasksPerBlock; ++tt) {
    const int t = t0 + tt;
    if (t < k) {
      const size_t nt = (size_t)n * k + t;
      store_mask<T>(out, nt * hw + p, acc[tt] + fold_b[nt], mode);
    }
  }
}

// Kernel D: bilinear resize of the float32 logits [planes, h, w] to [planes, out_h, out_w] exactly
// as torch's upsample_bilinear2d (align_corners=False, no scale factor) plus the activation.
// Grid-stride over the output, x fastest (coalesced stores).
template <typename T>
__global__ void __launch_bounds__(kUpsampleThreads)
upsample_kernel(const float* __restrict__ low, void* __restrict__ out, int h, int w, int out_h, int out_w,
                size_t total, int mode) {
  const float sy = (float)h / (float)out_h, sx = (float)w / (float)out_w;
  for (size_t o = (size_t)blockIdx.x * blockDim.x + threadIdx.x; o < total; o += (size_t)gridDim.x * blockDim.x) {
    const int x = (int)(o % out_w);
    const size_t r = o / out_w;
    const int y = (int)(r % out_h);
    const size_t plane = r / out_h;
    // area_pixel_compute_source_index: src = scale * (dst + 0.5) - 0.5, clamped below at 0.
    const float fy = fmaxf(sy * ((float)y + 0.5f) - 0.5f, 0.f);
    const float fx = fmaxf(sx * ((float)x + 0.5f) - 0.5f, 0.f);
    const int y0 = (int)fy, x0 = (int)fx;
    const int y1 = y0 + (y0 < h - 1 ? 1 : 0), x1 = x0 + (x0 < w - 1 ? 1 : 0);
    const float ly1 = fy - (float)y0, ly0 = 1.f - ly1;
    const float lx1 = fx - (float)x0, lx0 = 1.f - lx1;
    const float* src = low + plane * h * w;
    const float m = ly0 * (lx0 * src[y0 * w + x0] + lx1 * src[y0 * w + x1]) +
                    ly1 * (lx0 * src[y1 * w + x0] + lx1 * src[y1 * w + x1]);
    store_mask<T>(out, o, m, mode);
  }
}

// ---------------------------------------------------------------------------------------------
// Launchers (templated bodies; the extern "C" entry points below dispatch on dtype).
// ---------------------------------------------------------------------------------------------

// Checks the head split both attention ops rely on; fills d and the flattened grid size.
bool attention_grid(int N, int Lq, int C, int num_heads, int* d, int* q_tiles, int* blocks) {
  if (N < 0 || Lq < 0 || C <= 0 || num_heads <= 0 || C % num_heads != 0) return false;
  *d = C / num_heads;
  if (*d > SAM3EDGE_MAX_HEAD_DIM) return false;
  *q_tiles = (Lq + kRowsPerBlock - 1) / kRowsPerBlock;
  const long long b = (long long)N * num_heads * *q_tiles;
  if (b > INT_MAX) return false;
  *blocks = (int)b;
  return true;
}

template <typename T>
cudaError_t launch_prompt_attention(const void* q, const void* k, const void* v, const void* key_bias, void* out,
                                    int N, int Lq, int Lk, int C, int num_heads, float scale, cudaStream_t stream) {
  int d = 0, q_tiles = 0, blocks = 0;
  if (!attention_grid(N, Lq, C, num_heads, &d, &q_tiles, &blocks) || Lk < 1) return cudaErrorInvalidValue;
  if (blocks == 0) return cudaSuccess;
  if (!q || !k || !v || !key_bias || !out) return cudaErrorInvalidValue;
  const size_t smem = sizeof(float) * attn_smem_floats(d);  // <= 37 KB at d = 128
  prompt_attention_kernel<T><<<blocks, kAttnThreads, smem, stream>>>(
      static_cast<const T*>(q), static_cast<const T*>(k), static_cast<const T*>(v),
      static_cast<const T*>(key_bias), static_cast<T*>(out), Lq, Lk, C, num_heads, d, scale, q_tiles);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_box_attention(const void* q, const void* k, const void* v, const void* boxes, const void* x_w1,
                                 const void* x_b1, const void* x_w2, const void* x_b2, const void* y_w1,
                                 const void* y_b1, const void* y_w2, const void* y_b2, void* out, int N, int Lq,
                                 int C, int height, int width, int Qb, int Dx, int Dy, int num_heads, float scale,
                                 cudaStream_t stream) {
  int d = 0, q_tiles = 0, blocks = 0;
  if (!attention_grid(N, Lq, C, num_heads, &d, &q_tiles, &blocks)) return cudaErrorInvalidValue;
  if (height < 1 || height > SAM3EDGE_MAX_BOX_SIDE || width < 1 || width > SAM3EDGE_MAX_BOX_SIDE)
    return cudaErrorInvalidValue;
  if (Qb < 0 || Qb > Lq || Dx < 1 || Dy < 1) return cudaErrorInvalidValue;
  if (blocks == 0) return cudaSuccess;
  if (!q || !k || !v || (Qb > 0 && !boxes) || !x_w1 || !x_b1 || !x_w2 || !x_b2 || !y_w1 || !y_b1 || !y_w2 ||
      !y_b2 || !out)
    return cudaErrorInvalidValue;
  // <= 44.2 KB at d = 128 and 128 x 128: under the 48 KB that needs no opt-in.
  const size_t smem = sizeof(float) * (attn_smem_floats(d) + kRowsPerBlock * (height + width));
  box_attention_kernel<T><<<blocks, kAttnThreads, smem, stream>>>(
      static_cast<const T*>(q), static_cast<const T*>(k), static_cast<const T*>(v), static_cast<const T*>(boxes),
      static_cast<const T*>(x_w1), static_cast<const T*>(x_b1), static_cast<const T*>(x_w2),
      static_cast<const T*>(x_b2), static_cast<const T*>(y_w1), static_cast<const T*>(y_b1),
      static_cast<const T*>(y_w2), static_cast<const T*>(y_b2), static_cast<T*>(out), Lq, C, height, width, Qb,
      Dx, Dy, num_heads, d, scale, q_tiles);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_mask_topk(const void* scores, const void* embed, const void* pixels, const void* proj_weight,
                             const void* proj_bias, void* top_scores, int64_t* indices, void* masks, float* fold_e2,
                             float* fold_b, float* low_scratch, int N, int Q, int C, int h, int w, int k, int out_h,
                             int out_w, int mode, cudaStream_t stream) {
  if (N < 0 || Q < 0 || Q > SAM3EDGE_MAX_TOPK_QUERIES || k < 0 || k > Q || C < 1 || h < 1 || w < 1 || out_h < 1 ||
      out_w < 1 || mode < kModeLogits || mode > kModeBinary)
    return cudaErrorInvalidValue;
  if (N == 0 || k == 0) return cudaSuccess;
  const bool resize = out_h != h || out_w != w;
  const long long hw = (long long)h * w;
  const long long nk = (long long)N * k;
  const int t_tiles = (k + kMasksPerBlock - 1) / kMasksPerBlock;
  const long long p_tiles = (hw + kMaskThreads - 1) / kMaskThreads;
  if (hw > INT_MAX || nk > INT_MAX || (long long)N * t_tiles * p_tiles > INT_MAX) return cudaErrorInvalidValue;
  if (!scores || !embed || !pixels || !proj_weight || !proj_bias || !top_scores || !indices || !masks ||
      !fold_e2 || !fold_b || (resize && !low_scratch))
    return cudaErrorInvalidValue;

  int P = 1;
  while (P < Q) P <<= 1;
  topk_kernel<T><<<N, kSortThreads, P * (sizeof(uint32_t) + sizeof(int)), stream>>>(
      static_cast<const T*>(scores), static_cast<T*>(top_scores), indices, Q, P, k);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;

  fold_kernel<T><<<(int)nk, kFoldThreads, 0, stream>>>(
      static_cast<const T*>(embed), static_cast<const T*>(proj_weight), static_cast<const T*>(proj_bias), indices,
      fold_e2, fold_b, Q, C, k);
  if ((err = cudaGetLastError()) != cudaSuccess) return err;

  // Without a resize the logits kernel writes the final masks (activation included) directly.
  mask_logits_kernel<T><<<(int)((long long)N * t_tiles * p_tiles), kMaskThreads, 0, stream>>>(
      static_cast<const T*>(pixels), fold_e2, fold_b, resize ? static_cast<void*>(low_scratch) : masks, C, (int)hw,
      k, (int)p_tiles, t_tiles, resize ? kModeRaw : mode);
  if ((err = cudaGetLastError()) != cudaSuccess) return err;
  if (!resize) return cudaSuccess;

  const size_t total = (size_t)nk * out_h * out_w;
  const size_t want = (total + kUpsampleThreads - 1) / kUpsampleThreads;
  const int grid = (int)(want < (size_t)(1 << 20) ? want : (size_t)(1 << 20));  // grid-stride covers the rest
  upsample_kernel<T><<<grid, kUpsampleThreads, 0, stream>>>(low_scratch, masks, h, w, out_h, out_w, total, mode);
  return cudaGetLastError();
}

}  // namespace

extern "C" cudaError_t sam3edge_prompt_attention(const void* q, const void* k, const void* v, const void* key_bias,
                                                 void* out, int N, int Lq, int Lk, int C, int num_heads, float scale,
                                                 int dtype, cudaStream_t stream) {
  switch (dtype) {
    case 0: return launch_prompt_attention<float>(q, k, v, key_bias, out, N, Lq, Lk, C, num_heads, scale, stream);
    case 1: return launch_prompt_attention<__half>(q, k, v, key_bias, out, N, Lq, Lk, C, num_heads, scale, stream);
    default: return cudaErrorInvalidValue;
  }
}

extern "C" cudaError_t sam3edge_box_attention(const void* q, const void* k, const void* v, const void* boxes,
                                              const void* x_w1, const void* x_b1, const void* x_w2, const void* x_b2,
                                              const void* y_w1, const void* y_b1, const void* y_w2, const void* y_b2,
                                              void* out, int N, int Lq, int C, int height, int width, int Qb, int Dx,
                                              int Dy, int num_heads, float scale, int dtype, cudaStream_t stream) {
  switch (dtype) {
    case 0:
      return launch_box_attention<float>(q, k, v, boxes, x_w1, x_b1, x_w2, x_b2, y_w1, y_b1, y_w2, y_b2, out, N, Lq,
                                         C, height, width, Qb, Dx, Dy, num_heads, scale, stream);
    case 1:
      return launch_box_attention<__half>(q, k, v, boxes, x_w1, x_b1, x_w2, x_b2, y_w1, y_b1, y_w2, y_b2, out, N,
                                          Lq, C, height, width, Qb, Dx, Dy, num_heads, scale, stream);
    default: return cudaErrorInvalidValue;
  }
}

extern "C" cudaError_t sam3edge_mask_topk(const void* scores, const void* embed, const void* pixels,
                                          const void* proj_weight, const void* proj_bias, void* top_scores,
                                          int64_t* indices, void* masks, float* fold_e2, float* fold_b,
                                          float* low_scratch, int N, int Q, int C, int h, int w, int k, int out_h,
                                          int out_w, int mode, int dtype, cudaStream_t stream) {
  switch (dtype) {
    case 0:
      return launch_mask_topk<float>(scores, embed, pixels, proj_weight, proj_bias, top_scores, indices, masks,
                                     fold_e2, fold_b, low_scratch, N, Q, C, h, w, k, out_h, out_w, mode, stream);
    case 1:
      return launch_mask_topk<__half>(scores, embed, pixels, proj_weight, proj_bias, top_scores, indices, masks,
                                      fold_e2, fold_b, low_scratch, N, Q, C, h, w, k, out_h, out_w, mode, stream);
    default: return cudaErrorInvalidValue;
  }
}
