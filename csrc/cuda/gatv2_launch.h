// Host side of GATv2's fused CUDA kernels (docs/design.md §6, §10): the forward is
// launch.h's launch_forward with Gatv2Rule; the backward launches gatv2_kernels.cuh's passes.
// Templated on a device as launch.h: gatv2_cuda.cu (the GPU) and
// ../emulated/gatv2_emulated.cpp (the SIMT emulator).
#pragma once
#include "gatv2_kernels.cuh"
#include "launch.h"

namespace fastgat {
namespace cuda {

template <typename T>
Gatv2Rule<T> make_gatv2_rule(const Tensor& xl, const Tensor& xr, const Tensor& att,
                             const std::optional<Tensor>& e,
                             const std::optional<Tensor>& e_loop, double negative_slope) {
  Gatv2Rule<T> rule{};
  rule.values = xl.mutable_data_ptr<T>();
  rule.xr = xr.mutable_data_ptr<T>();
  rule.att = att.mutable_data_ptr<T>();
  rule.e = e.has_value() ? e->mutable_data_ptr<T>() : nullptr;
  rule.e_loop = e_loop.has_value() ? e_loop->mutable_data_ptr<T>() : nullptr;
  rule.slope = static_cast<acc_type<T>>(negative_slope);
  return rule;
}

// Whether every input the rule reads allows 16-byte loads (absent ones do).
template <typename T>
bool gatv2_inputs_aligned(const Gatv2Rule<T>& rule) {
  return is_aligned_16(rule.values) && is_aligned_16(rule.xr) && is_aligned_16(rule.att) &&
         is_aligned_16(rule.e) && is_aligned_16(rule.e_loop);
}

template <typename Device>
std::tuple<Tensor, Tensor> gatv2_fused_forward(
    const Tensor& xl, const Tensor& xr, const Tensor& att,
    const std::optional<Tensor>& e, const std::optional<Tensor>& e_loop,
    const Tensor& rowptr, const Tensor& col, int64_t num_loops, double negative_slope,
    double dropout, const std::optional<Tensor>& seed, const Hubs& row_hubs) {
  check_gatv2_forward_inputs(xl, xr, att, e, e_loop, rowptr, col, num_loops, dropout, seed);
  check_hubs(row_hubs, "row_hubs");
  const typename Device::Guard guard(xl);
  const Device device;
  return forward_outputs(device, xl, rowptr, [&](auto type, auto index, Tensor& out,
                                                 Tensor& lse) {
    const auto rule = make_gatv2_rule<decltype(type)>(xl, xr, att, e, e_loop, negative_slope);
    launch_forward<decltype(index)>(device, rule, gatv2_inputs_aligned(rule), rowptr, col,
                                    num_loops, dropout, seed, row_hubs, out, lse);
  });
}

// Rows of datt's shares per chunk of sum_rows_kernel (a fixed number: the order of the sum
// must not depend on the device).
constexpr int64_t kSumRowsChunk = 256;

template <typename T, typename Index, typename Device>
void launch_gatv2_backward(const Device& device, const Tensor& dout, const Tensor& out,
                           const Tensor& lse, const Tensor& xl, const Tensor& xr,
                           const Tensor& att, const std::optional<Tensor>& e,
                           const std::optional<Tensor>& e_loop, const Tensor& rowptr,
                           const Tensor& col, const Tensor& colptr,
                           const Tensor& csc_row, const Tensor& csc_eid,
                           int64_t num_loops, double negative_slope, double dropout,
                           const std::optional<Tensor>& seed, Tensor& dxl,
                           Tensor& dxr, Tensor& datt, Tensor& de,
                           Tensor& de_loop) {
  using A = acc_type<T>;
  constexpr int VEC = vec_width<T>();
  const int64_t heads = xl.size(1), channels = xl.size(2);
  const int64_t num_dst = rowptr.numel() - 1, num_slots = col.numel();
  Tensor dz = device.empty({num_slots + num_loops, heads}, lse.scalar_type(), lse);
  Tensor w = device.empty({num_slots + num_loops, heads}, lse.scalar_type(), lse);
  Tensor datt_rows = device.empty({num_dst, heads, channels}, lse.scalar_type(), lse);
  Gatv2BackwardArgs<T, Index> a{};
  a.rule = make_gatv2_rule<T>(xl, xr, att, e, e_loop, negative_slope);
  a.dout = dout.mutable_data_ptr<T>();
  a.out = out.mutable_data_ptr<T>();
  a.lse = lse.mutable_data_ptr<A>();
  a.rowptr = rowptr.mutable_data_ptr<Index>();
  a.col = col.mutable_data_ptr<Index>();
  a.colptr = colptr.mutable_data_ptr<Index>();
  a.csc_row = csc_row.mutable_data_ptr<Index>();
  a.csc_eid = csc_eid.mutable_data_ptr<Index>();
  a.dz = dz.mutable_data_ptr<A>();
  a.w = w.mutable_data_ptr<A>();
  a.datt_rows = datt_rows.mutable_data_ptr<A>();
  a.dxl = dxl.mutable_data_ptr<T>();
  a.dxr = dxr.mutable_data_ptr<T>();
  a.de = e.has_value() ? de.mutable_data_ptr<T>() : nullptr;
  a.de_loop = e_loop.has_value() ? de_loop.mutable_data_ptr<T>() : nullptr;
  a.num_src = xl.size(0);
  a.num_dst = num_dst;
  a.num_slots = num_slots;
  a.num_loops = num_loops;
  a.channels = channels;
  a.heads = static_cast<int>(heads);
  a.group_size = group_size(channels, VEC);
  a.tiles = channel_tiles(channels, a.group_size, VEC);
  a.dropout = make_dropout(dropout, seed);

  const bool aligned = channels % VEC == 0 && gatv2_inputs_aligned(a.rule) &&
                       is_aligned_16(a.dout) && is_aligned_16(a.out) && is_aligned_16(a.dxl) &&
                       is_aligned_16(a.dxr) && is_aligned_16(a.de) && is_aligned_16(a.de_loop);
  const int64_t per_block = kBlock / a.group_size;
  zero_dead_slots(device, a.rowptr, num_dst, num_slots, heads * channels, a.de);
  if (num_dst > 0) {  // CSR pass: dz, w, dxr, de, datt shares
    device.launch(aligned ? gatv2_csr_kernel<true, T, Index> : gatv2_csr_kernel<false, T, Index>,
                  blocks_for(num_dst * heads * a.tiles, per_block), kBlock, a);
  }
  if (a.num_src > 0) {  // CSC pass: dxl
    device.launch(aligned ? gatv2_csc_kernel<true, T, Index> : gatv2_csc_kernel<false, T, Index>,
                  blocks_for(a.num_src * heads * a.tiles, per_block), kBlock, a);
  }
  // datt: the rows' shares summed in chunks of kSumRowsChunk rows, stage by stage, down to one.
  const int64_t width = heads * channels;
  if (width == 0) return;
  Tensor rows = datt_rows;
  int64_t num_rows = num_dst;
  while (num_rows > kSumRowsChunk) {
    const int64_t chunks = ceil_div(num_rows, kSumRowsChunk);
    Tensor partial = device.empty({chunks, width}, lse.scalar_type(), lse);
    device.launch(sum_rows_kernel<A, A>, blocks_for(chunks * width, kBlock), kBlock,
                  static_cast<const A*>(rows.mutable_data_ptr<A>()), num_rows, width, kSumRowsChunk,
                  chunks, partial.mutable_data_ptr<A>());
    rows = partial;
    num_rows = chunks;
  }
  device.launch(sum_rows_kernel<A, T>, blocks_for(width, kBlock), kBlock,
                static_cast<const A*>(rows.mutable_data_ptr<A>()), num_rows, width, kSumRowsChunk,
                int64_t{1}, datt.mutable_data_ptr<T>());
}

template <typename Device>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> gatv2_fused_backward(
    const Tensor& dout, const Tensor& out, const Tensor& lse,
    const Tensor& xl, const Tensor& xr, const Tensor& att,
    const std::optional<Tensor>& e, const std::optional<Tensor>& e_loop,
    const Tensor& rowptr, const Tensor& col, const Tensor& colptr,
    const Tensor& csc_row, const Tensor& csc_eid, int64_t num_loops,
    double negative_slope, double dropout, const std::optional<Tensor>& seed,
    const Hubs& row_hubs, const Hubs& col_hubs) {
  check_gatv2_forward_inputs(xl, xr, att, e, e_loop, rowptr, col, num_loops, dropout, seed);
  check_backward_extras(dout, out, lse, xl, rowptr, col, colptr, csc_row, csc_eid);
  check_hubs(row_hubs, "row_hubs");  // GATv2's backward passes split nothing
  check_hubs(col_hubs, "col_hubs");
  const typename Device::Guard guard(dout);
  const Device device;
  Tensor dxl = device.empty(xl.sizes(), xl.scalar_type(), xl);
  Tensor dxr = device.empty(xr.sizes(), xr.scalar_type(), xr);
  Tensor datt = device.empty(att.sizes(), att.scalar_type(), att);
  Tensor de = device.empty(e.has_value() ? e->sizes() : Sizes{0}, xl.scalar_type(), xl);
  Tensor de_loop =
      device.empty(e_loop.has_value() ? e_loop->sizes() : Sizes{0}, xl.scalar_type(), xl);
  if (xl.size(1) == 0) return {dxl, dxr, datt, de, de_loop};
  dispatch_types(xl, rowptr, [&](auto type, auto index) {
    launch_gatv2_backward<decltype(type), decltype(index)>(
        device, dout, out, lse, xl, xr, att, e, e_loop, rowptr, col, colptr, csc_row, csc_eid,
        num_loops, negative_slope, dropout, seed, dxl, dxr, datt, de, de_loop);
  });
  return {dxl, dxr, datt, de, de_loop};
}

}  // namespace cuda
}  // namespace fastgat
