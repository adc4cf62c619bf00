// Fused GAT backward on CPU (docs/design.md §2), deterministic: every gradient row is summed by one
// thread in a fixed order, so results do not depend on the thread count and need no atomics.
//   CSR pass, per destination i: D_i = <dout_i, out_i>; per in-edge recompute
//     alpha = exp(x - lse_i), dz = alpha (keep <dout_i, h_j> - D_i) LeakyReLU'(z);
//     dd_i = sum dz, dt = dz, and keep (dz, alpha keep) per slot for the second pass.
//   CSC pass, per source j: ds_j = sum dz, dh_j = sum alpha keep dout_i over j's out-edges.
// The per-slot scratch is (E + num_loops) x 2H floats, the size of t: no E x H x C tensor.
#include <torch/library.h>

#include "../common/checks.h"
#include "gat_cpu.h"

namespace fastgat::cpu {
namespace {

template <typename scalar_t, typename index_t>
struct Backward {
  using acc = acc_t<scalar_t>;
  const scalar_t* dout;
  const scalar_t* out;
  const acc* lse;
  const scalar_t* h;
  const index_t* rowptr;
  const index_t* col;
  const index_t* colptr;
  const index_t* csc_row;
  const index_t* csc_eid;
  Scores<scalar_t> sc;
  int64_t num_loops, channels;
  acc* edge;  // per slot (E + num_loops): dz[H] then alpha * keep[H]
  scalar_t* dd;
  scalar_t* dt;       // or nullptr
  scalar_t* dt_loop;  // or nullptr
  scalar_t* dh;
  scalar_t* ds;

  FASTGAT_CLONES void destinations(int64_t begin, int64_t end) const {
    const int64_t H = sc.heads, HC = H * channels, E = sc.num_slots;
    std::vector<acc> D(H), dd_i(H);
    for (int64_t i = begin; i < end; ++i) {
      const int64_t first = rowptr[i], last = rowptr[i + 1];
      const scalar_t* dout_i = dout + i * HC;
      for (int64_t hd = 0; hd < H; ++hd) {
        D[hd] = dot(dout_i + hd * channels, out + i * HC + hd * channels, channels);
      }
      std::fill(dd_i.begin(), dd_i.end(), acc(0));
      // In-edges in CSR order, then the self loop (slot E + i); no lambda, so the loop body
      // is compiled into each FASTGAT_CLONES version.
      for (int64_t k = first; k < last + (i < num_loops); ++k) {
        const int64_t j = k < last ? int64_t(col[k]) : i, slot = k < last ? k : E + i;
        const scalar_t* h_j = h + j * HC;
        for (int64_t hd = 0; hd < H; ++hd) {
          const acc z = sc.score(j, i, slot, hd);
          const acc alpha = std::exp(sc.leaky_relu(z) - lse_for_alpha(lse[i * H + hd]));
          const acc keep = sc.keep(slot, hd);
          const acc dalpha =
              keep != acc(0) ? keep * dot(dout_i + hd * channels, h_j + hd * channels, channels)
                             : acc(0);
          const acc dz = alpha * (dalpha - D[hd]) * sc.slope_at(z);
          dd_i[hd] += dz;
          edge[slot * 2 * H + hd] = dz;
          edge[slot * 2 * H + H + hd] = alpha * keep;
          if (slot < E) {
            if (dt != nullptr) dt[slot * H + hd] = static_cast<scalar_t>(dz);
          } else if (dt_loop != nullptr) {
            dt_loop[i * H + hd] = static_cast<scalar_t>(dz);
          }
        }
      }
      store(dd + i * H, dd_i.data(), H);
    }
  }

  FASTGAT_CLONES void sources(int64_t begin, int64_t end) const {
    constexpr bool direct = std::is_same_v<scalar_t, acc>;  // accumulate in dh itself
    const int64_t H = sc.heads, HC = H * channels, E = sc.num_slots;
    std::vector<acc> ds_j(H), row_acc(direct ? 0 : HC);
    for (int64_t j = begin; j < end; ++j) {
      acc* dh_j = row_acc.data();
      if constexpr (direct) dh_j = dh + j * HC;
      std::fill(dh_j, dh_j + HC, acc(0));
      std::fill(ds_j.begin(), ds_j.end(), acc(0));
      // Out-edges in CSC order, then the self loop (slot E + j).
      const int64_t first = colptr[j], last = colptr[j + 1];
      for (int64_t e = first; e < last + (j < num_loops); ++e) {
        const int64_t i = e < last ? int64_t(csc_row[e]) : j;
        const acc* g = edge + (e < last ? int64_t(csc_eid[e]) : E + j) * 2 * H;
        const scalar_t* dout_i = dout + i * HC;
        for (int64_t hd = 0; hd < H; ++hd) {
          ds_j[hd] += g[hd];
          const acc w = g[H + hd];
          if (w != acc(0)) axpy(dh_j + hd * channels, w, dout_i + hd * channels, channels);
        }
      }
      if constexpr (!direct) store(dh + j * HC, dh_j, HC);
      store(ds + j * H, ds_j.data(), H);
    }
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> fused_backward(
    const at::Tensor& dout, const at::Tensor& out, const at::Tensor& lse, const at::Tensor& h,
    const at::Tensor& s, const at::Tensor& d, const c10::optional<at::Tensor>& t,
    const c10::optional<at::Tensor>& t_loop, const at::Tensor& rowptr, const at::Tensor& col,
    const at::Tensor& colptr, const at::Tensor& csc_row, const at::Tensor& csc_eid,
    int64_t num_loops, double negative_slope, double dropout,
    const c10::optional<at::Tensor>& seed) {
  check_backward_inputs(dout, out, lse, h, s, d, t, t_loop, rowptr, col, colptr, csc_row,
                        csc_eid, num_loops, dropout, seed);
  const int64_t num_src = h.size(0), num_dst = rowptr.numel() - 1, heads = h.size(1);
  const int64_t num_slots = col.numel();
  at::Tensor dh = at::empty_like(h), ds = at::empty_like(s), dd = at::empty_like(d);
  at::Tensor dt = t.has_value() ? at::empty_like(*t) : at::empty({0}, h.options());
  at::Tensor dt_loop = t_loop.has_value() ? at::empty_like(*t_loop) : at::empty({0}, h.options());
  // Dead slots past rowptr[-1] carry no edge, hence no gradient (as in the reference).
  if (t.has_value()) {
    const int64_t live = rowptr[num_dst].item<int64_t>();
    dt.narrow(0, live, num_slots - live).zero_();
  }
  at::Tensor edge = at::empty({num_slots + num_loops, 2 * heads}, lse.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, h.scalar_type(), "fastgat_backward",
                                  [&] {
    AT_DISPATCH_INDEX_TYPES(rowptr.scalar_type(), "fastgat_backward", [&] {
      Backward<scalar_t, index_t> bw{
          dout.const_data_ptr<scalar_t>(),
          out.const_data_ptr<scalar_t>(),
          lse.const_data_ptr<acc_t<scalar_t>>(),
          h.const_data_ptr<scalar_t>(),
          rowptr.const_data_ptr<index_t>(),
          col.const_data_ptr<index_t>(),
          colptr.const_data_ptr<index_t>(),
          csc_row.const_data_ptr<index_t>(),
          csc_eid.const_data_ptr<index_t>(),
          make_scores<scalar_t>(s, d, t, t_loop, num_slots, negative_slope, dropout, seed),
          num_loops,
          h.size(2),
          edge.mutable_data_ptr<acc_t<scalar_t>>(),
          dd.mutable_data_ptr<scalar_t>(),
          t.has_value() ? dt.mutable_data_ptr<scalar_t>() : nullptr,
          t_loop.has_value() ? dt_loop.mutable_data_ptr<scalar_t>() : nullptr,
          dh.mutable_data_ptr<scalar_t>(),
          ds.mutable_data_ptr<scalar_t>()};
      parallel_rows(bw.rowptr, num_dst, [&](int64_t b, int64_t e) { bw.destinations(b, e); });
      parallel_rows(bw.colptr, num_src, [&](int64_t b, int64_t e) { bw.sources(b, e); });
    });
  });
  return {dh, ds, dd, dt, dt_loop};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgat, CPU, m) { m.impl("fused_backward", &fused_backward); }

}  // namespace fastgat::cpu
