// Boundary checks of the fused ops' contract (fastgat/ops.py), shared by the CPU and CUDA
// registrations: dtypes, shapes, devices and contiguity, each failure named after the argument.
// Index *values* (rowptr monotone, col in range) are the graph preparation's job (fastgat/graph.py)
// and are not re-read here: that would cost a pass over the graph or a host sync per call.
#pragma once
#include <algorithm>
#include <initializer_list>

#include "stable.h"

namespace fastgat {

// lse's dtype, the kernels' accumulation dtype: float64 for float64 h, else float32
// (fastgat.backends.torch_ref.accumulation_dtype states the same rule in Python).
inline ScalarType lse_dtype_for(ScalarType h) {
  return h == kDouble ? kDouble : kFloat;
}

// A pointer array's long segments (csrc/common/schema.h: row_hubs, col_hubs), or none.
using Hubs = std::optional<Tensor>;

// Hubs are read on the host: a CPU int64 (k, 2) table.
inline void check_hubs(const Hubs& hubs, const char* name) {
  if (!hubs.has_value()) return;
  FASTGAT_CHECK(hubs->is_cpu() && hubs->scalar_type() == kLong && hubs->dim() == 2 &&
                    hubs->size(1) == 2 && hubs->is_contiguous(),
                name, " must be a contiguous CPU int64 (k, 2) tensor, got ",
                hubs->scalar_type(), " ", shape_of(hubs->sizes()), " on ", device_of(*hubs));
}

// `like` is the op's first tensor input (h for GAT, q for TransformerConv), named `like_name`.
inline void check_tensor(const Tensor& x, const char* name, const Tensor& like,
                         std::initializer_list<int64_t> shape, const char* like_name = "h") {
  FASTGAT_CHECK(same_device(x, like), name, " is on ", device_of(x), " but ", like_name,
                " is on ", device_of(like));
  FASTGAT_CHECK(x.sizes().equals(Sizes(shape)), name, " must have shape ", shape_of(shape),
                ", got ", shape_of(x.sizes()));
  FASTGAT_CHECK(x.is_contiguous(), name, " must be contiguous");
}

inline void check_float(const Tensor& x, const char* name, const Tensor& h,
                        std::initializer_list<int64_t> shape, const char* like_name = "h") {
  FASTGAT_CHECK(x.scalar_type() == h.scalar_type(), name, " has dtype ",
                x.scalar_type(), " but ", like_name, " has ", h.scalar_type());
  check_tensor(x, name, h, shape, like_name);
}

inline void check_index(const Tensor& x, const char* name, const Tensor& rowptr,
                        const Tensor& h, std::initializer_list<int64_t> shape,
                        const char* like_name = "h") {
  FASTGAT_CHECK(x.scalar_type() == rowptr.scalar_type(), name, " has dtype ",
                x.scalar_type(), " but rowptr has ", rowptr.scalar_type(),
                " (all index tensors share one dtype)");
  check_tensor(x, name, h, shape, like_name);
}

// rowptr 1-D, int32 or int64, with at least one entry; returns N_dst.
inline int64_t check_rowptr(const Tensor& rowptr) {
  FASTGAT_CHECK(rowptr.dim() == 1 && rowptr.numel() >= 1,
                "rowptr must be 1-D of length N_dst + 1, got shape ", shape_of(rowptr.sizes()));
  FASTGAT_CHECK(rowptr.scalar_type() == kInt || rowptr.scalar_type() == kLong,
                "index tensors must be int32 or int64, got ", rowptr.scalar_type());
  return rowptr.numel() - 1;
}

// dropout in [0, 1); a 1-element int64 seed on `like`'s device when dropout > 0.
inline void check_dropout(double dropout, const std::optional<Tensor>& seed,
                          const Tensor& like) {
  FASTGAT_CHECK(dropout >= 0.0 && dropout < 1.0, "dropout must lie in [0, 1), got ", dropout);
  if (dropout > 0.0) {
    FASTGAT_CHECK(seed.has_value(), "dropout > 0 needs a seed tensor");
    FASTGAT_CHECK(seed->scalar_type() == kLong && seed->numel() == 1,
                  "seed must be a 1-element int64 tensor, got ", seed->scalar_type(),
                  " of shape ", shape_of(seed->sizes()));
    FASTGAT_CHECK(same_device(*seed, like), "seed is on ", device_of(*seed),
                  " but the features are on ", device_of(like));
  }
}

// The values h (N_src, H, C), floating point; the graph rowptr (N_dst + 1) and col (E) of
// int32 or int64; num_loops; a 1-element int64 seed if dropout > 0. Shared by every rule.
inline void check_values_and_graph(const Tensor& h, const char* h_name,
                                   const Tensor& rowptr, const Tensor& col,
                                   int64_t num_loops, double dropout,
                                   const std::optional<Tensor>& seed) {
  FASTGAT_CHECK(h.dim() == 3, h_name, " must be (N_src, H, C), got shape ", shape_of(h.sizes()));
  FASTGAT_CHECK(is_floating(h.scalar_type()), h_name,
                " must be floating point, got ", h.scalar_type());
  const int64_t num_src = h.size(0), heads = h.size(1);
  const int64_t num_dst = check_rowptr(rowptr);
  FASTGAT_CHECK(col.dim() == 1, "col must be 1-D, got shape ", shape_of(col.sizes()));
  check_tensor(h, h_name, h, {num_src, heads, h.size(2)});
  check_index(rowptr, "rowptr", rowptr, h, {num_dst + 1});
  check_index(col, "col", rowptr, h, {col.numel()});
  FASTGAT_CHECK(num_loops >= 0 && num_loops <= std::min(num_src, num_dst), "num_loops=",
                num_loops, " must lie in [0, min(N_src, N_dst)] = [0, ", std::min(num_src, num_dst),
                "]");
  check_dropout(dropout, seed, h);
}

// GAT's scores s, d, t, t_loop share one dtype: h's, or float32 beside bfloat16 / float16 h
// (fastgat/ops.py, docs/design.md §4).
inline bool half_values(ScalarType h) { return h == kBFloat16 || h == kHalf; }

inline void check_score_dtype(const Tensor& s, const Tensor& h) {
  FASTGAT_CHECK(s.scalar_type() == h.scalar_type() ||
                    (s.scalar_type() == kFloat && half_values(h.scalar_type())),
                "s has dtype ", s.scalar_type(), " but h has ", h.scalar_type(),
                " (the scores take h's dtype, or float32 beside bfloat16 / float16 h)");
}

// GAT: h (N_src, H, C); s (N_src, H); d (N_dst, H); t (E, H)?; t_loop (num_loops, H)?; the graph.
inline void check_forward_inputs(const Tensor& h, const Tensor& s, const Tensor& d,
                                 const std::optional<Tensor>& t,
                                 const std::optional<Tensor>& t_loop,
                                 const Tensor& rowptr, const Tensor& col,
                                 int64_t num_loops, double dropout,
                                 const std::optional<Tensor>& seed) {
  check_values_and_graph(h, "h", rowptr, col, num_loops, dropout, seed);
  const int64_t num_src = h.size(0), heads = h.size(1);
  const int64_t num_dst = rowptr.numel() - 1, num_slots = col.numel();
  check_score_dtype(s, h);
  check_tensor(s, "s", h, {num_src, heads});
  check_float(d, "d", s, {num_dst, heads}, "s");
  if (t.has_value()) check_float(*t, "t", s, {num_slots, heads}, "s");
  if (t_loop.has_value()) check_float(*t_loop, "t_loop", s, {num_loops, heads}, "s");
}

// GATv2: xl (N_src, H, C); xr (N_dst, H, C); att (H, C); e (E, H, C)?;
// e_loop (num_loops, H, C)?; the graph.
inline void check_gatv2_forward_inputs(const Tensor& xl, const Tensor& xr,
                                       const Tensor& att, const std::optional<Tensor>& e,
                                       const std::optional<Tensor>& e_loop,
                                       const Tensor& rowptr, const Tensor& col,
                                       int64_t num_loops, double dropout,
                                       const std::optional<Tensor>& seed) {
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
inline void check_backward_extras(const Tensor& dout, const Tensor& out,
                                  const Tensor& lse, const Tensor& h,
                                  const Tensor& rowptr, const Tensor& col,
                                  const Tensor& colptr, const Tensor& csc_row,
                                  const Tensor& csc_eid) {
  const int64_t num_src = h.size(0), heads = h.size(1), channels = h.size(2);
  const int64_t num_dst = rowptr.numel() - 1, num_slots = col.numel();
  check_float(dout, "dout", h, {num_dst, heads, channels});
  check_float(out, "out", h, {num_dst, heads, channels});
  const auto lse_dtype = lse_dtype_for(h.scalar_type());
  FASTGAT_CHECK(lse.scalar_type() == lse_dtype, "lse must be ", lse_dtype, " for ",
                h.scalar_type(), " h, got ", lse.scalar_type());
  check_tensor(lse, "lse", h, {num_dst, heads});
  check_index(colptr, "colptr", rowptr, h, {num_src + 1});
  check_index(csc_row, "csc_row", rowptr, h, {num_slots});
  check_index(csc_eid, "csc_eid", rowptr, h, {num_slots});
}

// GAT's backward: the forward's inputs plus check_backward_extras.
inline void check_backward_inputs(const Tensor& dout, const Tensor& out,
                                  const Tensor& lse, const Tensor& h, const Tensor& s,
                                  const Tensor& d, const std::optional<Tensor>& t,
                                  const std::optional<Tensor>& t_loop,
                                  const Tensor& rowptr, const Tensor& col,
                                  const Tensor& colptr, const Tensor& csc_row,
                                  const Tensor& csc_eid, int64_t num_loops, double dropout,
                                  const std::optional<Tensor>& seed) {
  check_forward_inputs(h, s, d, t, t_loop, rowptr, col, num_loops, dropout, seed);
  check_backward_extras(dout, out, lse, h, rowptr, col, colptr, csc_row, csc_eid);
}

// TransformerConv's op (fastgat/ops.py): q (N_dst, H, C); k, v (N_src, H, C); e (E, H, C)?;
// rowptr, col and dropout as above.
inline void check_transformer_inputs(const Tensor& q, const Tensor& k,
                                     const Tensor& v, const std::optional<Tensor>& e,
                                     const Tensor& rowptr, const Tensor& col,
                                     double dropout, const std::optional<Tensor>& seed) {
  FASTGAT_CHECK(q.dim() == 3, "q must be (N_dst, H, C), got shape ", shape_of(q.sizes()));
  FASTGAT_CHECK(is_floating(q.scalar_type()), "q must be floating point, got ",
                q.scalar_type());
  const int64_t num_dst = check_rowptr(rowptr);
  const int64_t heads = q.size(1), channels = q.size(2);
  FASTGAT_CHECK(k.dim() == 3, "k must be (N_src, H, C), got shape ", shape_of(k.sizes()));
  const int64_t num_src = k.size(0);
  FASTGAT_CHECK(col.dim() == 1, "col must be 1-D, got shape ", shape_of(col.sizes()));
  check_tensor(q, "q", q, {num_dst, heads, channels}, "q");
  check_float(k, "k", q, {num_src, heads, channels}, "q");
  check_float(v, "v", q, {num_src, heads, channels}, "q");
  check_index(rowptr, "rowptr", rowptr, q, {num_dst + 1}, "q");
  check_index(col, "col", rowptr, q, {col.numel()}, "q");
  if (e.has_value()) check_float(*e, "e", q, {col.numel(), heads, channels}, "q");
  check_dropout(dropout, seed, q);
}

// The forward's inputs plus check_backward_extras (k gives N_src, H, C and the dtype).
inline void check_transformer_backward_inputs(
    const Tensor& dout, const Tensor& out, const Tensor& lse, const Tensor& q,
    const Tensor& k, const Tensor& v, const std::optional<Tensor>& e,
    const Tensor& rowptr, const Tensor& col, const Tensor& colptr,
    const Tensor& csc_row, const Tensor& csc_eid, double dropout,
    const std::optional<Tensor>& seed) {
  check_transformer_inputs(q, k, v, e, rowptr, col, dropout, seed);
  check_backward_extras(dout, out, lse, k, rowptr, col, colptr, csc_row, csc_eid);
}

}  // namespace fastgat
