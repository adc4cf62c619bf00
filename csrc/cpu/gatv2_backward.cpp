// Fused GATv2 backward on CPU (docs/design.md, "GATv2"), deterministic and without atomics:
// every gradient row is summed by one thread in a fixed order, so results do not depend on
// the thread count. With alpha = exp(z - lse_i) recomputed, D_i = <dout_i, out_i> and
// g(u) = (u > 0 ? 1 : slope):
//   D pass, per destination i (dense, N_dst x H).
//   CSR pass, per destination i, over its in-edges and then its self loop: recompute u and z,
//     dz = alpha (keep <dout_i, xl_j> - D_i), du = dz att . g(u);
//     dxr_i = sum du; de_ij = du (with edge_dim); datt partial of row i = sum dz LeakyReLU(u);
//     dz and w = alpha keep are kept per slot (E + num_loops) x H for the next pass.
//   CSC pass, per source j, over its out-edges and then its self loop:
//     dxl_j = sum w dout_i + dz att . g(u), u recomputed (gathers xr_i, dout_i, e_ij).
//   datt = the per-row partials summed over rows in a fixed order (chunked, see kChunk).
// No E x H x C intermediate: only de itself, which is an output.

#include "../common/checks.h"
#include "gatv2_cpu.h"

namespace fastgat::cpu {
namespace {

// The channel loops of one (edge, head), on restrict pointers (the rows do not overlap), with
// g a . g(u) as a select of g a and g a slope (the same bits as multiplying by 1 or slope).
template <typename scalar_t>
[[gnu::always_inline]] inline void edge_grads(acc_t<scalar_t>* __restrict du,
                                              acc_t<scalar_t>* __restrict dxr,
                                              acc_t<scalar_t>* __restrict datt,
                                              const acc_t<scalar_t>* __restrict u,
                                              const scalar_t* __restrict a, acc_t<scalar_t> g,
                                              acc_t<scalar_t> slope, int64_t C) {
  using acc = acc_t<scalar_t>;
  each_channel<acc>(C, [&](int64_t c, auto v) __attribute__((always_inline)) {
    using V = decltype(v);
    const V uc = load<V>(u + c), ga = g * load<V>(a + c);
    const V d = uc > 0 ? ga : ga * slope;
    store(du + c, d);
    store(dxr + c, load<V>(dxr + c) + d);
    store(datt + c, load<V>(datt + c) + g * Gatv2Inputs<scalar_t>::leaky(uc, slope));
  });
}

// p += g a . g(l + r (+ ev)): dxl's share of du, u recomputed.
template <typename scalar_t, bool kEdge>
[[gnu::always_inline]] inline void add_du(acc_t<scalar_t>* __restrict p,
                                          const scalar_t* __restrict l,
                                          const scalar_t* __restrict r,
                                          const scalar_t* __restrict ev,
                                          const scalar_t* __restrict a, acc_t<scalar_t> g,
                                          acc_t<scalar_t> slope, int64_t C) {
  using acc = acc_t<scalar_t>;
  each_channel<acc>(C, [&](int64_t c, auto v) __attribute__((always_inline)) {
    using V = decltype(v);
    V uc = load<V>(l + c) + load<V>(r + c);
    if constexpr (kEdge) uc += load<V>(ev + c);
    const V ga = g * load<V>(a + c);
    store(p + c, load<V>(p + c) + (uc > 0 ? ga : ga * slope));
  });
}

template <typename scalar_t, typename index_t>
struct Gatv2Backward {
  using acc = acc_t<scalar_t>;
  const scalar_t* dout;
  const scalar_t* out;
  const acc* lse;
  const index_t* rowptr;
  const index_t* col;
  const index_t* colptr;
  const index_t* csc_row;
  const index_t* csc_eid;
  Gatv2Inputs<scalar_t> in;
  int64_t num_loops;
  acc* D;          // (N_dst, H)
  acc* dz;         // (E + num_loops, H) by slot
  acc* w;          // (E + num_loops, H) by slot: alpha * keep
  acc* datt_rows;  // (N_dst, H, C): row i's share of datt
  scalar_t* de;       // (E, H, C) or nullptr
  scalar_t* de_loop;  // (num_loops, H, C) or nullptr
  scalar_t* dxr;
  scalar_t* dxl;

  FASTGAT_CLONES void row_dots(int64_t begin, int64_t end) const {
    cpu::row_dots(dout, out, D, in.heads, in.channels, begin, end);
  }

  FASTGAT_CLONES void destinations(int64_t begin, int64_t end) const {
    const int64_t H = in.heads, C = in.channels, HC = H * C, E = in.num_slots;
    const acc slope = in.slope;  // locals, not members: stores in the loops cannot alias them
    std::vector<acc> u(C), du(C), dxr_row(HC), dxr_part(HC), datt_part(HC), keep(H, acc(1));
    std::vector<acc> dots(H);  // <dout_i, xl_j> per head
    for (int64_t i = begin; i < end; ++i) {
      acc* datt_row = datt_rows + i * HC;
      std::fill(dxr_row.begin(), dxr_row.end(), acc(0));
      std::fill(datt_row, datt_row + HC, acc(0));
      std::fill(dxr_part.begin(), dxr_part.end(), acc(0));
      std::fill(datt_part.begin(), datt_part.end(), acc(0));
      const int64_t first = rowptr[i], last = rowptr[i + 1];
      const int64_t n = last - first + (i < num_loops);
      const scalar_t* dout_i = dout + i * HC;
      // Edge e < n of row i is CSR slot k = first + e, or the self loop (slot E + i) last.
      for (int64_t e = 0, k = first; e < n; ++e, ++k) {
        if (e % kChunk == 0) {
          flush(dxr_row.data(), dxr_part.data(), HC);
          flush(datt_row, datt_part.data(), HC);
        }
        const int64_t j = k < last ? int64_t(col[k]) : i;
        const int64_t slot = k < last ? k : E + i;
        in.dropout.keep_heads(slot, keep.data());
        dots_per_head(dout_i, in.xl_row(j, 0), H, C, dots.data());
        for (int64_t hd = 0; hd < H; ++hd) {
          const acc z = in.logit(i, j, slot, hd, u.data());
          const acc alpha = exp_of(z - lse_for_alpha(lse[i * H + hd]));
          const acc dalpha = keep[hd] != acc(0) ? keep[hd] * dots[hd] : acc(0);
          const acc g = alpha * (dalpha - D[i * H + hd]);
          dz[slot * H + hd] = g;
          w[slot * H + hd] = alpha * keep[hd];
          edge_grads(du.data(), dxr_part.data() + hd * C, datt_part.data() + hd * C, u.data(),
                     in.att + hd * C, g, slope, C);
          scalar_t* de_e = slot < E ? (de != nullptr ? de + (slot * H + hd) * C : nullptr)
                                    : (de_loop != nullptr ? de_loop + (i * H + hd) * C : nullptr);
          if (de_e != nullptr) store(de_e, du.data(), C);
        }
      }
      flush(dxr_row.data(), dxr_part.data(), HC);
      flush(datt_row, datt_part.data(), HC);
      store(dxr + i * HC, dxr_row.data(), HC);
    }
  }

  FASTGAT_CLONES void sources(int64_t begin, int64_t end) const {
    const int64_t H = in.heads, C = in.channels, HC = H * C, E = in.num_slots;
    const acc slope = in.slope;
    std::vector<acc> dxl_row(HC), part(HC);
    for (int64_t j = begin; j < end; ++j) {
      std::fill(dxl_row.begin(), dxl_row.end(), acc(0));
      std::fill(part.begin(), part.end(), acc(0));
      const int64_t first = colptr[j], last = colptr[j + 1];
      // Out-edges in CSC order, then the self loop (slot E + j).
      for (int64_t e = first; e < last + (j < num_loops); ++e) {
        if ((e - first) % kChunk == 0) flush(dxl_row.data(), part.data(), HC);
        const int64_t i = e < last ? int64_t(csc_row[e]) : j;
        const int64_t slot = e < last ? int64_t(csc_eid[e]) : E + j;
        const scalar_t* dout_i = dout + i * HC;
        for (int64_t hd = 0; hd < H; ++hd) {
          acc* p = part.data() + hd * C;
          const acc wv = w[slot * H + hd], g = dz[slot * H + hd];
          if (wv != acc(0)) axpy(p, wv, dout_i + hd * C, C);
          if (g == acc(0)) continue;
          const scalar_t* ev = in.edge_row(slot, hd);
          if (ev != nullptr) {
            add_du<scalar_t, true>(p, in.xl_row(j, hd), in.xr_row(i, hd), ev, in.att + hd * C, g,
                                   slope, C);
          } else {
            add_du<scalar_t, false>(p, in.xl_row(j, hd), in.xr_row(i, hd), ev, in.att + hd * C,
                                    g, slope, C);
          }
        }
      }
      flush(dxl_row.data(), part.data(), HC);
      store(dxl + j * HC, dxl_row.data(), HC);
    }
  }
};

// sum over rows of rows (n x width), in a fixed order, chunked as every long sum here.
template <typename acc>
std::vector<acc> sum_rows(const acc* rows, int64_t n, int64_t width) {
  std::vector<acc> total(width), part(width);
  for (int64_t i = 0; i < n; ++i) {
    if (i % kChunk == 0) flush(total.data(), part.data(), width);
    for (int64_t c = 0; c < width; ++c) part[c] += rows[i * width + c];
  }
  flush(total.data(), part.data(), width);
  return total;
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> gatv2_fused_backward(
    const Tensor& dout, const Tensor& out, const Tensor& lse, const Tensor& xl,
    const Tensor& xr, const Tensor& att, const std::optional<Tensor>& e,
    const std::optional<Tensor>& e_loop, const Tensor& rowptr, const Tensor& col,
    const Tensor& colptr, const Tensor& csc_row, const Tensor& csc_eid,
    int64_t num_loops, double negative_slope, double dropout,
    const std::optional<Tensor>& seed,
    const Hubs& /*row_hubs*/, const Hubs& /*col_hubs*/) {  // no CPU kernel splits a segment
  check_gatv2_forward_inputs(xl, xr, att, e, e_loop, rowptr, col, num_loops, dropout, seed);
  check_backward_extras(dout, out, lse, xl, rowptr, col, colptr, csc_row, csc_eid);
  const int64_t num_src = xl.size(0), num_dst = rowptr.numel() - 1, heads = xl.size(1);
  const int64_t channels = xl.size(2), num_slots = col.numel();
  Tensor dxl = empty_like(xl), dxr = empty_like(xr), datt = empty_like(att);
  Tensor de = e.has_value() ? empty_like(*e) : empty({0}, xl.scalar_type(), xl);
  Tensor de_loop = e_loop.has_value() ? empty_like(*e_loop) : empty({0}, xl.scalar_type(), xl);
  zero_dead_slots(de, rowptr);
  Tensor D = empty({num_dst, heads}, lse.scalar_type(), lse);
  Tensor dz = empty({num_slots + num_loops, heads}, lse.scalar_type(), lse);
  Tensor w = empty({num_slots + num_loops, heads}, lse.scalar_type(), lse);
  Tensor datt_rows = empty({num_dst, heads, channels}, lse.scalar_type(), lse);
  dispatch_floating(xl.scalar_type(), [&](auto scalar) {
    using scalar_t = decltype(scalar);
    dispatch_index(rowptr.scalar_type(), [&](auto index) {
      using index_t = decltype(index);
      using acc = acc_t<scalar_t>;
      Gatv2Backward<scalar_t, index_t> bw{
          dout.const_data_ptr<scalar_t>(),
          out.const_data_ptr<scalar_t>(),
          lse.const_data_ptr<acc>(),
          rowptr.const_data_ptr<index_t>(),
          col.const_data_ptr<index_t>(),
          colptr.const_data_ptr<index_t>(),
          csc_row.const_data_ptr<index_t>(),
          csc_eid.const_data_ptr<index_t>(),
          Gatv2Inputs<scalar_t>(xl, xr, att, e, e_loop, num_slots, negative_slope, dropout,
                                seed),
          num_loops,
          D.mutable_data_ptr<acc>(),
          dz.mutable_data_ptr<acc>(),
          w.mutable_data_ptr<acc>(),
          datt_rows.mutable_data_ptr<acc>(),
          e.has_value() ? de.mutable_data_ptr<scalar_t>() : nullptr,
          e_loop.has_value() ? de_loop.mutable_data_ptr<scalar_t>() : nullptr,
          dxr.mutable_data_ptr<scalar_t>(),
          dxl.mutable_data_ptr<scalar_t>()};
      const int64_t row_width = heads * channels;  // each edge moves rows of H x C
      parallel_for(0, num_dst, 256, [&](int64_t b, int64_t e) { bw.row_dots(b, e); });
      parallel_rows(bw.rowptr, num_dst, [&](int64_t b, int64_t e) { bw.destinations(b, e); },
                    row_width);
      parallel_rows(bw.colptr, num_src, [&](int64_t b, int64_t e) { bw.sources(b, e); },
                    row_width);
      const std::vector<acc> total = sum_rows(bw.datt_rows, num_dst, row_width);
      store(datt.mutable_data_ptr<scalar_t>(), total.data(), row_width);
    });
  });
  return {dxl, dxr, datt, de, de_loop};
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(fastgat, CPU, m) {
  m.impl("gatv2_fused_backward", TORCH_BOX(&gatv2_fused_backward));
}

}  // namespace fastgat::cpu
