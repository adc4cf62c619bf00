// Fused attention forward on CUDA (docs/design.md §2, §6): per destination row and head, one
// pass over the in-edges with an online softmax; writes only out (N_dst, H, C) and lse (N_dst, H).
// The skeleton is templated on a scoring Rule (below), as the CPU's csrc/cpu/attention_rows.h:
// GAT's GatRule here, other layers' rules in headers of their own.
//
// Entries of row i: its CSR slots rowptr[i] .. rowptr[i+1]), then its implicit self loop
// (i < num_loops: source i, dropout slot E + i).
//
// Degree skew without a host sync: a lane group takes a whole row when the row has at most
// L entries, L = max(256, min(4 * average entries per row, entries / (8 * SMs))) from shapes
// alone (the second term gives a few huge rows work for every SM). Longer rows are cut into
// chunks of L, each chunk a work item of its own that writes a partial (out, lse) state; a
// merge kernel combines a row's chunks in chunk order (deterministic). When E + 1 <= L no row
// can split and only the row kernel runs. Otherwise which rows split is read on the device: a
// small kernel counts chunks per row, a device cumsum numbers them, and the partials are sized
// for ceil(2 (E + num_loops) / L) >= the true count (a row of n > L entries has
// ceil(n / L) < 2 n / L chunks). The chunk and merge kernels run on at most one wave of blocks
// and stride over the chunk count read on the device, so where nothing splits they exit at once.
//
// A Rule says what one entry scores and what it adds (T the element type, A = opmath of T,
// VEC = vec_width<T>(), Index the graph's index type; methods are __device__ and const):
//   using T                        element type of the inputs and of out
//   using Value                    one lane's VEC channels of an entry's value, as loaded
//   kValueReadsSlot                whether value() reads the entry's slot (e.g. v_j + e_ij),
//                                  so the skeleton broadcasts the slot beside the source
//   kMaxRegisters                  registers a thread of the row and chunk kernels may use
//                                  (__maxnreg__), a budget the rule's kernels fit unspilled
//   struct Row                     what an item reads once: d_i, or this lane's tile-0 channels
//   Row row<ALIGNED>(item)           of xr_i and att
//   struct Entry                   per-lane data of an entry fetched with its source, a step
//   Entry entry(item, slot, loop)    ahead of use (GAT's t_ij); loop: the self loop of row
//                                    item.i (slot E + i; elsewhere slot >= item.num_slots)
//   A logit<ALIGNED>(g, item, row, j, slot, entry, valid, n)
//                                  the score of this lane's entry (source j, CSR slot, valid
//                                  for lanes k < n of the step), -inf where !valid. Every lane
//                                  of the group calls it together, so a score summed over all
//                                  C channels (GATv2, TransformerConv) is a group reduction
//                                  (group_logits); a score that needs all of C while the item
//                                  owns one tile loops over the tiles (recomputed per tile).
//   void value<ALIGNED>(item, j, slot, Value&)   this lane's channels of the entry's value
//   void accumulate(acc, w, value)               acc[v] += w * value[v]
// So a new layer costs a rule, not a copy of the online softmax or of the split/merge plan.
// Kernels assume valid input (fastgat/graph.py builds it; csrc/common/checks.h checks shapes).
// Device code only, included by the .cu files (nvcc) and by csrc/emulated/ (the host compiler
// with the SIMT emulator): the launch code lives in launch.h.
#pragma once
#include <algorithm>
#include <cstdint>

#include "gat_cuda.cuh"

namespace fastgat {
namespace cuda {

// One work item as a rule sees it: row i, a head, and this lane's channels.
struct Item {
  int64_t i;          // destination row
  int head, heads;
  int64_t channels;   // C
  int64_t c0;         // this lane's first channel in the item's tile
  int64_t c_first;    // this lane's first channel in tile 0
  int64_t stride;     // channels per tile (G * VEC): a lane's next channels are c + stride
  int64_t num_slots;  // E: slot E + i is row i's self loop
};

// The Item of row i, a head and a channel tile for this lane of group g, VEC channels a lane.
template <int VEC>
__device__ __forceinline__ Item make_item(const Group& g, int64_t i, int head, int heads,
                                          int64_t tile, int64_t channels, int64_t num_slots) {
  const int64_t stride = static_cast<int64_t>(g.size) * VEC;
  const int64_t c_first = static_cast<int64_t>(g.lane) * VEC;
  return Item{i, head, heads, channels, tile * stride + c_first, c_first, stride, num_slots};
}

// A value gathered as the source's row: h_j (GAT) or xl_j (GATv2).
template <typename T_>
struct SourceValue {
  using T = T_;
  using A = acc_type<T>;
  static constexpr int VEC = vec_width<T>();
  using Value = Pack<T, VEC>;
  static constexpr bool kValueReadsSlot = false;
  const T* values;  // (N_src, H, C)

  template <bool ALIGNED, typename Index>
  __device__ __forceinline__ void value(const Item& it, Index j, int64_t, Value& v) const {
    load_pack<ALIGNED>(values + (static_cast<int64_t>(j) * it.heads + it.head) * it.channels,
                       it.c0, it.channels, v);
  }
  __device__ __forceinline__ static void accumulate(A (&acc)[VEC], A w, const Value& v) {
#pragma unroll
    for (int k = 0; k < VEC; ++k) acc[k] += w * static_cast<A>(v.get(k));
  }
};

// GAT (docs/design.md §2): x_ij = LeakyReLU(s_j + d_i + t_ij), the value h_j (values).
template <typename T_>
struct GatRule : SourceValue<T_> {
  using T = T_;
  using A = acc_type<T>;
  // 96 or fewer: 2 blocks of 256 threads per SM on Hopper with room to spare, and the 16-bit
  // and float kernels need no more (ptxas alone took up to 102 where it had the room); double
  // would spill under 96.
  static constexpr int kMaxRegisters = sizeof(T) == 8 ? 128 : 96;
  ScoreArray<const T> s;
  ScoreArray<const T> d;
  ScoreArray<const T> t;       // absent without edge scores
  ScoreArray<const T> t_loop;  // absent without loop scores
  A slope;

  struct Row {
    A d_i;
  };
  struct Entry {
    A t;
  };
  template <bool ALIGNED>
  __device__ __forceinline__ Row row(const Item& it) const {
    return {d[it.i * it.heads + it.head]};
  }
  __device__ __forceinline__ Entry entry(const Item& it, int64_t slot, bool loop) const {
    if (loop) {
      return {t_loop.present() ? t_loop[it.i * it.heads + it.head] : A(0)};
    }
    return {t.present() ? t[slot * it.heads + it.head] : A(0)};
  }
  template <bool ALIGNED, typename Index>
  __device__ __forceinline__ A logit(const Group&, const Item& it, const Row& r, Index j, int64_t,
                                     const Entry& en, bool valid, int) const {
    return valid ? leaky_relu(s[static_cast<int64_t>(j) * it.heads + it.head] + r.d_i + en.t,
                              slope)
                 : minus_infinity<A>();
  }
};

// This lane's score of its entry (lane k: entry k of the step, k < n) where a score is a sum
// over all C channels: entry e's (j, slot) go to the whole group, each lane adds its channels'
// terms (partial(j, slot), every tile), a group sum, and lane e keeps it.
template <typename A, typename Index, typename Partial>
__device__ __forceinline__ A group_logits(const Group& g, int n, Index j, int64_t slot,
                                          const Partial& partial) {
  A mine = A(0);
  for (int e = 0; e < n; ++e) {
    const A z = g.sum(partial(g.broadcast(j, e), g.broadcast(slot, e)));
    if (g.lane == e) mine = z;
  }
  return mine;
}

template <typename Rule, typename Index>
struct ForwardArgs {
  using T = typename Rule::T;
  using A = acc_type<T>;
  Rule rule;
  const Index* rowptr;
  const Index* col;
  T* out;
  A* lse;
  A* part_out;               // (chunks, H, C) partial outputs of split rows
  A* part_lse;               // (chunks, H)
  const int64_t* chunk_ptr;  // (N_dst + 1) first chunk of each row; nullptr: nothing splits
  int64_t num_dst, num_slots, num_loops, split_len, channels;
  int heads, group_size;
  int64_t tiles;
  Dropout dropout;
};

// One work item: entries [begin, end) of row i for one head and channel tile; chunk >= 0 for a
// piece of a split row (writes a partial), -1 for a whole row (writes out and lse).
template <bool ALIGNED, typename Rule, typename Index>
__device__ __forceinline__ void forward_item(const ForwardArgs<Rule, Index>& a, const Group& g,
                                             int64_t i, int head, int64_t tile, int64_t begin,
                                             int64_t end, int64_t chunk) {
  using T = typename Rule::T;
  using A = acc_type<T>;
  using Entry = typename Rule::Entry;
  constexpr int VEC = vec_width<T>();
  const int heads = a.heads;
  const int64_t row_begin = a.rowptr[i];
  const int64_t degree = static_cast<int64_t>(a.rowptr[i + 1]) - row_begin;
  const Item item = make_item<VEC>(g, i, head, heads, tile, a.channels, a.num_slots);
  const typename Rule::Row row = a.rule.template row<ALIGNED>(item);
  const uint64_t seed = a.dropout.seed_value();

  // The item's entries as 32-bit offsets q from begin (end - begin <= split_len < 2^31, see
  // SplitPlan in launch.h): q < csr is CSR slot first + q, q == csr the self loop (slot E + i).
  // A slot is recomputed from q where it is used rather than carried across the gather.
  const int64_t first = row_begin + begin;
  const int count = static_cast<int>(end - begin);
  const int csr = static_cast<int>(std::min(degree - begin, end - begin));
  auto slot_of = [&](int q) { return q < csr ? first + q : a.num_slots + i; };
  // Entry q's source j and the rule's Entry.
  auto fetch = [&](int q, Index& j, Entry& en) {
    if (q < csr) {
      j = a.col[first + q];
      en = a.rule.entry(item, first + q, false);
    } else {
      j = static_cast<Index>(i);
      en = a.rule.entry(item, a.num_slots + i, true);
    }
  };

  A m = minus_infinity<A>(), l = A(0), acc[VEC];
#pragma unroll
  for (int v = 0; v < VEC; ++v) acc[v] = A(0);

  // Lane k scores entry base + k; the next step's col and Entry are fetched before this step's
  // gather so their latency hides behind it.
  Index j = 0;
  Entry en{};
  bool valid = g.lane < count;
  if (valid) fetch(g.lane, j, en);
  for (int base = 0; base < count; base += g.size) {
    const int n = std::min(g.size, count - base);
    const int64_t slot = slot_of(base + g.lane);
    const A x = a.rule.template logit<ALIGNED>(g, item, row, j, slot, en, valid, n);
    const A keep = valid ? a.dropout.template keep<A>(seed, slot, heads, head) : A(0);
    const Index j_now = j;

    const int next = base + g.size + g.lane;
    valid = next < count;
    if (valid) fetch(next, j, en);

    const A m_new = g.max(m > x ? m : x);
    const A rescale = m == m_new ? A(1) : exp_(m - m_new);  // m = m_new = -inf: no NaN
    const A p = x == minus_infinity<A>() ? A(0) : exp_(x - m_new);
    l = l * rescale + g.sum(p);
    m = m_new;
#pragma unroll
    for (int v = 0; v < VEC; ++v) acc[v] *= rescale;

    // Gather: kInFlight values in flight per step, lanes across channels. Unaligned values
    // load element by element, so two of them already keep 2 * VEC loads in flight.
    constexpr int kInFlight = ALIGNED ? 4 : 2;
    const A w = p * keep;
    for (int e = 0; e < n; e += kInFlight) {
      Index src[kInFlight];
      int64_t src_slot[kInFlight] = {};
      A weight[kInFlight];
      typename Rule::Value value[kInFlight];
#pragma unroll
      for (int u = 0; u < kInFlight; ++u) {
        src[u] = g.broadcast(j_now, (e + u) & (g.size - 1));
        if constexpr (Rule::kValueReadsSlot) {
          src_slot[u] = g.broadcast(slot, (e + u) & (g.size - 1));
        }
        weight[u] = g.broadcast(w, (e + u) & (g.size - 1));
      }
#pragma unroll
      for (int u = 0; u < kInFlight; ++u) {
        if (e + u < n) a.rule.template value<ALIGNED>(item, src[u], src_slot[u], value[u]);
      }
#pragma unroll
      for (int u = 0; u < kInFlight; ++u) {
        if (e + u < n) Rule::accumulate(acc, weight[u], value[u]);
      }
    }
  }

  // l = 0 (no entry, or every score -inf): out = 0, lse = -inf.
  const A lse = l > A(0) ? m + log_(l) : minus_infinity<A>();
  const A scale = l > A(0) ? A(1) / l : A(0);
  if (chunk < 0) {
    store<ALIGNED>(a.out + (i * heads + head) * a.channels, item.c0, a.channels, acc, scale);
    if (tile == 0 && g.lane == 0) a.lse[i * heads + head] = lse;
  } else {
    store<false>(a.part_out + (chunk * heads + head) * a.channels, item.c0, a.channels, acc, scale);
    if (tile == 0 && g.lane == 0) a.part_lse[chunk * heads + head] = lse;
  }
}

// A group per (row, head, tile); rows that split are left to chunk_kernel. __maxnreg__ in place
// of __launch_bounds__ (they exclude each other): the budget is the rule's, kBlock threads fit it.
template <bool ALIGNED, typename Rule, typename Index>
__global__ void __maxnreg__(Rule::kMaxRegisters) row_kernel(const ForwardArgs<Rule, Index> a) {
  const Group g(a.group_size);
  const int64_t per_row = a.heads * a.tiles;
  const int64_t item = g.index();
  if (item >= a.num_dst * per_row) return;
  const int64_t i = item / per_row;
  const int64_t entries = static_cast<int64_t>(a.rowptr[i + 1]) - a.rowptr[i] + (i < a.num_loops);
  if (a.chunk_ptr != nullptr && entries > a.split_len) return;
  forward_item<ALIGNED>(a, g, i, static_cast<int>(item % per_row / a.tiles), item % a.tiles, 0,
                        entries, -1);
}

// A group per (chunk, head, tile), striding over the chunk count read on the device. A kernel
// of its own so that its loop state does not raise row_kernel's register count.
template <bool ALIGNED, typename Rule, typename Index>
__global__ void __maxnreg__(Rule::kMaxRegisters) chunk_kernel(const ForwardArgs<Rule, Index> a) {
  const Group g(a.group_size);
  const int64_t per_row = a.heads * a.tiles;
  const int64_t items = a.chunk_ptr[a.num_dst] * per_row;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * (kBlock / g.size);
  for (int64_t item = g.index(); item < items; item += stride) {
    const int64_t chunk = item / per_row;
    const int64_t i = row_of_chunk(a.chunk_ptr, a.num_dst, chunk);
    const int64_t entries = static_cast<int64_t>(a.rowptr[i + 1]) - a.rowptr[i] + (i < a.num_loops);
    const int64_t begin = (chunk - a.chunk_ptr[i]) * a.split_len;
    forward_item<ALIGNED>(a, g, i, static_cast<int>(item % per_row / a.tiles), item % a.tiles,
                          begin, std::min(begin + a.split_len, entries), chunk);
  }
}

// A thread per (chunk, head, channel), striding over the chunk count on the device; the
// thread of a row's first chunk merges the row's chunks in order: out = sum_c out_c
// exp(lse_c - lse), lse = logsumexp_c lse_c. Chunks with lse_c = -inf (l = 0) weigh 0, and a
// row without a finite score keeps out = 0, lse = -inf.
template <typename T>
__global__ void merge_kernel(const acc_type<T>* __restrict__ part_out,
                             const acc_type<T>* __restrict__ part_lse,
                             const int64_t* __restrict__ chunk_ptr, int64_t num_dst, int heads,
                             int64_t channels, T* __restrict__ out,
                             acc_type<T>* __restrict__ lse) {
  using A = acc_type<T>;
  const int64_t width = std::max<int64_t>(channels, 1);
  const int64_t work = chunk_ptr[num_dst] * heads * width;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; index < work;
       index += stride) {
    const int64_t c = index % width, chunk_head = index / width;
    const int64_t chunk = chunk_head / heads, head = chunk_head % heads;
    const int64_t i = row_of_chunk(chunk_ptr, num_dst, chunk);
    const int64_t first = chunk_ptr[i], last = chunk_ptr[i + 1];
    if (chunk != first) continue;
    A m = minus_infinity<A>();
    for (int64_t q = first; q < last; ++q) {
      const A lse_q = part_lse[q * heads + head];
      m = lse_q > m ? lse_q : m;
    }
    A l = A(0), acc = A(0);
    for (int64_t q = first; q < last; ++q) {
      const A lse_q = part_lse[q * heads + head];
      const A weight = lse_q == minus_infinity<A>() ? A(0) : exp_(lse_q - m);
      l += weight;
      if (c < channels) acc += weight * part_out[(q * heads + head) * channels + c];
    }
    const int64_t row_head = i * heads + head;
    if (c < channels) out[row_head * channels + c] = static_cast<T>(l > A(0) ? acc / l : A(0));
    if (c == 0) lse[row_head] = l > A(0) ? m + log_(l) : minus_infinity<A>();
  }
}

}  // namespace cuda
}  // namespace fastgat
