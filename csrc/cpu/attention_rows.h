// The fused CPU forward every attention layer runs on (docs/design.md §2, §7): per destination
// row, all heads at once, the softmax over the row's in-edges (plus its implicit self loop)
// and the weighted sum of the gathered values, written straight into out. Only out and lse are
// stored: no E x H or E x H x C tensor.
//
// What differs between layers is a rule, a small struct with
//   scalar_t, acc                  element and accumulation types
//   heads, channels, num_slots     H, C of out, and E (node i's self loop is slot E + i)
//   logit(i, j, slot, h)           the score of edge j -> i in head h, before the softmax;
//                                  a rule whose scores are contiguous over heads makes it a
//                                  template logit<V>, V an acc vector of heads h, h + 1, ...
//   keep(slot, k)                  k[h] = the edge's dropout factor in head h (0 or 1 / (1 - p));
//                                  without dropout it may leave k as it is (all 1)
//   drops()                        whether attention dropout is on
//   gather(part, w, j, slot, h)    part[c] += w * value[c], the edge's value in head h
//   one_value_row()                whether the value of every edge j -> i is a row of source
//                                  j alone: value_row(j), its H x C values (then gathers
//                                  run channel-blocked in registers, gather_rows)
//   prefetch(j)                    asks for source j's rows ahead of their use
// so a new layer costs a rule, not a copy of this loop.
#pragma once
#include "gat_cpu.h"

namespace fastgat::cpu {

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"  // vector lambdas, always inlined
template <typename Rule, typename index_t>
FASTGAT_CLONES void attention_rows(const Rule& rule, const index_t* rowptr, const index_t* col,
                                   int64_t num_loops, typename Rule::scalar_t* out,
                                   typename Rule::acc* lse, int64_t begin, int64_t end) {
  using scalar_t = typename Rule::scalar_t;
  using acc = typename Rule::acc;
  constexpr bool direct = std::is_same_v<scalar_t, acc>;  // accumulate in out itself
  const int64_t H = rule.heads, C = rule.channels, HC = H * C;
  std::vector<acc> x;                         // (edges + loop) x H scores, then weights
  std::vector<acc> row_acc(direct ? 0 : HC);  // float accumulator for reduced dtypes
  std::vector<acc> m(H), l(H), l_part(H), keep(H, acc(1));
  std::vector<acc> part(HC);  // a chunk's weighted sum (see kChunk), where not in registers
  std::vector<int64_t> live, live_src;  // the edges with a weight in any head, their sources
  const bool blocked = C % kWidth<acc> == 0 && rule.one_value_row();
  const bool drops = rule.drops();
  const std::vector<int64_t> lane_head = blocked ? lane_heads<acc>(H, C)
                                                 : std::vector<int64_t>();
  const int64_t stop = rowptr[end];
  for (int64_t i = begin; i < end; ++i) {
    const int64_t first = rowptr[i], last = rowptr[i + 1];
    const bool loop = i < num_loops;
    const int64_t n = last - first + loop;
    acc* acc_row = direct ? reinterpret_cast<acc*>(out + i * HC) : row_acc.data();
    if (n == 0) {
      std::fill(out + i * HC, out + (i + 1) * HC, scalar_t(0));
      std::fill(lse + i * H, lse + (i + 1) * H, -std::numeric_limits<acc>::infinity());
      continue;
    }
    // Edge e < n of row i is CSR slot k = first + e, or the self loop (slot E + i) last.
    // Written out in each loop, not as lambdas, so FASTGAT_CLONES compiles them in. m starts
    // at the first edge's scores (a fill per row cost as much as a one-edge row's work).
    x.resize(n * H);
    for (int64_t e = 0, k = first; e < n; ++e, ++k) {
      const int64_t j = k < last ? int64_t(col[k]) : i;
      const int64_t slot = k < last ? k : rule.num_slots + i;
      if (k + kPrefetch < stop) rule.prefetch(col[k + kPrefetch]);
      acc* x_e = x.data() + e * H;
      if constexpr (requires { rule.template logit<Lanes<acc>>(i, j, slot, int64_t(0)); }) {
        each_channel<acc>(H, [&](int64_t hd, auto lanes) __attribute__((always_inline)) {
          using V = decltype(lanes);
          const V v = rule.template logit<V>(i, j, slot, hd);
          store(x_e + hd, v);
          store(m.data() + hd, e == 0 ? v : max_of(load<V>(m.data() + hd), v));
        });
      } else {
        for (int64_t hd = 0; hd < H; ++hd) {
          const acc v = rule.logit(i, j, slot, hd);
          x_e[hd] = v;
          m[hd] = e == 0 ? v : max_of(m[hd], v);
        }
      }
    }
    const bool chunked = n > kChunk;
    live.resize(n);
    live_src.resize(n);
    int64_t num_live = 0;
    // A row of one edge with finite scores (in a sampled graph most rows: the self loop alone)
    // has p = exp(0) = 1, l = 1, lse = its score and weight keep: the general path's bits,
    // without its exp, log and weight passes.
    bool single = n == 1;
    for (int64_t hd = 0; hd < H && single; ++hd) single = std::isfinite(x[hd]);
    if (single) {
      const int64_t slot = first < last ? first : rule.num_slots + i;
      const int64_t j = first < last ? int64_t(col[first]) : i;
      for (int64_t hd = 0; hd < H; ++hd) lse[i * H + hd] = x[hd];
      rule.keep(slot, keep.data());
      bool any = !drops;
      for (int64_t hd = 0; hd < H && !any; ++hd) any = keep[hd] != acc(0);
      if (blocked && any) {  // out_i = 0 + keep h_j as the sum below forms it, without its set-up
        const auto* row = rule.value_row(j);
        for (int64_t c = 0; c < HC; c += kWidth<acc>) {
          using V = Lanes<acc>;
          store(acc_row + c, acc(0) + keep[lane_head[c / kWidth<acc>]] * load<V>(row + c));
        }
        if (!direct) store(out + i * HC, acc_row, HC);
        continue;
      }
      for (int64_t hd = 0; hd < H; ++hd) x[hd] = keep[hd];
      live[0] = 0;
      live_src[0] = j;
      num_live = any;
    } else {
      for (int64_t hd = 0; hd < H; ++hd) l[hd] = acc(0);
      // Rows longer than kChunk sum l chunk by chunk through l_part (zero between uses: flush
      // zeroes it); shorter ones sum straight into l, the same bits.
      acc* l_sum = chunked ? l_part.data() : l.data();
      for (int64_t e = 0; e < n; ++e) {
        if (chunked && e % kChunk == 0) flush(l.data(), l_part.data(), H);
        acc* x_e = x.data() + e * H;
        each_channel<acc>(H, [&](int64_t hd, auto lanes) __attribute__((always_inline)) {
          using V = decltype(lanes);
          // A -inf score weighs 0, also in a row of -inf scores only (m = -inf: no NaN), which
          // ends with l = 0: out = 0 and lse = -inf, as a row without in-edges.
          const V v = load<V>(x_e + hd);
          const V p = v == -std::numeric_limits<acc>::infinity()
              ? V{} : exp_of(v - load<V>(m.data() + hd));
          store(x_e + hd, p);
          store(l_sum + hd, load<V>(l_sum + hd) + p);
        });
      }
      if (chunked) flush(l.data(), l_part.data(), H);
      for (int64_t hd = 0; hd < H; ++hd) {
        // log(1) = 0: no log call where one edge holds all of a head's weight.
        lse[i * H + hd] = l[hd] == acc(1) ? m[hd] : m[hd] + std::log(l[hd]);
        l[hd] = l[hd] > acc(0) ? acc(1) / l[hd] : acc(0);
      }
      // The weights w = p / l * keep. Under dropout, an edge dropped in every head moves no
      // bytes: the sum runs over the others, the `live` edges, whose weights are packed in x
      // (row q of x for live edge q <= e: written after edge e's scores are read). Without
      // dropout every edge is live (a weight 0 from a -inf score adds 0 x value, as GATConv's
      // product).
      for (int64_t e = 0, k = first; e < n; ++e, ++k) {
        rule.keep(k < last ? k : rule.num_slots + i, keep.data());
        acc* w = x.data() + num_live * H;
        const acc* p = x.data() + e * H;
        each_channel<acc>(H, [&](int64_t hd, auto lanes) __attribute__((always_inline)) {
          using V = decltype(lanes);
          store(w + hd, load<V>(p + hd) * load<V>(l.data() + hd) * load<V>(keep.data() + hd));
        });
        bool any = !drops;
        for (int64_t hd = 0; hd < H && !any; ++hd) any = w[hd] != acc(0);
        live[num_live] = e;
        live_src[num_live] = k < last ? int64_t(col[k]) : i;
        num_live += any;
      }
    }
    // The weighted sum, chunk by chunk of kChunk edges (by e), each chunk's sum then added to
    // acc_row: the same bits whether the chunk sums in registers or through `part`.
    for (int64_t c = 0; c < HC; ++c) acc_row[c] = acc(0);
    for (int64_t q0 = 0, q1; q0 < num_live; q0 = q1) {
      q1 = chunked ? q0 + 1 : num_live;
      while (q1 < num_live && live[q1] / kChunk == live[q0] / kChunk) ++q1;
      if (blocked) {
        gather_rows(rule, lane_head.data(), live_src.data() + q0, q1 - q0, x.data() + q0 * H,
                    acc_row);
        continue;
      }
      for (int64_t q = q0; q < q1; ++q) {
        const int64_t k = first + live[q];
        const int64_t slot = k < last ? k : rule.num_slots + i;
        for (int64_t hd = 0; hd < H; ++hd) {
          const acc w = x[q * H + hd];
          if (w != acc(0)) rule.gather(part.data() + hd * C, w, live_src[q], slot, hd);
        }
      }
      flush(acc_row, part.data(), HC);
    }
    if (!direct) store(out + i * HC, acc_row, HC);
  }
}
#pragma GCC diagnostic pop

// out (N_dst, H, C) and lse (N_dst, H) of `rule` over the CSR graph, rows split over threads by
// elements moved. `like` gives out's dtype and device.
template <typename Rule>
std::tuple<Tensor, Tensor> attention_forward(const Rule& rule, const Tensor& like,
                                             const Tensor& rowptr,
                                             const Tensor& col, int64_t num_loops) {
  using acc = typename Rule::acc;
  const int64_t num_dst = rowptr.numel() - 1;
  Tensor out = empty({num_dst, rule.heads, rule.channels}, like.scalar_type(), like);
  Tensor lse = empty({num_dst, rule.heads}, scalar_type_of<acc>, like);
  dispatch_index(rowptr.scalar_type(), [&](auto index) {
    using index_t = decltype(index);
    const index_t* rowptr_p = rowptr.const_data_ptr<index_t>();
    const index_t* col_p = col.const_data_ptr<index_t>();
    auto* out_p = out.mutable_data_ptr<typename Rule::scalar_t>();
    acc* lse_p = lse.mutable_data_ptr<acc>();
    parallel_rows(rowptr_p, num_dst, [&](int64_t begin, int64_t end) {
      attention_rows(rule, rowptr_p, col_p, num_loops, out_p, lse_p, begin, end);
    }, rule.heads * rule.channels);
  });
  return {out, lse};
}

}  // namespace fastgat::cpu
