// Boundary checks of the fused ops' contract (fastgat/ops.py), shared by the CPU and CUDA
// registrations: dtypes, shapes, devices and contiguity, each failure named after the argument.
// Index *values* (rowptr monotone, col in range) are the graph preparation's job (fastgat/graph.py)
// and are not re-read here: that would cost a pass over the graph or a host sync per call.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/Optional.h>

#include <algorithm>
#include <initializer_list>

namespace fastgat {

// lse's dtype, the kernels' accumulation dtype: float64 for float64 h, else float32
// (fastgat.backends.torch_ref.accumulation_dtype states the same rule in Python).
inline at::ScalarType lse_dtype_for(at::ScalarType h) {
  return h == at::kDouble ? at::kDouble : at::kFloat;
}

inline void check_tensor(const at::Tensor& x, const char* name, const at::Tensor& like,
                         std::initializer_list<int64_t> shape) {
  TORCH_CHECK(x.device() == like.device(), "fastgat: ", name, " is on ", x.device(),
              " but h is on ", like.device());
  TORCH_CHECK(x.sizes().equals(shape), "fastgat: ", name, " must have shape ",
              c10::IntArrayRef(shape), ", got ", x.sizes());
  TORCH_CHECK(x.is_contiguous(), "fastgat: ", name, " must be contiguous");
}

inline void check_float(const at::Tensor& x, const char* name, const at::Tensor& h,
                        std::initializer_list<int64_t> shape) {
  TORCH_CHECK(x.scalar_type() == h.scalar_type(), "fastgat: ", name, " has dtype ",
              x.scalar_type(), " but h has ", h.scalar_type());
  check_tensor(x, name, h, shape);
}

inline void check_index(const at::Tensor& x, const char* name, const at::Tensor& rowptr,
                        const at::Tensor& h, std::initializer_list<int64_t> shape) {
  TORCH_CHECK(x.scalar_type() == rowptr.scalar_type(), "fastgat: ", name, " has dtype ",
              x.scalar_type(), " but rowptr has ", rowptr.scalar_type(),
              " (all index tensors share one dtype)");
  check_tensor(x, name, h, shape);
}

// The values h (N_src, H, C), floating point; the graph rowptr (N_dst + 1) and col (E) of
// int32 or int64; num_loops; a 1-element int64 seed if dropout > 0. Shared by every rule.
inline void check_values_and_graph(const at::Tensor& h, const char* h_name,
                                   const at::Tensor& rowptr, const at::Tensor& col,
                                   int64_t num_loops, double dropout,
                                   const c10::optional<at::Tensor>& seed) {
  TORCH_CHECK(h.dim() == 3, "fastgat: ", h_name, " must be (N_src, H, C), got shape ", h.sizes());
  TORCH_CHECK(at::isFloatingType(h.scalar_type()), "fastgat: ", h_name,
              " must be floating point, got ", h.scalar_type());
  const int64_t num_src = h.size(0), heads = h.size(1);
  TORCH_CHECK(rowptr.dim() == 1 && rowptr.numel() >= 1,
              "fastgat: rowptr must be 1-D of length N_dst + 1, got shape ", rowptr.sizes());
  TORCH_CHECK(rowptr.scalar_type() == at::kInt || rowptr.scalar_type() == at::kLong,
              "fastgat: index tensors must be int32 or int64, got ", rowptr.scalar_type());
  const int64_t num_dst = rowptr.numel() - 1;
  TORCH_CHECK(col.dim() == 1, "fastgat: col must be 1-D, got shape ", col.sizes());
  check_tensor(h, h_name, h, {num_src, heads, h.size(2)});
  check_index(rowptr, "rowptr", rowptr, h, {num_dst + 1});
  check_index(col, "col", rowptr, h, {col.numel()});
  TORCH_CHECK(num_loops >= 0 && num_loops <= std::min(num_src, num_dst), "fastgat: num_loops=",
              num_loops, " must lie in [0, min(N_src, N_dst)] = [0, ", std::min(num_src, num_dst),
              "]");
  TORCH_CHECK(dropout >= 0.0 && dropout < 1.0, "fastgat: dropout must lie in [0, 1), got ",
              dropout);
  if (dropout > 0.0) {
    TORCH_CHECK(seed.has_value(), "fastgat: dropout > 0 needs a seed tensor");
    TORCH_CHECK(seed->scalar_type() == at::kLong && seed->numel() == 1,
                "fastgat: seed must be a 1-element int64 tensor, got ", seed->scalar_type(),
                " of shape ", seed->sizes());
    TORCH_CHECK(seed->device() == h.device(), "fastgat: seed is on ", seed->device(),
                " but h is on ", h.device());
  }
}

// GAT: h (N_src, H, C); s (N_src, H); d (N_dst, H); t (E, H)?; t_loop (num_loops, H)?; the graph.
inline void check_forward_inputs(const at::Tensor& h, const at::Tensor& s, const at::Tensor& d,
                                 const c10::optional<at::Tensor>& t,
                                 const c10::optional<at::Tensor>& t_loop,
                                 const at::Tensor& rowptr, const at::Tensor& col,
                                 int64_t num_loops, double dropout,
                                 const c10::optional<at::Tensor>& seed) {
  check_values_and_graph(h, "h", rowptr, col, num_loops, dropout, seed);
  const int64_t num_src = h.size(0), heads = h.size(1);
  const int64_t num_dst = rowptr.numel() - 1, num_slots = col.numel();
  check_float(s, "s", h, {num_src, heads});
  check_float(d, "d", h, {num_dst, heads});
  if (t.has_value()) check_float(*t, "t", h, {num_slots, heads});
  if (t_loop.has_value()) check_float(*t_loop, "t_loop", h, {num_loops, heads});
}

// GATv2: xl (N_src, H, C); xr (N_dst, H, C); att (H, C); e (E, H, C)?;
// e_loop (num_loops, H, C)?; the graph.
inline void check_gatv2_forward_inputs(const at::Tensor& xl, const at::Tensor& xr,
                                       const at::Tensor& att, const c10::optional<at::Tensor>& e,
                                       const c10::optional<at::Tensor>& e_loop,
                                       const at::Tensor& rowptr, const at::Tensor& col,
                                       int64_t num_loops, double dropout,
                                       const c10::optional<at::Tensor>& seed) {
  check_values_and_graph(xl, "xl", rowptr, col, num_loops, dropout, seed);
  const int64_t heads = xl.size(1), channels = xl.size(2);
  check_float(xr, "xr", xl, {rowptr.numel() - 1, heads, channels});
  check_float(att, "att", xl, {heads, channels});
  if (e.has_value()) check_float(*e, "e", xl, {col.numel(), heads, channels});
  if (e_loop.has_value()) check_float(*e_loop, "e_loop", xl, {num_loops, heads, channels});
}

// What every rule's backward reads beside its forward's inputs: dout and out (N_dst, H, C)
// of h's dtype, lse (N_dst, H) of float32 (float64 for float64 h), and the CSC colptr
// (N_src + 1), csc_row (E), csc_eid (E).
inline void check_backward_extras(const at::Tensor& dout, const at::Tensor& out,
                                  const at::Tensor& lse, const at::Tensor& h,
                                  const at::Tensor& rowptr, const at::Tensor& col,
                                  const at::Tensor& colptr, const at::Tensor& csc_row,
                                  const at::Tensor& csc_eid) {
  const int64_t num_src = h.size(0), heads = h.size(1), channels = h.size(2);
  const int64_t num_dst = rowptr.numel() - 1, num_slots = col.numel();
  check_float(dout, "dout", h, {num_dst, heads, channels});
  check_float(out, "out", h, {num_dst, heads, channels});
  const auto lse_dtype = lse_dtype_for(h.scalar_type());
  TORCH_CHECK(lse.scalar_type() == lse_dtype, "fastgat: lse must be ", lse_dtype, " for ",
              h.scalar_type(), " h, got ", lse.scalar_type());
  check_tensor(lse, "lse", h, {num_dst, heads});
  check_index(colptr, "colptr", rowptr, h, {num_src + 1});
  check_index(csc_row, "csc_row", rowptr, h, {num_slots});
  check_index(csc_eid, "csc_eid", rowptr, h, {num_slots});
}

// GAT's backward: the forward's inputs plus check_backward_extras.
inline void check_backward_inputs(const at::Tensor& dout, const at::Tensor& out,
                                  const at::Tensor& lse, const at::Tensor& h, const at::Tensor& s,
                                  const at::Tensor& d, const c10::optional<at::Tensor>& t,
                                  const c10::optional<at::Tensor>& t_loop,
                                  const at::Tensor& rowptr, const at::Tensor& col,
                                  const at::Tensor& colptr, const at::Tensor& csc_row,
                                  const at::Tensor& csc_eid, int64_t num_loops, double dropout,
                                  const c10::optional<at::Tensor>& seed) {
  check_forward_inputs(h, s, d, t, t_loop, rowptr, col, num_loops, dropout, seed);
  check_backward_extras(dout, out, lse, h, rowptr, col, colptr, csc_row, csc_eid);
}

}  // namespace fastgat
