// PyTorch binding of the sam3edge CUDA kernels (sam3edge_ops.h).
//
// Everything the kernels rely on is checked here with a message naming the op and the argument,
// so that a bad call fails in Python instead of reading out of bounds; outputs are allocated
// here and the C launchers run on the current CUDA stream of the inputs' device.

#include <torch/extension.h>

// c10's stream header rather than ATen/cuda/CUDAContext.h: c10::cuda::getCurrentCUDAStream is the
// function at::cuda::getCurrentCUDAStream names, and CUDAContext.h also drags in the cuBLAS /
// cuSPARSE headers, which a bare CUDA toolkit (or a Jetson image) may not ship.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <climits>
#include <cstdint>
#include <tuple>
#include <utility>
#include <vector>

#include "sam3edge_ops.h"

namespace {

// The dtype code of the C ABI: 0 = float32, 1 = float16.
int dtype_code(const at::Tensor& t) { return t.scalar_type() == at::kHalf ? 1 : 0; }

// A float input: CUDA, on the same device as (and of the same dtype as) `ref`, contiguous.
// `ref` is the op's first input, named `ref_name` in the messages.
void check_input(const char* op, const char* name, const at::Tensor& t, const at::Tensor& ref,
                 const char* ref_name) {
  TORCH_CHECK(t.is_cuda(), op, ": ", name, " must be a CUDA tensor, got device ", t.device());
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " must be on the same device as ", ref_name, " (",
              ref.device(), "), got ", t.device());
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kHalf, op, ": ", name,
              " must be float32 or float16, got ", t.scalar_type());
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), op, ": ", name, " must have the dtype of ", ref_name, " (",
              ref.scalar_type(), "), got ", t.scalar_type());
  TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous");
}

void check_shape(const char* op, const char* name, const at::Tensor& t, const std::vector<int64_t>& expected) {
  TORCH_CHECK(t.sizes() == at::IntArrayRef(expected), op, ": ", name, " must have shape ", at::IntArrayRef(expected),
              ", got ", t.sizes());
}

void check_dim(const char* op, const char* name, const at::Tensor& t, int64_t dim, const char* layout) {
  TORCH_CHECK(t.dim() == dim, op, ": ", name, " must be ", dim, "-D ", layout, ", got shape ", t.sizes());
}

// The C ABI takes int sizes.
int to_int(const char* op, const char* name, int64_t value) {
  TORCH_CHECK(value >= 0 && value <= INT_MAX, op, ": ", name, " = ", value, " is out of the supported range [0, ",
              INT_MAX, "]");
  return static_cast<int>(value);
}

// num_heads divides C into heads of at most SAM3EDGE_MAX_HEAD_DIM channels.
void check_heads(const char* op, int64_t C, int64_t num_heads) {
  TORCH_CHECK(num_heads >= 1, op, ": num_heads must be >= 1, got ", num_heads);
  TORCH_CHECK(C >= 1, op, ": the channel dim C of q must be >= 1");
  TORCH_CHECK(C % num_heads == 0, op, ": num_heads (", num_heads, ") must divide the channels C (", C, ")");
  TORCH_CHECK(C / num_heads <= SAM3EDGE_MAX_HEAD_DIM, op, ": head_dim = C / num_heads = ", C / num_heads,
              " exceeds the supported maximum ", SAM3EDGE_MAX_HEAD_DIM);
}

void check_launch(const char* op, cudaError_t err) {
  TORCH_CHECK(err == cudaSuccess, op, ": CUDA kernel launch failed: ", cudaGetErrorString(err));
}

}  // namespace

at::Tensor prompt_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            const at::Tensor& key_bias, int64_t num_heads, double scale) {
  constexpr const char* op = "prompt_attention";
  check_input(op, "q", q, q, "q");
  check_input(op, "k", k, q, "q");
  check_input(op, "v", v, q, "q");
  check_input(op, "key_bias", key_bias, q, "q");
  check_dim(op, "q", q, 3, "[N, Lq, C]");
  check_dim(op, "k", k, 3, "[N, Lk, C]");
  const int64_t N = q.size(0), Lq = q.size(1), C = q.size(2), Lk = k.size(1);
  check_shape(op, "k", k, {N, Lk, C});
  check_shape(op, "v", v, {N, Lk, C});
  check_shape(op, "key_bias", key_bias, {N, Lk});
  TORCH_CHECK(Lk >= 1, op, ": empty prompt sequence (k and v have Lk = 0 keys): the softmax is undefined");
  check_heads(op, C, num_heads);

  at::Tensor out = at::empty_like(q);
  if (out.numel() == 0) return out;
  const c10::cuda::CUDAGuard guard(q.device());
  check_launch(op, sam3edge_prompt_attention(q.data_ptr(), k.data_ptr(), v.data_ptr(), key_bias.data_ptr(),
                                             out.data_ptr(), to_int(op, "N", N), to_int(op, "Lq", Lq),
                                             to_int(op, "Lk", Lk), to_int(op, "C", C),
                                             to_int(op, "num_heads", num_heads), static_cast<float>(scale),
                                             dtype_code(q), c10::cuda::getCurrentCUDAStream().stream()));
  return out;
}

at::Tensor box_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& boxes,
                         int64_t height, int64_t width, const at::Tensor& x_w1, const at::Tensor& x_b1,
                         const at::Tensor& x_w2, const at::Tensor& x_b2, const at::Tensor& y_w1,
                         const at::Tensor& y_b1, const at::Tensor& y_w2, const at::Tensor& y_b2, int64_t num_heads,
                         double scale) {
  constexpr const char* op = "box_attention";
  const std::vector<std::pair<const char*, const at::Tensor*>> inputs = {
      {"q", &q},       {"k", &k},       {"v", &v},       {"boxes", &boxes}, {"x_w1", &x_w1}, {"x_b1", &x_b1},
      {"x_w2", &x_w2}, {"x_b2", &x_b2}, {"y_w1", &y_w1}, {"y_b1", &y_b1},   {"y_w2", &y_w2}, {"y_b2", &y_b2}};
  for (const auto& in : inputs) check_input(op, in.first, *in.second, q, "q");
  check_dim(op, "q", q, 3, "[N, Lq, C]");
  check_dim(op, "boxes", boxes, 3, "[N, Qb, 4]");
  check_dim(op, "x_w1", x_w1, 2, "[D, 2]");
  check_dim(op, "y_w1", y_w1, 2, "[D, 2]");
  const int64_t N = q.size(0), Lq = q.size(1), C = q.size(2), Qb = boxes.size(1);
  const int64_t Dx = x_w1.size(0), Dy = y_w1.size(0);

  TORCH_CHECK(height >= 1 && height <= SAM3EDGE_MAX_BOX_SIDE, op, ": height must be in [1, ", SAM3EDGE_MAX_BOX_SIDE,
              "], got ", height);
  TORCH_CHECK(width >= 1 && width <= SAM3EDGE_MAX_BOX_SIDE, op, ": width must be in [1, ", SAM3EDGE_MAX_BOX_SIDE,
              "], got ", width);
  check_dim(op, "k", k, 3, "[N, H*W, C]");
  TORCH_CHECK(k.size(1) == height * width, op, ": k has ", k.size(1), " keys but height * width = ", height, " * ",
              width, " = ", height * width);
  check_shape(op, "k", k, {N, height * width, C});
  check_shape(op, "v", v, {N, height * width, C});
  check_shape(op, "boxes", boxes, {N, Qb, 4});
  TORCH_CHECK(Qb <= Lq, op, ": boxes has Qb = ", Qb, " boxes but q only has Lq = ", Lq, " query rows");
  check_heads(op, C, num_heads);
  TORCH_CHECK(Dx >= 1, op, ": x_w1 must have at least one hidden unit, got shape ", x_w1.sizes());
  TORCH_CHECK(Dy >= 1, op, ": y_w1 must have at least one hidden unit, got shape ", y_w1.sizes());
  check_shape(op, "x_w1", x_w1, {Dx, 2});
  check_shape(op, "x_b1", x_b1, {Dx});
  check_shape(op, "x_w2", x_w2, {num_heads, Dx});
  check_shape(op, "x_b2", x_b2, {num_heads});
  check_shape(op, "y_w1", y_w1, {Dy, 2});
  check_shape(op, "y_b1", y_b1, {Dy});
  check_shape(op, "y_w2", y_w2, {num_heads, Dy});
  check_shape(op, "y_b2", y_b2, {num_heads});

  at::Tensor out = at::empty_like(q);
  if (out.numel() == 0) return out;
  const c10::cuda::CUDAGuard guard(q.device());
  check_launch(op, sam3edge_box_attention(
                       q.data_ptr(), k.data_ptr(), v.data_ptr(), boxes.data_ptr(), x_w1.data_ptr(), x_b1.data_ptr(),
                       x_w2.data_ptr(), x_b2.data_ptr(), y_w1.data_ptr(), y_b1.data_ptr(), y_w2.data_ptr(),
                       y_b2.data_ptr(), out.data_ptr(), to_int(op, "N", N), to_int(op, "Lq", Lq),
                       to_int(op, "C", C), static_cast<int>(height), static_cast<int>(width), to_int(op, "Qb", Qb),
                       to_int(op, "Dx", Dx), to_int(op, "Dy", Dy), to_int(op, "num_heads", num_heads),
                       static_cast<float>(scale), dtype_code(q), c10::cuda::getCurrentCUDAStream().stream()));
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> mask_topk(const at::Tensor& scores, const at::Tensor& embed,
                                                         const at::Tensor& pixels, const at::Tensor& proj_weight,
                                                         const at::Tensor& proj_bias, int64_t k, int64_t out_h,
                                                         int64_t out_w, int64_t mode) {
  constexpr const char* op = "mask_topk";
  check_input(op, "scores", scores, scores, "scores");
  check_input(op, "embed", embed, scores, "scores");
  check_input(op, "pixels", pixels, scores, "scores");
  check_input(op, "proj_weight", proj_weight, scores, "scores");
  check_input(op, "proj_bias", proj_bias, scores, "scores");
  check_dim(op, "scores", scores, 2, "[N, Q]");
  check_dim(op, "embed", embed, 3, "[N, Q, C]");
  check_dim(op, "pixels", pixels, 4, "[N, C, h, w]");
  const int64_t N = scores.size(0), Q = scores.size(1), C = embed.size(2);
  const int64_t h = pixels.size(2), w = pixels.size(3);
  check_shape(op, "embed", embed, {N, Q, C});
  check_shape(op, "pixels", pixels, {N, C, h, w});
  check_shape(op, "proj_weight", proj_weight, {C, C});
  check_shape(op, "proj_bias", proj_bias, {C});
  TORCH_CHECK(C >= 1, op, ": embed must have at least one channel, got shape ", embed.sizes());
  TORCH_CHECK(h >= 1 && w >= 1, op, ": pixels must have a non-empty h x w grid, got shape ", pixels.sizes());
  TORCH_CHECK(Q <= SAM3EDGE_MAX_TOPK_QUERIES, op, ": scores has Q = ", Q, " queries, more than the supported ",
              SAM3EDGE_MAX_TOPK_QUERIES);
  TORCH_CHECK(k >= 0 && k <= Q, op, ": k must be in [0, Q = ", Q, "], got ", k);
  TORCH_CHECK(out_h >= 1 && out_w >= 1, op, ": out_h and out_w must be >= 1, got ", out_h, " x ", out_w);
  TORCH_CHECK(mode >= 0 && mode <= 2, op, ": mode must be 0 (logits), 1 (sigmoid) or 2 (binary), got ", mode);

  const auto mask_dtype = mode == 2 ? at::kByte : pixels.scalar_type();
  at::Tensor top_scores = at::empty({N, k}, scores.options());
  at::Tensor indices = at::empty({N, k}, scores.options().dtype(at::kLong));
  at::Tensor masks = at::empty({N, k, out_h, out_w}, pixels.options().dtype(mask_dtype));
  if (N == 0 || k == 0) return {top_scores, indices, masks};

  const c10::cuda::CUDAGuard guard(scores.device());
  const auto f32 = scores.options().dtype(at::kFloat);
  at::Tensor fold_e2 = at::empty({N, k, C}, f32);
  at::Tensor fold_b = at::empty({N, k}, f32);
  const bool resize = out_h != h || out_w != w;
  at::Tensor low = resize ? at::empty({N, k, h, w}, f32) : at::Tensor();
  check_launch(op, sam3edge_mask_topk(
                       scores.data_ptr(), embed.data_ptr(), pixels.data_ptr(), proj_weight.data_ptr(),
                       proj_bias.data_ptr(), top_scores.data_ptr(), indices.data_ptr<int64_t>(), masks.data_ptr(),
                       fold_e2.data_ptr<float>(), fold_b.data_ptr<float>(),
                       resize ? low.data_ptr<float>() : nullptr, to_int(op, "N", N), to_int(op, "Q", Q),
                       to_int(op, "C", C), to_int(op, "h", h), to_int(op, "w", w), to_int(op, "k", k),
                       to_int(op, "out_h", out_h), to_int(op, "out_w", out_w), static_cast<int>(mode),
                       dtype_code(scores), c10::cuda::getCurrentCUDAStream().stream()));
  return {top_scores, indices, masks};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "sam3edge fused CUDA ops (see sam3edge/ops/reference.py for their definitions)";
  m.def("prompt_attention", &prompt_attention,
        "softmax(scale * q k^T + key_bias) v per head; q [N, Lq, C], k, v [N, Lk, C], key_bias [N, Lk]",
        py::arg("q"), py::arg("k"), py::arg("v"), py::arg("key_bias"), py::arg("num_heads"), py::arg("scale"));
  m.def("box_attention", &box_attention,
        "attention of q [N, Lq, C] to k, v [N, H*W, C] with the BoxRPB bias of boxes [N, Qb, 4]", py::arg("q"),
        py::arg("k"), py::arg("v"), py::arg("boxes"), py::arg("height"), py::arg("width"), py::arg("x_w1"),
        py::arg("x_b1"), py::arg("x_w2"), py::arg("x_b2"), py::arg("y_w1"), py::arg("y_b1"), py::arg("y_w2"),
        py::arg("y_b2"), py::arg("num_heads"), py::arg("scale"));
  m.def("mask_topk", &mask_topk,
        "(top_scores [N, k], indices [N, k] int64, masks [N, k, out_h, out_w]) of the k best queries",
        py::arg("scores"), py::arg("embed"), py::arg("pixels"), py::arg("proj_weight"), py::arg("proj_bias"),
        py::arg("k"), py::arg("out_h"), py::arg("out_w"), py::arg("mode"));
}
