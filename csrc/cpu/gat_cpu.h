// Pieces shared by the fused CPU forward and backward (docs/design.md §2): vectorised channel loops
// with float accumulation (double for float64), edge scores, dropout, and row partitioning by
// edge count so that power-law degrees balance across threads.
// Kernels assume inputs that passed csrc/common/checks.h and graph preparation (fastgat/graph.py).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#include "../common/philox.h"
#include "../common/stable.h"

// The build targets baseline x86-64 (no -mavx2: the library must load on any CPU).
// FASTGAT_CLONES compiles a row kernel twice, baseline and AVX2, and the loader picks one per
// CPU, so the inlined channel loops run 8 lanes wide where the CPU has them. (An "arch=" clone
// would also give FMA, but GCC then refuses to inline the baseline helpers into it.)
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define FASTGAT_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define FASTGAT_CLONES
#endif

namespace fastgat::cpu {

template <typename scalar_t>
using acc_t = acc_type<scalar_t>;

// Dead CSR slots (dropped self loops, past rowptr[N_dst]) carry no edge: their rows of the
// edge-input gradient `grad` (one row per slot; empty without an edge input) are zero, written
// over that tail alone (docs/design.md §2). Returns rowptr[N_dst], the first dead slot.
inline int64_t zero_dead_slots(Tensor& grad, const Tensor& rowptr) {
  int64_t live = 0;
  dispatch_index(rowptr.scalar_type(), [&](auto index) {
    live = rowptr.const_data_ptr<decltype(index)>()[rowptr.numel() - 1];
  });
  if (grad.numel() > 0) {
    Tensor dead = torch::stable::narrow(grad, 0, live, grad.size(0) - live);
    torch::stable::zero_(dead);
  }
  return live;
}

// Channel loops run on 32-byte vectors of the accumulation type (GCC vector extensions): one
// AVX2 register in the AVX2 clone, two SSE ones at baseline. They are written out, not left to
// the auto-vectoriser: inlined into the large row kernels, GCC kept loops with a select or a
// reduction scalar (perf annotate of the GATv2 kernels showed only vaddss / vmulss).
// at::vec::Vectorized is not used on purpose: without -mavx2 on the command line it is ATen's
// portable version, which round-trips every vector through the stack and ran 2-3x slower.
template <typename acc>
struct LanesOf {
  typedef acc type __attribute__((vector_size(32)));
  typedef acc half __attribute__((vector_size(16)));
};
template <typename acc>
using Lanes = typename LanesOf<acc>::type;
template <typename acc>
using HalfLanes = typename LanesOf<acc>::half;  // a loop's last half vector (4 heads of 8)
template <typename acc>
constexpr int64_t kWidth = 32 / sizeof(acc);

// Inlined where they are used: -Wpsabi's note on passing vectors by value does not apply.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"
// A channel loop's body is written once, generic in V: Lanes<acc> for the full vectors of a
// row, then acc for the tail channels. load<V> / store read and write at channel c either way.
template <typename V, typename scalar_t>
[[gnu::always_inline]] inline V load(const scalar_t* x) {
  if constexpr (std::is_arithmetic_v<V>) {
    return static_cast<V>(*x);
  } else {
    V v;
    for (int64_t k = 0; k < int64_t(sizeof(V) / sizeof(v[0])); ++k) {
      v[k] = static_cast<std::remove_reference_t<decltype(v[0])>>(x[k]);
    }
    return v;
  }
}

template <typename acc, typename V>
[[gnu::always_inline]] inline void store(acc* y, V v) {
  std::memcpy(y, &v, sizeof(v));
}

// body(c, V{}) for every channel c < C: vectors, a half vector, then the tail one by one.
template <typename acc, typename Body>
[[gnu::always_inline]] inline void each_channel(int64_t C, Body&& body) {
  int64_t c = 0;
  for (; c + kWidth<acc> <= C; c += kWidth<acc>) body(c, Lanes<acc>{});
  if (c + kWidth<acc> / 2 <= C) {
    body(c, HalfLanes<acc>{});
    c += kWidth<acc> / 2;
  }
  for (; c < C; ++c) body(c, acc{});
}

// sum over c < C of term(c, V{}), in a fixed order (vector lanes, then the tail), so results do
// not depend on the thread count.
template <typename acc, typename Term>
[[gnu::always_inline]] inline acc sum_channels(int64_t C, Term&& term) {
  Lanes<acc> lanes = {};
  int64_t c = 0;
  for (; c + kWidth<acc> <= C; c += kWidth<acc>) lanes += term(c, Lanes<acc>{});
  acc total = 0;
  for (int64_t k = 0; k < kWidth<acc>; ++k) total += lanes[k];
  for (; c < C; ++c) total += term(c, acc{});
  return total;
}

// acc[c] += w * x[c] for c < C.
template <typename scalar_t>
[[gnu::always_inline]] inline void axpy(acc_t<scalar_t>* __restrict acc, acc_t<scalar_t> w,
                                        const scalar_t* __restrict x, int64_t C) {
  each_channel<acc_t<scalar_t>>(C, [&](int64_t c, auto v) __attribute__((always_inline)) {
    using V = decltype(v);
    store(acc + c, load<V>(acc + c) + w * load<V>(x + c));
  });
}

// sum_c a[c] * b[c], in a fixed order.
template <typename scalar_t>
[[gnu::always_inline]] inline acc_t<scalar_t> dot(const scalar_t* a, const scalar_t* b,
                                                  int64_t C) {
  return sum_channels<acc_t<scalar_t>>(C, [&](int64_t c, auto v) __attribute__((always_inline)) {
    using V = decltype(v);
    return load<V>(a + c) * load<V>(b + c);
  });
}

// The element type of a channel loop's V: V itself for scalars, the lane type for vectors.
template <typename V, typename = void>
struct ElementOf {
  using type = V;
};
template <typename V>
struct ElementOf<V, std::enable_if_t<!std::is_arithmetic_v<V>>> {
  using type = std::remove_cvref_t<decltype(std::declval<V&>()[0])>;
};

// The bits of float lanes V: a vector of as many int32.
template <typename V>
struct BitsOf {
  typedef int32_t type __attribute__((vector_size(sizeof(V))));
};

// The integer vector __builtin_shuffle takes for V: lanes of V's element width.
template <typename V, size_t element_bytes>
struct ShuffleMask {
  using Int = std::conditional_t<element_bytes == 4, int32_t, int64_t>;
  typedef Int type __attribute__((vector_size(sizeof(V))));
};

// The lane of (a, b) that lane l of pair_sums<span> adds first (low) or second (low + span).
constexpr int pair_source(int l, int span, int W) {
  const int unit = l / (2 * span), pos = l % (2 * span);
  return unit * 2 * span + pos % span + (pos < span ? 0 : W);
}

// Pairwise sums of adjacent blocks of `span` lanes, a's and b's blocks interleaved: a level of
// the tree by which lane_sums turns W vectors into one vector of their W lane sums.
template <int span, typename V, size_t... l>
[[gnu::always_inline]] inline V pair_sums(V a, V b, std::index_sequence<l...>) {
  constexpr int W = sizeof...(l);
  using Mask = typename ShuffleMask<V, sizeof(V) / W>::type;
  constexpr Mask low{pair_source(l, span, W)...}, high{(pair_source(l, span, W) + span)...};
  return __builtin_shuffle(a, b, low) + __builtin_shuffle(a, b, high);
}

// The vector whose lane q is the sum of v[q]'s lanes, for W = kWidth vectors v (v is spent).
template <typename V, int span = 1>
[[gnu::always_inline]] inline V lane_sums(V* v) {
  constexpr int W = sizeof(V) / sizeof(v[0][0]);
  if constexpr (span == W) {
    return v[0];
  } else {
#pragma GCC unroll 8
    for (int q = 0; q < W / (2 * span); ++q) {
      v[q] = pair_sums<span>(v[2 * q], v[2 * q + 1], std::make_index_sequence<W>());
    }
    return lane_sums<V, 2 * span>(v);
  }
}


// out[h] = <a[h, :], b[h, :]> for the H heads of two rows of H x C, summed in acc in a fixed
// order and stored as out_t (the caller's array, so no copy follows). Where C
// is a multiple of the vector width and H > 1, a head's channels fold into one vector and W
// heads' vectors are summed by one lane_sums tree: a dot product per head would end in a lane
// sum per head (at C = 8, most of the work).
template <typename scalar_t, typename out_t>
[[gnu::always_inline]] inline void dots_per_head(const scalar_t* a, const scalar_t* b, int64_t H,
                                                 int64_t C, out_t* out) {
  using acc = acc_t<scalar_t>;
  using V = Lanes<acc>;
  constexpr int64_t W = kWidth<acc>;
  if (C % W != 0 || H == 1) {
    for (int64_t hd = 0; hd < H; ++hd) {
      out[hd] = static_cast<out_t>(dot(a + hd * C, b + hd * C, C));
    }
    return;
  }
  V head[W];
  acc sums[W];
  for (int64_t h0 = 0; h0 < H; h0 += W) {
    const int64_t m = std::min<int64_t>(W, H - h0);
#pragma GCC unroll 8
    for (int64_t q = 0; q < W; ++q) {
      head[q] = V{};
      for (int64_t c = 0; q < m && c < C; c += W) {
        const int64_t at = (h0 + q) * C + c;
        head[q] += load<V>(a + at) * load<V>(b + at);
      }
    }
    store(sums, lane_sums(head));
    for (int64_t q = 0; q < m; ++q) out[h0 + q] = static_cast<out_t>(sums[q]);
  }
}

// exp(x) of the softmax weights, written once for scalars and vector lanes so that a row's
// vector heads and tail heads agree bitwise, and inlined: libm's expf was a call per edge and
// head, a large part of the forward at few channels per head. float: Cody-Waite reduction by
// ln 2 and Cephes' degree-6 expf polynomial (within 2 ulp of exp) for x <= 88.37 (callers pass
// x <= ~0); x < -87.33 (exp below FLT_MIN) gives 0, so exp(-inf) = 0 as the softmax needs.
// double keeps libm's exp, lane by lane.
template <typename V>
[[gnu::always_inline]] inline V exp_of(V x) {
  using E = typename ElementOf<V>::type;
  if constexpr (!std::is_same_v<E, float>) {
    if constexpr (std::is_arithmetic_v<V>) {
      return std::exp(x);
    } else {
      V y;
      for (int64_t k = 0; k < int64_t(sizeof(V) / sizeof(E)); ++k) y[k] = std::exp(x[k]);
      return y;
    }
  } else {
    using I = typename std::conditional_t<std::is_arithmetic_v<V>, std::type_identity<int32_t>,
                                          BitsOf<V>>::type;
    static_assert(sizeof(I) == sizeof(V));
    const V below = x < -87.33654f ? V{} + 1.0f : V{};  // 1 where the result is 0
    x = x > 88.3762626647949f ? V{} + 88.3762626647949f : x;
    x = below != 0.0f ? V{} : x;
    // n = round(x / ln 2) in the low mantissa bits of `shifted` (1.5 * 2^23 rounds to integer).
    const V shifted = x * 1.44269504088896341f + 12582912.0f;
    const V n = shifted - 12582912.0f;
    const V r = x - n * 0.693359375f - n * -2.12194440e-4f;
    V p = r * 1.9875691500e-4f + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    const V y = p * r * r + r + 1.0f;
    I bits, magic_bits;
    const V magic = V{} + 12582912.0f;
    std::memcpy(&bits, &shifted, sizeof(V));
    std::memcpy(&magic_bits, &magic, sizeof(V));
    const I scale_bits = (bits - magic_bits + 127) << 23;  // 2^n as a float's bits
    V scale;
    std::memcpy(&scale, &scale_bits, sizeof(V));
    return below != 0.0f ? V{} : y * scale;
  }
}

// max(a, b) as std::max(a, b) lane by lane.
template <typename V>
[[gnu::always_inline]] inline V max_of(V a, V b) {
  return a < b ? b : a;
}

// The lse that alpha = exp(x - lse) is recomputed from: a row of -inf scores only has
// lse = -inf and must weigh nothing, so read it as +inf (alpha = 0, never exp(-inf + inf)).
template <typename V>
[[gnu::always_inline]] inline V lse_for_alpha(V lse) {
  using E = typename ElementOf<V>::type;
  constexpr E inf = std::numeric_limits<E>::infinity();
  return lse == -inf ? V{} + inf : lse;
}
#pragma GCC diagnostic pop

// Gathered rows are random reads, latency-bound on sparse graphs: the row loops ask for the
// rows of the edge kPrefetch slots ahead (across row boundaries) while the current one works.
constexpr int64_t kPrefetch = 8;

// Asks for the cache lines of [p, p + bytes). Always inlined: GCC deems a call to a function
// that only prefetches free of effects and deletes it before it would inline it.
[[gnu::always_inline]] inline void prefetch(const void* p, int64_t bytes) {
  const char* at = static_cast<const char*>(p);
#pragma GCC unroll 8
  for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch(at + b);
}

// Long rows are summed in chunks of kChunk edges, each chunk's sum then added to the row's:
// the rounding error grows with n / kChunk + kChunk instead of n (a hub of 200k edges lost
// ~2e-4 relative in float32 when summed edge by edge).
constexpr int64_t kChunk = 256;

// total[c] += part[c], part[c] = 0 for c < n.
template <typename acc>
inline void flush(acc* total, acc* part, int64_t n) {
  for (int64_t c = 0; c < n; ++c) {
    total[c] += part[c];
    part[c] = acc(0);
  }
}

// y[c] = x[c] for c < n, narrowing acc_t back to scalar_t.
template <typename scalar_t>
inline void store(scalar_t* y, const acc_t<scalar_t>* x, int64_t n) {
  for (int64_t c = 0; c < n; ++c) y[c] = static_cast<scalar_t>(x[c]);
}

// D_i = <dout_i, out_i> per head for rows [begin, end): the softmax term of every rule's
// backward (docs/design.md §2), a dense pass. D_i is at D + i * stride (by default H).
template <typename scalar_t>
inline void row_dots(const scalar_t* dout, const scalar_t* out, acc_t<scalar_t>* D, int64_t H,
                     int64_t C, int64_t begin, int64_t end, int64_t stride = 0) {
  stride = stride > 0 ? stride : H;
  for (int64_t i = begin; i < end; ++i) {
    dots_per_head(dout + i * H * C, out + i * H * C, H, C, D + i * stride);
  }
}

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"  // vectors kept in always-inlined helpers
// Weighted sums of gathered rows, for `rows` with heads, channels, an accumulation type acc and
// value_row(j), source j's H x C values:
// dst[c] += sum over q < m of w[q * H + head of c] * value_row(src[q])[c], for the channels c
// of one block [c0, c0 + NB W). The block's NB vector sums stay in registers over all the
// rows, where a per-head axpy loaded and stored them per row (needs C % W == 0, so that no
// vector spans two heads). The same products summed in the same order as axpy's.
// lane_head[v] is the head of the channels [v W, (v + 1) W) (lane_heads).
template <int NB, typename Rows>
[[gnu::always_inline]] inline void gather_block(const Rows& rows, const int64_t* lane_head,
                                                const int64_t* src, int64_t m,
                                                const typename Rows::acc* w, int64_t c0,
                                                typename Rows::acc* dst) {
  using acc = typename Rows::acc;
  using V = Lanes<acc>;
  constexpr int64_t W = kWidth<acc>;
  const int64_t H = rows.heads;
  const int64_t* head = lane_head + c0 / W;
  V sum[NB] = {};
  for (int64_t q = 0; q < m; ++q) {
    const auto* row = rows.value_row(src[q]) + c0;
    const acc* w_e = w + q * H;
#pragma GCC unroll 8
    for (int b = 0; b < NB; ++b) sum[b] += w_e[head[b]] * load<V>(row + b * W);
  }
  for (int b = 0; b < NB; ++b) store(dst + c0 + b * W, load<V>(dst + c0 + b * W) + sum[b]);
}

// The head of each vector of W channels in a row of H x C (C % W == 0), made once per kernel
// call: a division per vector per row cost as much as a short row's sum.
template <typename acc>
std::vector<int64_t> lane_heads(int64_t heads, int64_t channels) {
  std::vector<int64_t> head(heads * channels / kWidth<acc>);
  for (size_t v = 0; v < head.size(); ++v) head[v] = int64_t(v) * kWidth<acc> / channels;
  return head;
}

// gather_block over all H x C channels: blocks of 8 vectors (8 of AVX2's 16 registers), then
// 4, 2, 1.
template <typename Rows>
[[gnu::always_inline]] inline void gather_rows(const Rows& rows, const int64_t* lane_head,
                                               const int64_t* src, int64_t m,
                                               const typename Rows::acc* w,
                                               typename Rows::acc* dst) {
  constexpr int64_t W = kWidth<typename Rows::acc>;
  const int64_t HC = rows.heads * rows.channels;
  int64_t c0 = 0;
  for (; c0 + 8 * W <= HC; c0 += 8 * W) gather_block<8>(rows, lane_head, src, m, w, c0, dst);
  if (c0 + 4 * W <= HC) {
    gather_block<4>(rows, lane_head, src, m, w, c0, dst);
    c0 += 4 * W;
  }
  if (c0 + 2 * W <= HC) {
    gather_block<2>(rows, lane_head, src, m, w, c0, dst);
    c0 += 2 * W;
  }
  if (c0 < HC) gather_block<1>(rows, lane_head, src, m, w, c0, dst);
}

#pragma GCC diagnostic pop

// Attention dropout of every rule (fastgat/dropout.py): edge slot k, head h keeps with the
// Philox draw at index k * H + h and is scaled by 1 / (1 - p); node i's self loop is slot E + i.
template <typename acc>
struct EdgeDropout {
  bool on;
  uint64_t seed;
  uint32_t threshold;
  acc inv_keep;
  int64_t heads;

  EdgeDropout(double p, const std::optional<Tensor>& seed_tensor, int64_t heads)
      : on(p > 0.0),
        seed(on ? static_cast<uint64_t>(*seed_tensor->const_data_ptr<int64_t>()) : 0),
        threshold(fastgat::dropout_threshold(p)),
        inv_keep(static_cast<acc>(1.0 / (1.0 - p))),
        heads(heads) {}

  // keep[h] for every head of edge slot `slot`, drawn 8 heads at a time in vector lanes (a draw
  // per head one by one cost as much as the rest of a small graph's forward). The scale
  // stays in acc (float64 keeps 1 / (1 - p) exact).
  // keep of one (slot, head): for loops that visit heads one by one.
  acc keep(int64_t slot, int64_t h) const {
    if (!on) return acc(1);
    const uint64_t index = static_cast<uint64_t>(slot) * static_cast<uint64_t>(heads) + h;
    return (fastgat::philox_word0(seed, index) >> 1) >= threshold ? inv_keep : acc(0);
  }

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"  // vectors passed to always-inlined helpers only
  // Without dropout it writes nothing: callers start keep at 1 (a fill per edge cost more
  // than a small row's gather).
  void keep_heads(int64_t slot, acc* keep) const {
    if (!on) return;
    const uint64_t first = static_cast<uint64_t>(slot) * static_cast<uint64_t>(heads);
    for (int64_t h0 = 0; h0 < heads; h0 += 8) {
      u64x8 index;
      for (int l = 0; l < 8; ++l) index[l] = first + h0 + l;
      const u32x8 word0 = philox_rounds(seed, narrow(index), narrow(index >> 32));
      for (int64_t l = 0; l < 8 && h0 + l < heads; ++l) {
        keep[h0 + l] = (word0[l] >> 1) >= threshold ? inv_keep : acc(0);
      }
    }
  }
#pragma GCC diagnostic pop
};

// Runs fn(score_t{}) for GAT's score dtype beside h of scalar_t: scalar_t itself, or float
// beside bfloat16 / float16 h (the op contract, docs/design.md §4). The extra float instance
// exists only for the two 16-bit h types.
template <typename scalar_t, typename Fn>
void dispatch_scores(const Tensor& s, Fn&& fn) {
  if constexpr (std::is_same_v<scalar_t, c10::BFloat16> || std::is_same_v<scalar_t, c10::Half>) {
    if (s.scalar_type() == kFloat) return fn(float{});
  }
  fn(scalar_t{});
}

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"  // vectors passed to always-inlined helpers only
// Everything GAT's edge score z = s[j] + d[i] + t and its dropout draw need, read from scores
// of scalar_t (h's dtype or float32) into the accumulation type.
template <typename scalar_t>
struct Scores {
  using acc = acc_t<scalar_t>;
  const scalar_t* s;
  const scalar_t* d;
  const scalar_t* t;       // (E, H) or nullptr
  const scalar_t* t_loop;  // (num_loops, H) or nullptr
  int64_t heads;
  int64_t num_slots;  // E: node i's self loop is slot E + i
  acc slope;
  EdgeDropout<acc> dropout;

  Scores(const Tensor& s_, const Tensor& d_, const std::optional<Tensor>& t_,
         const std::optional<Tensor>& t_loop_, int64_t num_slots, double negative_slope,
         double p, const std::optional<Tensor>& seed)
      : s(s_.const_data_ptr<scalar_t>()),
        d(d_.const_data_ptr<scalar_t>()),
        t(t_.has_value() ? t_->const_data_ptr<scalar_t>() : nullptr),
        t_loop(t_loop_.has_value() ? t_loop_->const_data_ptr<scalar_t>() : nullptr),
        heads(s_.size(1)),
        num_slots(num_slots),
        slope(static_cast<acc>(negative_slope)),
        dropout(p, seed, s_.size(1)) {}

  // z of the edge j -> i in CSR slot k (self loop: j = i and slot = E + i), head h, or of
  // heads h, h + 1, ... in the lanes of V (an acc vector: heads are contiguous in s, d, t).
  template <typename V = acc>
  [[gnu::always_inline]] V score(int64_t j, int64_t i, int64_t slot, int64_t h) const {
    return score_with(load<V>(d + i * heads + h), j, slot, h);
  }
  // The same, given d_i's heads (as loaded from d, or a copy in acc).
  template <typename V>
  [[gnu::always_inline]] V score_with(V d_i, int64_t j, int64_t slot, int64_t h) const {
    V z = load<V>(s + j * heads + h) + d_i;
    if (slot < num_slots) {
      if (t != nullptr) z += load<V>(t + slot * heads + h);
    } else if (t_loop != nullptr) {
      z += load<V>(t_loop + (slot - num_slots) * heads + h);
    }
    return z;
  }
  template <typename V>
  [[gnu::always_inline]] V leaky_relu(V z) const {
    return z > acc(0) ? z : z * slope;
  }
  template <typename V>
  [[gnu::always_inline]] V slope_at(V z) const {
    return z > acc(0) ? V{} + acc(1) : V{} + slope;
  }
};
#pragma GCC diagnostic pop

// Runs fn(begin, end) over row ranges of [0, n) in parallel, cutting where the cumulative cost
// ptr[i] + i (edges plus one per row) crosses equal shares, so a few hub rows do not leave one
// thread with most of the edges. Each row is handled whole by one call: results never depend on
// the thread count. The number of pieces follows the elements moved, cost x row_width (H x C
// when each edge reads a row of h), one per 4096: a small graph of wide rows still reaches
// every thread (docs/design.md §5).
template <typename index_t, typename Fn>
void parallel_rows(const index_t* ptr, int64_t n, const Fn& fn, int64_t row_width = 1) {
  if (n == 0) return;
  const int64_t total = static_cast<int64_t>(ptr[n]) + n;
  const int64_t threads = torch::stable::get_num_threads();
  const int64_t chunks = std::clamp<int64_t>(total * row_width / 4096, 1,
                                             std::max<int64_t>(1, std::min(n, 8 * threads)));
  std::vector<int64_t> bounds(chunks + 1, n);
  bounds[0] = 0;
  for (int64_t c = 1; c < chunks; ++c) {
    const int64_t target = total * c / chunks;
    int64_t lo = bounds[c - 1], hi = n;  // first row i with ptr[i] + i >= target
    while (lo < hi) {
      const int64_t mid = lo + (hi - lo) / 2;
      if (static_cast<int64_t>(ptr[mid]) + mid < target) lo = mid + 1; else hi = mid;
    }
    bounds[c] = lo;
  }
  parallel_for(0, chunks, 1, [&](int64_t first, int64_t last) {
    for (int64_t c = first; c < last; ++c) {
      if (bounds[c] < bounds[c + 1]) fn(bounds[c], bounds[c + 1]);
    }
  });
}

}  // namespace fastgat::cpu
