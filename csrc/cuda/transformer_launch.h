// Host side of TransformerConv's fused CUDA kernels (docs/design.md §6, §11), for the GPU
// (transformer_cuda.cu) and the emulated device (../emulated/transformer_emulated.cpp): the
// forward is launch.h's launch_forward with TransformerRule; the backward's grid sizes, split
// plan over CSR rows and CSC columns, partial buffers and argument struct are here. The Device
// interface and the shared pieces are launch.h's.
#pragma once
#include <vector>

#include "launch.h"
#include "transformer_kernels.cuh"

namespace fastgat {
namespace cuda {

template <typename Device>
std::tuple<Tensor, Tensor> transformer_forward(
    const Tensor& q, const Tensor& k, const Tensor& v,
    const std::optional<Tensor>& e, const Tensor& rowptr, const Tensor& col,
    double scale, double dropout, const std::optional<Tensor>& seed, const Hubs& row_hubs) {
  check_transformer_inputs(q, k, v, e, rowptr, col, dropout, seed);
  check_hubs(row_hubs, "row_hubs");
  const typename Device::Guard guard(q);
  const Device device;
  return forward_outputs(device, q, rowptr, [&](auto type, auto index, Tensor& out,
                                                Tensor& lse) {
    using T = decltype(type);
    TransformerRule<T> rule{};
    rule.q = q.mutable_data_ptr<T>();
    rule.k = k.mutable_data_ptr<T>();
    rule.v = v.mutable_data_ptr<T>();
    rule.e = e.has_value() ? e->mutable_data_ptr<T>() : nullptr;
    rule.scale = static_cast<acc_type<T>>(scale);
    const bool aligned = is_aligned_16(rule.q) && is_aligned_16(rule.k) &&
                         is_aligned_16(rule.v) && (rule.e == nullptr || is_aligned_16(rule.e));
    launch_forward<decltype(index)>(device, rule, aligned, rowptr, col, /*num_loops=*/0, dropout,
                                    seed, row_hubs, out, lse);
  });
}

// Fills s.chunk_ptr (and returns its storage in chunk_ptr) when some of s's rows split (the
// plan of launch.h, exact with the rows' hubs). Returns the chunk count to size for, 0 when no
// row splits.
template <typename Index, typename Device>
int64_t plan_chunks(const Device& device, Segments<Index>& s, int64_t num_slots,
                    const Tensor& ptr, const Hubs& hubs, Tensor& chunk_ptr) {
  const SplitPlan plan(s.count, num_slots, /*num_loops=*/0, device.plan_sms(), hubs);
  s.split_len = plan.split_len;
  s.chunk_ptr = nullptr;
  if (plan.chunk_bound == 0) return 0;
  chunk_ptr = chunk_table(device, s.ptr, s.count, int64_t{0}, s.split_len, ptr);
  s.chunk_ptr = chunk_ptr.mutable_data_ptr<int64_t>();
  return plan.chunk_bound;
}

// One pass (CSR: CSC = false, or CSC) over the rows of s: whole rows, then the chunks of split
// ones, each writing partials to the buffer named by a `outs` entry's field, merged into its
// output (dq, or dk and dv).
template <bool CSC, typename T, typename Index, typename Device>
void launch_pass(const Device& device, TransformerBackwardArgs<T, Index>& a, bool aligned,
                 int64_t num_slots, const Tensor& ptr, const Hubs& hubs,
                 std::initializer_list<std::pair<Tensor*, acc_type<T>**>> outs) {
  using A = acc_type<T>;
  Segments<Index>& s = CSC ? a.columns : a.rows;
  if (s.count == 0) return;
  Tensor chunk_ptr;
  const int64_t chunk_bound = plan_chunks(device, s, num_slots, ptr, hubs, chunk_ptr);
  std::vector<Tensor> parts;
  for (const auto& [out, field] : outs) {
    parts.push_back(device.empty({chunk_bound, a.heads, a.channels},
                                 scalar_type_of<A>, *out));
    *field = parts.back().template mutable_data_ptr<A>();
  }
  const int64_t per_block = kBlock / a.group_size;
  device.launch(aligned ? transformer_row_kernel<true, CSC, T, Index>
                        : transformer_row_kernel<false, CSC, T, Index>,
                blocks_for(s.count * a.heads * a.tiles, per_block), kBlock, a);
  if (chunk_bound == 0) return;
  // At most one wave of blocks, striding over the chunks that exist (launch.h's forward).
  const int64_t wave = kWave * device.sms();
  device.launch(aligned ? transformer_chunk_kernel<true, CSC, T, Index>
                        : transformer_chunk_kernel<false, CSC, T, Index>,
                std::min(blocks_for(chunk_bound * a.heads * a.tiles, per_block), wave), kBlock, a);
  const int64_t width = a.heads * a.channels;
  for (const auto& [out, field] : outs) {
    device.launch(sum_chunks_kernel<T>, std::min(blocks_for(chunk_bound * width, kBlock), wave),
                  kBlock, static_cast<const A*>(*field), static_cast<const int64_t*>(s.chunk_ptr),
                  s.count, width, out->template mutable_data_ptr<T>());
  }
}

template <typename T, typename Index, typename Device>
void launch_transformer_backward(const Device& device, const Tensor& dout,
                                 const Tensor& out, const Tensor& lse,
                                 const Tensor& q, const Tensor& k, const Tensor& v,
                                 const std::optional<Tensor>& e, const Tensor& rowptr,
                                 const Tensor& col, const Tensor& colptr,
                                 const Tensor& csc_row, const Tensor& csc_eid,
                                 double scale, double dropout,
                                 const std::optional<Tensor>& seed, const Hubs& row_hubs,
                                 const Hubs& col_hubs, Tensor& dq, Tensor& dk,
                                 Tensor& dv, Tensor& de) {
  using A = acc_type<T>;
  constexpr int VEC = vec_width<T>();
  const int64_t num_slots = col.numel();
  Tensor dz = device.empty({num_slots, q.size(1)}, lse.scalar_type(), lse);
  Tensor w = device.empty({num_slots, q.size(1)}, lse.scalar_type(), lse);
  TransformerBackwardArgs<T, Index> a{};
  a.dout = dout.mutable_data_ptr<T>();
  a.out = out.mutable_data_ptr<T>();
  a.lse = lse.mutable_data_ptr<A>();
  a.q = q.mutable_data_ptr<T>();
  a.k = k.mutable_data_ptr<T>();
  a.v = v.mutable_data_ptr<T>();
  a.e = e.has_value() ? e->mutable_data_ptr<T>() : nullptr;
  a.col = col.mutable_data_ptr<Index>();
  a.csc_row = csc_row.mutable_data_ptr<Index>();
  a.csc_eid = csc_eid.mutable_data_ptr<Index>();
  a.rows.ptr = rowptr.mutable_data_ptr<Index>();
  a.rows.count = q.size(0);
  a.columns.ptr = colptr.mutable_data_ptr<Index>();
  a.columns.count = k.size(0);
  a.dz = dz.mutable_data_ptr<A>();
  a.w = w.mutable_data_ptr<A>();
  a.dq = dq.mutable_data_ptr<T>();
  a.dk = dk.mutable_data_ptr<T>();
  a.dv = dv.mutable_data_ptr<T>();
  a.de = e.has_value() ? de.mutable_data_ptr<T>() : nullptr;
  a.channels = q.size(2);
  a.heads = static_cast<int>(q.size(1));
  a.group_size = group_size(a.channels, VEC);
  a.tiles = channel_tiles(a.channels, a.group_size, VEC);
  a.scale = static_cast<A>(scale);
  a.dropout = make_dropout(dropout, seed);

  bool aligned = a.channels % VEC == 0;
  for (const Tensor* x : std::initializer_list<const Tensor*>{&dout, &out, &q, &k, &v,
                                                                     &dq, &dk, &dv}) {
    aligned = aligned && is_aligned_16(x->data_ptr());
  }
  if (e.has_value()) aligned = aligned && is_aligned_16(a.e) && is_aligned_16(a.de);

  // CSR pass: dz and w per slot, de, dq (split rows: partials merged in order).
  launch_pass<false>(device, a, aligned, num_slots, rowptr, row_hubs, {{&dq, &a.part_dq}});
  zero_dead_slots(device, a.rows.ptr, a.rows.count, num_slots, a.heads * a.channels, a.de);
  // CSC pass: dk and dv from the stored dz and w.
  launch_pass<true>(device, a, aligned, num_slots, colptr, col_hubs,
                    {{&dk, &a.part_dk}, {&dv, &a.part_dv}});
}

template <typename Device>
std::tuple<Tensor, Tensor, Tensor, Tensor> transformer_backward(
    const Tensor& dout, const Tensor& out, const Tensor& lse,
    const Tensor& q, const Tensor& k, const Tensor& v,
    const std::optional<Tensor>& e, const Tensor& rowptr, const Tensor& col,
    const Tensor& colptr, const Tensor& csc_row, const Tensor& csc_eid, double scale,
    double dropout, const std::optional<Tensor>& seed, const Hubs& row_hubs,
    const Hubs& col_hubs) {
  check_transformer_backward_inputs(dout, out, lse, q, k, v, e, rowptr, col, colptr, csc_row,
                                    csc_eid, dropout, seed);
  check_hubs(row_hubs, "row_hubs");
  check_hubs(col_hubs, "col_hubs");
  const typename Device::Guard guard(dout);
  const Device device;
  Tensor dq = device.empty(q.sizes(), q.scalar_type(), q);
  Tensor dk = device.empty(k.sizes(), k.scalar_type(), k);
  Tensor dv = device.empty(v.sizes(), v.scalar_type(), v);
  Tensor de = device.empty(e.has_value() ? e->sizes() : Sizes{0}, q.scalar_type(), q);
  if (q.size(1) == 0 || q.size(2) == 0) return {dq, dk, dv, de};
  dispatch_types(q, rowptr, [&](auto type, auto index) {
    launch_transformer_backward<decltype(type), decltype(index)>(
        device, dout, out, lse, q, k, v, e, rowptr, col, colptr, csc_row, csc_eid, scale,
        dropout, seed, row_hubs, col_hubs, dq, dk, dv, de);
  });
  return {dq, dk, dv, de};
}

}  // namespace cuda
}  // namespace fastgat
