// Host side of the fused CUDA kernels: grid sizes, the split plan, partial buffers, argument
// structs and the dtype dispatch, written once for every rule and for two builds
// (docs/design.md §6, §8), and GAT's entry points:
//   *_cuda.cu                      nvcc, a real GPU:  CudaDevice launches with <<<>>>
//   ../emulated/*_emulated.cpp     host compiler:     EmulatedDevice runs the kernels lane by lane
// The entry points (fused_forward, ...) are registered as they are, for each build's Device:
// they make the inputs' device current with Device::Guard, then construct the Device.
// A Device provides
//   Guard                                          RAII, from a tensor on the device
//   int64_t sms() const                            the device's SMs (sizes grid-stride waves)
//   int64_t plan_sms() const                       SMs the split plan assumes (see SplitPlan)
//   void launch(kernel, blocks, threads, args...)  one kernel launch (errors are thrown)
//   Tensor empty(sizes, dtype, like) const         a buffer on the inputs' device
#pragma once

#include <algorithm>
#include <limits>
#include <tuple>
#include <type_traits>

#include "../common/checks.h"
#include "backward_kernels.cuh"
#include "forward_kernels.cuh"

namespace fastgat {
namespace cuda {

inline int64_t ceil_div(int64_t x, int64_t y) { return (x + y - 1) / y; }

constexpr int64_t kWave = 2048 / kBlock;  // blocks per SM at full occupancy

// Blocks of kBlock threads for `work` items, `per_block` to a block.
inline int64_t blocks_for(int64_t work, int64_t per_block) {
  const int64_t blocks = ceil_div(work, per_block);
  FASTGAT_CHECK(blocks <= std::numeric_limits<int32_t>::max(), "graph too large for one "
                "launch (", blocks, " blocks)");
  return blocks;
}

// The split length and the chunk count (see forward_kernels.cuh): a row (forward: CSR rows;
// backward: CSC columns) of more than split_len entries is cut into chunks. With the rows'
// hubs (csrc/common/schema.h) the count is exact, so buffers hold the chunks that exist; without,
// it is a bound from shapes alone. num_rows > 0.
struct SplitPlan {
  int64_t split_len;
  int64_t chunk_bound;  // chunks to size for; 0: no row splits, nothing to launch for splitting

  SplitPlan(int64_t num_rows, int64_t num_slots, int64_t num_loops, int64_t sms,
            const Hubs& hubs) {
    const int64_t entries = num_slots + num_loops;
    split_len = std::max<int64_t>(
        256, std::min(4 * ceil_div(entries, num_rows), ceil_div(entries, 8 * sms)));
    // No work item is longer than split_len: the kernels count its entries in 32 bits.
    FASTGAT_CHECK(split_len <= std::numeric_limits<int32_t>::max(), "graph too large "
                  "for the split plan (split length ", split_len, ")");
    if (hubs.has_value()) {
      chunk_bound = 0;
      const int64_t* hub = hubs->const_data_ptr<int64_t>();
      // Longest first by edges; a row holds at most one more entry (its loop).
      for (int64_t k = 0; k < hubs->size(0) && hub[2 * k] + 1 > split_len; ++k) {
        const int64_t row_entries = hub[2 * k] + (num_loops > 0 ? hub[2 * k + 1] : 0);
        if (row_entries > split_len) chunk_bound += ceil_div(row_entries, split_len);
      }
      return;
    }
    const int64_t max_row_entries = num_slots + (num_loops > 0);
    chunk_bound = max_row_entries > split_len ? ceil_div(2 * entries, split_len) : 0;
  }
};

// chunk_ptr of the rows of `ptr` (int64, num_rows + 1): each row's chunk count when it splits
// (0 otherwise), counted and scanned on the device, so no host sync.
template <typename Index, typename Device>
Tensor chunk_table(const Device& device, const Index* ptr, int64_t num_rows, int64_t num_loops,
                   int64_t split_len, const Tensor& like) {
  Tensor counts = device.empty({num_rows + 1}, kLong, like);
  device.launch(count_chunks_kernel<Index>, blocks_for(num_rows, kBlock), kBlock, ptr, num_rows,
                num_loops, split_len, counts.mutable_data_ptr<int64_t>());
  return cumsum(counts, 0);
}

inline bool is_aligned_16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// GAT's score input or gradient `x` (absent when not given) as a ScoreArray of T: T's, or
// float beside bfloat16 / float16 T.
template <typename Elem>
ScoreArray<Elem> score_array(const std::optional<Tensor>& x) {
  using T = std::remove_const_t<Elem>;
  ScoreArray<Elem> array{nullptr, nullptr};
  if (!x.has_value()) return array;
  if constexpr (ScoreArray<Elem>::kMayWiden) {
    if (x->scalar_type() == kFloat) {
      array.wide = x->mutable_data_ptr<float>();
      return array;
    }
  }
  array.narrow = x->mutable_data_ptr<T>();
  return array;
}

inline Dropout make_dropout(double dropout, const std::optional<Tensor>& seed) {
  return Dropout{dropout > 0.0 ? seed->mutable_data_ptr<int64_t>() : nullptr,
                 dropout_threshold(dropout), 1.0 / (1.0 - dropout), dropout > 0.0};
}

// Runs fn(T{}, Index{}) for the floating dtype of `values` and the index dtype of `rowptr`:
// the dtype dispatch of every rule's forward and backward.
template <typename Fn>
void dispatch_types(const Tensor& values, const Tensor& rowptr, Fn&& fn) {
  dispatch_floating(values.scalar_type(), [&](auto type) {
    dispatch_index(rowptr.scalar_type(), [&](auto index) { fn(type, index); });
  });
}

// The forward of any rule (forward_kernels.cuh) over the CSR graph: the split plan, the row
// kernel, and for split rows the chunk and merge kernels. `aligned`: the rule's own inputs
// allow 16-byte loads (C % VEC and out are checked here).
template <typename Index, typename Rule, typename Device>
void launch_forward(const Device& device, const Rule& rule, bool aligned,
                    const Tensor& rowptr, const Tensor& col, int64_t num_loops,
                    double dropout, const std::optional<Tensor>& seed, const Hubs& hubs,
                    Tensor& out, Tensor& lse) {
  using T = typename Rule::T;
  using A = acc_type<T>;
  constexpr int VEC = vec_width<T>();
  ForwardArgs<Rule, Index> a{};
  a.rule = rule;
  a.rowptr = rowptr.mutable_data_ptr<Index>();
  a.col = col.mutable_data_ptr<Index>();
  a.out = out.mutable_data_ptr<T>();
  a.lse = lse.mutable_data_ptr<A>();
  a.num_dst = out.size(0);
  a.num_slots = col.numel();
  a.num_loops = num_loops;
  a.channels = out.size(2);
  a.heads = static_cast<int>(out.size(1));
  a.group_size = group_size(a.channels, VEC);
  a.tiles = channel_tiles(a.channels, a.group_size, VEC);
  a.dropout = make_dropout(dropout, seed);

  const SplitPlan plan(a.num_dst, a.num_slots, num_loops, device.plan_sms(), hubs);
  a.split_len = plan.split_len;
  Tensor chunk_ptr, part_out, part_lse;
  if (plan.chunk_bound > 0) {
    chunk_ptr = chunk_table(device, a.rowptr, a.num_dst, num_loops, a.split_len, rowptr);
    part_out = device.empty({plan.chunk_bound, a.heads, a.channels}, lse.scalar_type(), out);
    part_lse = device.empty({plan.chunk_bound, a.heads}, lse.scalar_type(), out);
    a.chunk_ptr = chunk_ptr.mutable_data_ptr<int64_t>();
    a.part_out = part_out.mutable_data_ptr<A>();
    a.part_lse = part_lse.mutable_data_ptr<A>();
  }

  aligned = aligned && a.channels % VEC == 0 && is_aligned_16(a.out);
  const int64_t per_block = kBlock / a.group_size;
  const int64_t row_blocks = blocks_for(a.num_dst * a.heads * a.tiles, per_block);
  device.launch(aligned ? row_kernel<true, Rule, Index> : row_kernel<false, Rule, Index>,
                row_blocks, kBlock, a);
  if (plan.chunk_bound == 0) return;

  // Chunk groups and merge threads: at most one wave (kWave blocks per SM), striding over the
  // chunks that exist, so where nothing splits they exit at once.
  const int64_t wave = kWave * device.sms();
  const int64_t chunk_blocks =
      std::min(blocks_for(plan.chunk_bound * a.heads * a.tiles, per_block), wave);
  device.launch(aligned ? chunk_kernel<true, Rule, Index> : chunk_kernel<false, Rule, Index>,
                chunk_blocks, kBlock, a);
  const int64_t threads = plan.chunk_bound * a.heads * std::max<int64_t>(a.channels, 1);
  device.launch(merge_kernel<T>, std::min(blocks_for(threads, kBlock), wave), kBlock,
                static_cast<const A*>(a.part_out), static_cast<const A*>(a.part_lse),
                static_cast<const int64_t*>(a.chunk_ptr), a.num_dst, a.heads, a.channels, a.out,
                a.lse);
}

// out (N_dst, H, C) of `like`'s dtype and lse (N_dst, H) of the accumulation dtype, filled by
// launch(T{}, Index{}, out, lse) for the dtypes of `like` and `rowptr` (nothing to launch for
// N_dst = 0 or H = 0).
template <typename Device, typename Launch>
std::tuple<Tensor, Tensor> forward_outputs(const Device& device, const Tensor& like,
                                           const Tensor& rowptr, Launch&& launch) {
  const int64_t num_dst = rowptr.numel() - 1, heads = like.size(1), channels = like.size(2);
  Tensor out = device.empty({num_dst, heads, channels}, like.scalar_type(), like);
  Tensor lse = device.empty({num_dst, heads}, lse_dtype_for(like.scalar_type()), like);
  if (num_dst == 0 || heads == 0) return {out, lse};
  dispatch_types(like, rowptr, [&](auto type, auto index) { launch(type, index, out, lse); });
  return {out, lse};
}

template <typename Device>
std::tuple<Tensor, Tensor> fused_forward(
    const Tensor& h, const Tensor& s, const Tensor& d,
    const std::optional<Tensor>& t, const std::optional<Tensor>& t_loop,
    const Tensor& rowptr, const Tensor& col, int64_t num_loops, double negative_slope,
    double dropout, const std::optional<Tensor>& seed, const Hubs& row_hubs) {
  check_forward_inputs(h, s, d, t, t_loop, rowptr, col, num_loops, dropout, seed);
  check_hubs(row_hubs, "row_hubs");
  const typename Device::Guard guard(h);
  const Device device;
  return forward_outputs(device, h, rowptr, [&](auto type, auto index, Tensor& out,
                                                Tensor& lse) {
    using T = decltype(type);
    using A = acc_type<T>;
    GatRule<T> rule{};
    rule.values = h.mutable_data_ptr<T>();
    rule.s = score_array<const T>(s);
    rule.d = score_array<const T>(d);
    rule.t = score_array<const T>(t);
    rule.t_loop = score_array<const T>(t_loop);
    rule.slope = static_cast<A>(negative_slope);
    launch_forward<decltype(index)>(device, rule, is_aligned_16(rule.values), rowptr, col,
                                    num_loops, dropout, seed, row_hubs, out, lse);
  });
}

// Dead CSR slots (dropped self loops, past rowptr[N_dst]) get a zero edge-input gradient `grad`
// (`width` elements per slot), written over that tail alone (docs/design.md §2).
template <typename T, typename Index, typename Device>
void zero_dead_slots(const Device& device, const Index* rowptr, int64_t num_dst, int64_t num_slots,
                     int64_t width, T* grad) {
  if (grad == nullptr || num_slots * width == 0) return;
  device.launch(zero_dead_slots_kernel<T, Index>,
                std::min<int64_t>(blocks_for(num_slots * width, kBlock), 1024), kBlock, rowptr,
                num_dst, num_slots, static_cast<int>(width), grad);
}

template <typename T, typename Index, typename Device>
void launch_backward(const Device& device, const Tensor& dout, const Tensor& out,
                     const Tensor& lse, const Tensor& h, const Tensor& s,
                     const Tensor& d, const std::optional<Tensor>& t,
                     const std::optional<Tensor>& t_loop, const Tensor& rowptr,
                     const Tensor& col, const Tensor& colptr, const Tensor& csc_row,
                     const Tensor& csc_eid, int64_t num_loops, double negative_slope,
                     double dropout, const std::optional<Tensor>& seed,
                     const Hubs& col_hubs, Tensor& dh, Tensor& ds, Tensor& dd,
                     Tensor& dt, Tensor& dt_loop) {
  using A = acc_type<T>;
  constexpr int VEC = vec_width<T>();
  Tensor D = device.empty({d.size(0), d.size(1)}, lse.scalar_type(), lse);
  Tensor dz = device.empty({col.numel(), h.size(1)}, lse.scalar_type(), lse);
  Tensor dz_loop = device.empty({num_loops, h.size(1)}, lse.scalar_type(), lse);
  BackwardArgs<T, Index> a{};
  a.dout = dout.mutable_data_ptr<T>();
  a.out = out.mutable_data_ptr<T>();
  a.lse = lse.mutable_data_ptr<A>();
  a.h = h.mutable_data_ptr<T>();
  a.s = score_array<const T>(s);
  a.d = score_array<const T>(d);
  a.t = score_array<const T>(t);
  a.t_loop = score_array<const T>(t_loop);
  a.rowptr = rowptr.mutable_data_ptr<Index>();
  a.col = col.mutable_data_ptr<Index>();
  a.colptr = colptr.mutable_data_ptr<Index>();
  a.csc_row = csc_row.mutable_data_ptr<Index>();
  a.csc_eid = csc_eid.mutable_data_ptr<Index>();
  a.D = D.mutable_data_ptr<A>();
  a.dz = dz.mutable_data_ptr<A>();
  a.dz_loop = dz_loop.mutable_data_ptr<A>();
  a.dh = dh.mutable_data_ptr<T>();
  a.ds = score_array<T>(ds);
  a.dd = score_array<T>(dd);
  a.dt = score_array<T>(t.has_value() ? std::optional<Tensor>(dt) : std::nullopt);
  a.dt_loop = score_array<T>(t_loop.has_value() ? std::optional<Tensor>(dt_loop)
                                                : std::nullopt);
  a.num_src = h.size(0);
  a.num_dst = d.size(0);
  a.num_slots = col.numel();
  a.num_loops = num_loops;
  a.channels = h.size(2);
  a.heads = static_cast<int>(h.size(1));
  a.group_size = group_size(a.channels, VEC);
  a.tiles = channel_tiles(a.channels, a.group_size, VEC);
  a.slope = static_cast<A>(negative_slope);
  a.dropout = make_dropout(dropout, seed);

  const bool aligned = a.channels % VEC == 0 && is_aligned_16(a.dout) && is_aligned_16(a.out) &&
                       is_aligned_16(a.h) && is_aligned_16(a.dh);
  const int64_t per_block = kBlock / a.group_size;
  if (a.num_dst > 0) {  // D
    device.launch(aligned ? dot_kernel<true, T, Index> : dot_kernel<false, T, Index>,
                  blocks_for(a.num_dst * a.heads, per_block), kBlock, a);
  }
  // dt of T, or float beside 16-bit h: one of the two pointers is set.
  zero_dead_slots(device, a.rowptr, a.num_dst, a.num_slots, a.heads, a.dt.wide);
  zero_dead_slots(device, a.rowptr, a.num_dst, a.num_slots, a.heads, a.dt.narrow);
  if (a.num_src > 0) {  // CSC pass: dz per slot (dt, dt_loop), ds, dh; long columns split
    const SplitPlan plan(a.num_src, a.num_slots, num_loops, device.plan_sms(), col_hubs);
    a.split_len = plan.split_len;
    Tensor chunk_ptr, part_dh, part_ds;
    if (plan.chunk_bound > 0) {
      chunk_ptr = chunk_table(device, a.colptr, a.num_src, num_loops, a.split_len, colptr);
      part_dh = device.empty({plan.chunk_bound, a.heads, a.channels}, lse.scalar_type(), lse);
      part_ds = device.empty({plan.chunk_bound, a.heads}, lse.scalar_type(), lse);
      a.chunk_ptr = chunk_ptr.mutable_data_ptr<int64_t>();
      a.part_dh = part_dh.mutable_data_ptr<A>();
      a.part_ds = part_ds.mutable_data_ptr<A>();
    }
    device.launch(aligned ? csc_kernel<true, T, Index> : csc_kernel<false, T, Index>,
                  blocks_for(a.num_src * a.heads * a.tiles, per_block), kBlock, a);
    if (plan.chunk_bound > 0) {
      const int64_t wave = kWave * device.sms();
      device.launch(aligned ? csc_chunk_kernel<true, T, Index> : csc_chunk_kernel<false, T, Index>,
                    std::min(blocks_for(plan.chunk_bound * a.heads * a.tiles, per_block), wave),
                    kBlock, a);
      const int64_t threads = plan.chunk_bound * a.heads * std::max<int64_t>(a.channels, 1);
      device.launch(csc_merge_kernel<T, Index>, std::min(blocks_for(threads, kBlock), wave),
                    kBlock, a);
    }
  }
  if (a.num_dst > 0) {  // dd
    device.launch(row_sum_kernel<T, Index>, blocks_for(a.num_dst * a.heads,
                                                       kBlock / kRowSumLanes), kBlock, a);
  }
}

template <typename Device>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> fused_backward(
    const Tensor& dout, const Tensor& out, const Tensor& lse,
    const Tensor& h, const Tensor& s, const Tensor& d,
    const std::optional<Tensor>& t, const std::optional<Tensor>& t_loop,
    const Tensor& rowptr, const Tensor& col, const Tensor& colptr,
    const Tensor& csc_row, const Tensor& csc_eid, int64_t num_loops,
    double negative_slope, double dropout, const std::optional<Tensor>& seed,
    const Hubs& row_hubs, const Hubs& col_hubs) {
  check_backward_inputs(dout, out, lse, h, s, d, t, t_loop, rowptr, col, colptr, csc_row, csc_eid,
                        num_loops, dropout, seed);
  check_hubs(row_hubs, "row_hubs");  // GAT's backward splits columns only
  check_hubs(col_hubs, "col_hubs");
  const typename Device::Guard guard(dout);
  const Device device;
  Tensor dh = device.empty(h.sizes(), h.scalar_type(), h);
  Tensor ds = device.empty(s.sizes(), s.scalar_type(), s);
  Tensor dd = device.empty(d.sizes(), d.scalar_type(), d);
  // The score gradients take the scores' dtype (h's, or float32 beside 16-bit h).
  Tensor dt = t.has_value() ? device.empty(t->sizes(), t->scalar_type(), h)
                            : device.empty({0}, h.scalar_type(), h);
  Tensor dt_loop = t_loop.has_value() ? device.empty(t_loop->sizes(), t_loop->scalar_type(), h)
                                      : device.empty({0}, h.scalar_type(), h);
  if (h.size(1) == 0) return {dh, ds, dd, dt, dt_loop};
  dispatch_types(h, rowptr, [&](auto type, auto index) {
    launch_backward<decltype(type), decltype(index)>(
        device, dout, out, lse, h, s, d, t, t_loop, rowptr, col, colptr, csc_row, csc_eid,
        num_loops, negative_slope, dropout, seed, col_hubs, dh, ds, dd, dt, dt_loop);
  });
  return {dh, ds, dd, dt, dt_loop};
}

}  // namespace cuda
}  // namespace fastgat
