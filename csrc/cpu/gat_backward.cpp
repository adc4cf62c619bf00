// Fused GAT backward on CPU (docs/design.md §2), one gather of the E x H x C operand, and
// deterministic: every gradient row is summed by one thread in a fixed order, so results do not
// depend on the thread count and need no atomics.
//   D pass, per destination i: D_i = <dout_i, out_i>, stored beside lse_i and d_i (in acc) in
//     one row of N_dst x 3H: the per-edge reads of the destination's scalars are one row, where
//     three arrays took three cache lines per edge.
//   CSC pass, per source j, over j's out-edges and then its self loop: recompute
//     alpha = exp(x - lse_i), dz = alpha (keep <dout_i, h_j> - D_i) LeakyReLU'(z), write dz to
//     the edge's CSR slot, ds_j = sum dz, dh_j = sum alpha keep dout_i. dout_i is the only
//     per-edge row read, and it serves both the dot and the axpy.
//   CSR pass, per destination i: dd_i = sum of its slots' dz, the self loop last: E x H reads.
// dz goes straight into dt / dt_loop when they exist in the accumulation dtype; otherwise into
// an (E or num_loops) x H scratch, from which the CSR pass also writes a reduced-precision dt.

#include "../common/checks.h"
#include "gat_cpu.h"

namespace fastgat::cpu {
namespace {

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"  // vector lambdas, always inlined
// The rows of dout that a source's gradient dh_j gathers (gather_rows).
template <typename scalar_t>
struct DoutRows {
  using acc = acc_t<scalar_t>;
  const scalar_t* dout;
  int64_t heads, channels;
  const scalar_t* value_row(int64_t i) const { return dout + i * heads * channels; }
};

// Gradients of the scores (ds, dd, dt, dt_loop) are score_t: h's dtype or float32.
template <typename scalar_t, typename score_t, typename index_t>
struct Backward {
  using acc = acc_t<scalar_t>;
  const scalar_t* dout;
  const scalar_t* out;
  const acc* lse;
  const scalar_t* h;
  const index_t* rowptr;
  const index_t* colptr;
  const index_t* csc_row;
  const index_t* csc_eid;
  Scores<score_t> sc;
  int64_t num_loops, channels;
  acc* dst_rows;      // (N_dst, 3H): lse_i, D_i, d_i
  acc* dz;            // (E, H) by CSR slot: dt itself or scratch
  acc* dz_loop;       // (num_loops, H): dt_loop itself or scratch
  score_t* dt;       // dt to fill from the scratch dz (reduced precision), or nullptr
  score_t* dt_loop;  // likewise for dt_loop
  score_t* dd;
  scalar_t* dh;
  score_t* ds;

  FASTGAT_CLONES void row_dots(int64_t begin, int64_t end) const {
    const int64_t H = sc.heads;
    cpu::row_dots(dout, out, dst_rows + H, H, channels, begin, end, 3 * H);
    for (int64_t i = begin; i < end; ++i) {
      acc* row = dst_rows + i * 3 * H;
      for (int64_t hd = 0; hd < H; ++hd) {
        row[hd] = lse[i * H + hd];
        row[2 * H + hd] = static_cast<acc>(sc.d[i * H + hd]);
      }
    }
  }

  FASTGAT_CLONES void sources(int64_t begin, int64_t end) const {
    constexpr bool direct = std::is_same_v<scalar_t, acc>;  // accumulate in dh itself
    const int64_t H = sc.heads, HC = H * channels, E = sc.num_slots;
    std::vector<acc> ds_j(H), row_acc(direct ? 0 : HC), keep(H, acc(1)), dalpha(H);
    // Per edge with a weight in any head: its destination and alpha keep per head, for dh_j.
    std::vector<int64_t> live;
    std::vector<acc> w;
    const DoutRows<scalar_t> rows{dout, H, channels};
    const bool blocked = channels % kWidth<acc> == 0;
    const std::vector<int64_t> lane_head = blocked ? lane_heads<acc>(H, channels)
                                                   : std::vector<int64_t>();
    const int64_t stop = colptr[end];
    for (int64_t j = begin; j < end; ++j) {
      acc* dh_j = row_acc.data();
      if constexpr (direct) dh_j = dh + j * HC;
      std::fill(dh_j, dh_j + HC, acc(0));
      std::fill(ds_j.begin(), ds_j.end(), acc(0));
      const scalar_t* h_j = h + j * HC;
      // Out-edges in CSC order, then the self loop (slot E + j); no lambda, so the loop body
      // is compiled into each FASTGAT_CLONES version.
      const int64_t first = colptr[j], last = colptr[j + 1];
      const int64_t n = last - first + (j < num_loops);
      live.resize(n);
      w.resize(n * H);
      int64_t num_live = 0;
      for (int64_t e = first; e < first + n; ++e) {
        const int64_t i = e < last ? int64_t(csc_row[e]) : j;
        const int64_t slot = e < last ? int64_t(csc_eid[e]) : E + j;
        acc* dz_e = slot < E ? dz + slot * H : dz_loop + j * H;
        acc* w_e = w.data() + num_live * H;
        const scalar_t* dout_i = dout + i * HC;
        const acc* row_i = dst_rows + i * 3 * H;  // lse_i, D_i, d_i
        if (e + kPrefetch < stop) {
          const int64_t ahead = csc_row[e + kPrefetch];
          prefetch(dout + ahead * HC, HC * sizeof(scalar_t));
          prefetch(dst_rows + ahead * 3 * H, 3 * H * sizeof(acc));
        }
        dots_per_head(dout_i, h_j, H, channels, dalpha.data());
        if (sc.dropout.on) {
          sc.dropout.keep_heads(slot, keep.data());
          for (int64_t hd = 0; hd < H; ++hd) {
            dalpha[hd] = keep[hd] != acc(0) ? keep[hd] * dalpha[hd] : acc(0);
          }
        }
        // The per-head scalars, heads in vector lanes (s, d, t, lse, D are contiguous in h).
        each_channel<acc>(H, [&](int64_t hd, auto lanes) __attribute__((always_inline)) {
          using V = decltype(lanes);
          const V z = sc.score_with(load<V>(row_i + 2 * H + hd), j, slot, hd);
          const V alpha = exp_of(sc.leaky_relu(z) - lse_for_alpha(load<V>(row_i + hd)));
          const V g = alpha * (load<V>(dalpha.data() + hd) - load<V>(row_i + H + hd)) *
                      sc.slope_at(z);
          store(dz_e + hd, g);
          store(ds_j.data() + hd, load<V>(ds_j.data() + hd) + g);
          store(w_e + hd, alpha * load<V>(keep.data() + hd));
        });
        bool any = !sc.dropout.on;  // as in the forward (attention_rows.h)
        for (int64_t hd = 0; hd < H && !any; ++hd) any = w_e[hd] != acc(0);
        live[num_live] = i;
        num_live += any;
      }
      // dh_j = sum of alpha keep dout_i, the same products in the same order either way.
      if (blocked) {
        gather_rows(rows, lane_head.data(), live.data(), num_live, w.data(), dh_j);
      } else {
        for (int64_t q = 0; q < num_live; ++q) {
          for (int64_t hd = 0; hd < H; ++hd) {
            const acc w_q = w[q * H + hd];
            const scalar_t* dout_q = rows.value_row(live[q]) + hd * channels;
            if (w_q != acc(0)) axpy(dh_j + hd * channels, w_q, dout_q, channels);
          }
        }
      }
      if constexpr (!direct) store(dh + j * HC, dh_j, HC);
      store(ds + j * H, ds_j.data(), H);
    }
  }

  void destinations(int64_t begin, int64_t end) const {
    const int64_t H = sc.heads;
    std::vector<acc> dd_i(H);
    for (int64_t i = begin; i < end; ++i) {
      std::fill(dd_i.begin(), dd_i.end(), acc(0));
      for (int64_t k = rowptr[i]; k < rowptr[i + 1]; ++k) {
        for (int64_t hd = 0; hd < H; ++hd) dd_i[hd] += dz[k * H + hd];
        if (dt != nullptr) store(dt + k * H, dz + k * H, H);
      }
      if (i < num_loops) {
        for (int64_t hd = 0; hd < H; ++hd) dd_i[hd] += dz_loop[i * H + hd];
        if (dt_loop != nullptr) store(dt_loop + i * H, dz_loop + i * H, H);
      }
      store(dd + i * H, dd_i.data(), H);
    }
  }
};
#pragma GCC diagnostic pop

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> fused_backward(
    const Tensor& dout, const Tensor& out, const Tensor& lse, const Tensor& h,
    const Tensor& s, const Tensor& d, const std::optional<Tensor>& t,
    const std::optional<Tensor>& t_loop, const Tensor& rowptr, const Tensor& col,
    const Tensor& colptr, const Tensor& csc_row, const Tensor& csc_eid,
    int64_t num_loops, double negative_slope, double dropout,
    const std::optional<Tensor>& seed,
    const Hubs& /*row_hubs*/, const Hubs& /*col_hubs*/) {  // no CPU kernel splits a segment
  check_backward_inputs(dout, out, lse, h, s, d, t, t_loop, rowptr, col, colptr, csc_row,
                        csc_eid, num_loops, dropout, seed);
  const int64_t num_src = h.size(0), num_dst = rowptr.numel() - 1, heads = h.size(1);
  const int64_t num_slots = col.numel();
  Tensor dh = empty_like(h), ds = empty_like(s), dd = empty_like(d);
  Tensor dt = t.has_value() ? empty_like(*t) : empty({0}, h.scalar_type(), h);
  Tensor dt_loop = t_loop.has_value() ? empty_like(*t_loop) : empty({0}, h.scalar_type(), h);
  zero_dead_slots(dt, rowptr);
  // dz lives in dt / dt_loop when they hold the accumulation dtype (lse's), else in scratch:
  // dd sums it, and a reduced-precision dz would lose dd, a sum that nearly cancels (§2).
  const bool in_place = s.scalar_type() == lse.scalar_type();
  const bool dz_in_dt = t.has_value() && in_place;
  const bool dz_in_dt_loop = t_loop.has_value() && in_place;
  Tensor dz = dz_in_dt ? dt : empty({num_slots, heads}, lse.scalar_type(), lse);
  Tensor dz_loop = dz_in_dt_loop ? dt_loop : empty({num_loops, heads}, lse.scalar_type(), lse);
  Tensor dst_rows = empty({num_dst, 3 * heads}, lse.scalar_type(), lse);
  dispatch_floating(h.scalar_type(), [&](auto scalar) {
    using scalar_t = decltype(scalar);
    dispatch_scores<scalar_t>(s, [&](auto score) {
      using score_t = decltype(score);
      dispatch_index(rowptr.scalar_type(), [&](auto index) {
        using index_t = decltype(index);
        using acc = acc_t<scalar_t>;
        Backward<scalar_t, score_t, index_t> bw{
            dout.const_data_ptr<scalar_t>(),
            out.const_data_ptr<scalar_t>(),
            lse.const_data_ptr<acc>(),
            h.const_data_ptr<scalar_t>(),
            rowptr.const_data_ptr<index_t>(),
            colptr.const_data_ptr<index_t>(),
            csc_row.const_data_ptr<index_t>(),
            csc_eid.const_data_ptr<index_t>(),
            Scores<score_t>(s, d, t, t_loop, num_slots, negative_slope, dropout, seed),
            num_loops,
            h.size(2),
            dst_rows.mutable_data_ptr<acc>(),
            dz.mutable_data_ptr<acc>(),
            dz_loop.mutable_data_ptr<acc>(),
            t.has_value() && !dz_in_dt ? dt.mutable_data_ptr<score_t>() : nullptr,
            t_loop.has_value() && !dz_in_dt_loop ? dt_loop.mutable_data_ptr<score_t>() : nullptr,
            dd.mutable_data_ptr<score_t>(),
            dh.mutable_data_ptr<scalar_t>(),
            ds.mutable_data_ptr<score_t>()};
        parallel_for(0, num_dst, 256, [&](int64_t b, int64_t e) { bw.row_dots(b, e); });
        const int64_t row_width = heads * h.size(2);  // a source row moves H x C per edge
        parallel_rows(bw.colptr, num_src, [&](int64_t b, int64_t e) { bw.sources(b, e); },
                      row_width);
        parallel_rows(bw.rowptr, num_dst, [&](int64_t b, int64_t e) { bw.destinations(b, e); },
                      heads);
      });
    });
  });
  return {dh, ds, dd, dt, dt_loop};
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(fastgat, CPU, m) {
  m.impl("fused_backward", TORCH_BOX(&fused_backward));
}

}  // namespace fastgat::cpu
