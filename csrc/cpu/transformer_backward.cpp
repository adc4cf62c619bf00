// Fused TransformerConv backward on CPU (docs/design.md §11), two passes, no atomics: every
// gradient row is summed by one thread in a fixed order (long rows in kChunk chunks), so the
// result does not depend on the thread count.
//   CSR pass, per destination i over its in-edges: D_i = <dout_i, out_i>, recompute
//     alpha = exp(z - lse_i), dz = scale alpha (keep <dout_i, v_j + e> - D_i), store dz and
//     w = alpha keep per slot (E x H scratch), dq_i = sum dz (k_j + e), and with edge values
//     de = dz q_i + w dout_i. Gathers k_j and v_j.
//   CSC pass, per source j over its out-edges: dk_j = sum dz q_i, dv_j = sum w dout_i.
//     Gathers q_i and dout_i.
// Dead slots (past rowptr[-1]; TransformerConv has none) are skipped, their de is zero.

#include "../common/checks.h"
#include "gat_cpu.h"

namespace fastgat::cpu {
namespace {

template <typename scalar_t, typename index_t>
struct TransformerBackward {
  using acc = acc_t<scalar_t>;
  const scalar_t* dout;
  const scalar_t* out;
  const acc* lse;
  const scalar_t* q;
  const scalar_t* k;
  const scalar_t* v;
  const scalar_t* e;  // nullptr without edge values
  const index_t* rowptr;
  const index_t* col;
  const index_t* colptr;
  const index_t* csc_row;
  const index_t* csc_eid;
  EdgeDropout<acc> dropout;
  acc scale;
  int64_t heads, channels, live;  // live: rowptr[N_dst], the first dead slot
  acc* dz;                        // (E, H)
  acc* w;                         // (E, H)
  scalar_t* dq;
  scalar_t* dk;
  scalar_t* dv;
  scalar_t* de;  // (E, H, C) or nullptr

  FASTGAT_CLONES void destinations(int64_t begin, int64_t end) const {
    const int64_t H = heads, C = channels, HC = H * C;
    std::vector<acc> D(H), total(HC), part(HC);
    for (int64_t i = begin; i < end; ++i) {
      const scalar_t* dout_i = dout + i * HC;
      const scalar_t* q_i = q + i * HC;
      for (int64_t hd = 0; hd < H; ++hd) {
        D[hd] = dot(dout_i + hd * C, out + i * HC + hd * C, C);
      }
      std::fill(total.begin(), total.end(), acc(0));
      std::fill(part.begin(), part.end(), acc(0));
      const int64_t first = rowptr[i], last = rowptr[i + 1];
      for (int64_t slot = first; slot < last; ++slot) {
        if ((slot - first) % kChunk == 0) flush(total.data(), part.data(), HC);
        const int64_t j = col[slot];
        for (int64_t hd = 0; hd < H; ++hd) {
          const scalar_t* q_ih = q_i + hd * C;
          const scalar_t* dout_ih = dout_i + hd * C;
          const scalar_t* k_jh = k + j * HC + hd * C;
          const scalar_t* v_jh = v + j * HC + hd * C;
          const scalar_t* e_h = e != nullptr ? e + slot * HC + hd * C : nullptr;
          acc z = dot(q_ih, k_jh, C);
          if (e_h != nullptr) z += dot(q_ih, e_h, C);
          const acc alpha = exp_of(scale * z - lse_for_alpha(lse[i * H + hd]));
          const acc keep = dropout.keep(slot, hd);
          acc dalpha = 0;
          if (keep != acc(0)) {
            dalpha = dot(dout_ih, v_jh, C);
            if (e_h != nullptr) dalpha += dot(dout_ih, e_h, C);
            dalpha *= keep;
          }
          const acc g = scale * alpha * (dalpha - D[hd]);
          const acc weight = alpha * keep;
          dz[slot * H + hd] = g;
          w[slot * H + hd] = weight;
          acc* dq_ih = part.data() + hd * C;
          axpy(dq_ih, g, k_jh, C);
          if (e_h != nullptr) {
            axpy(dq_ih, g, e_h, C);
            scalar_t* de_h = de + slot * HC + hd * C;
            for (int64_t c = 0; c < C; ++c) {
              de_h[c] = static_cast<scalar_t>(g * static_cast<acc>(q_ih[c]) +
                                              weight * static_cast<acc>(dout_ih[c]));
            }
          }
        }
      }
      flush(total.data(), part.data(), HC);
      store(dq + i * HC, total.data(), HC);
    }
  }

  FASTGAT_CLONES void sources(int64_t begin, int64_t end) const {
    const int64_t H = heads, C = channels, HC = H * C;
    std::vector<acc> dk_total(HC), dk_part(HC), dv_total(HC), dv_part(HC);
    for (int64_t j = begin; j < end; ++j) {
      std::fill(dk_total.begin(), dk_total.end(), acc(0));
      std::fill(dv_total.begin(), dv_total.end(), acc(0));
      std::fill(dk_part.begin(), dk_part.end(), acc(0));
      std::fill(dv_part.begin(), dv_part.end(), acc(0));
      const int64_t first = colptr[j], last = colptr[j + 1];
      for (int64_t n = first; n < last; ++n) {
        if ((n - first) % kChunk == 0) {
          flush(dk_total.data(), dk_part.data(), HC);
          flush(dv_total.data(), dv_part.data(), HC);
        }
        const int64_t slot = csc_eid[n];
        if (slot >= live) continue;
        const int64_t i = csc_row[n];
        for (int64_t hd = 0; hd < H; ++hd) {
          const acc g = dz[slot * H + hd], weight = w[slot * H + hd];
          if (g != acc(0)) axpy(dk_part.data() + hd * C, g, q + i * HC + hd * C, C);
          if (weight != acc(0)) axpy(dv_part.data() + hd * C, weight, dout + i * HC + hd * C, C);
        }
      }
      flush(dk_total.data(), dk_part.data(), HC);
      flush(dv_total.data(), dv_part.data(), HC);
      store(dk + j * HC, dk_total.data(), HC);
      store(dv + j * HC, dv_total.data(), HC);
    }
  }
};

std::tuple<Tensor, Tensor, Tensor, Tensor> transformer_backward(
    const Tensor& dout, const Tensor& out, const Tensor& lse, const Tensor& q,
    const Tensor& k, const Tensor& v, const std::optional<Tensor>& e,
    const Tensor& rowptr, const Tensor& col, const Tensor& colptr,
    const Tensor& csc_row, const Tensor& csc_eid, double scale, double dropout,
    const std::optional<Tensor>& seed,
    const Hubs& /*row_hubs*/, const Hubs& /*col_hubs*/) {  // no CPU kernel splits a segment
  check_transformer_backward_inputs(dout, out, lse, q, k, v, e, rowptr, col, colptr, csc_row,
                                    csc_eid, dropout, seed);
  const int64_t num_dst = q.size(0), num_src = k.size(0), heads = q.size(1);
  const int64_t num_slots = col.numel(), row_width = heads * q.size(2);
  Tensor dq = empty_like(q), dk = empty_like(k), dv = empty_like(v);
  Tensor de = e.has_value() ? empty_like(*e) : empty({0}, q.scalar_type(), q);
  const int64_t live = zero_dead_slots(de, rowptr);
  Tensor dz = empty({num_slots, heads}, lse.scalar_type(), lse);
  Tensor w = empty({num_slots, heads}, lse.scalar_type(), lse);
  dispatch_floating(q.scalar_type(), [&](auto scalar) {
    using scalar_t = decltype(scalar);
    dispatch_index(rowptr.scalar_type(), [&](auto index) {
      using index_t = decltype(index);
      using acc = acc_t<scalar_t>;
      const TransformerBackward<scalar_t, index_t> bw{
          dout.const_data_ptr<scalar_t>(),
          out.const_data_ptr<scalar_t>(),
          lse.const_data_ptr<acc>(),
          q.const_data_ptr<scalar_t>(),
          k.const_data_ptr<scalar_t>(),
          v.const_data_ptr<scalar_t>(),
          e.has_value() ? e->const_data_ptr<scalar_t>() : nullptr,
          rowptr.const_data_ptr<index_t>(),
          col.const_data_ptr<index_t>(),
          colptr.const_data_ptr<index_t>(),
          csc_row.const_data_ptr<index_t>(),
          csc_eid.const_data_ptr<index_t>(),
          EdgeDropout<acc>(dropout, seed, heads),
          static_cast<acc>(scale),
          heads,
          q.size(2),
          live,
          dz.mutable_data_ptr<acc>(),
          w.mutable_data_ptr<acc>(),
          dq.mutable_data_ptr<scalar_t>(),
          dk.mutable_data_ptr<scalar_t>(),
          dv.mutable_data_ptr<scalar_t>(),
          e.has_value() ? de.mutable_data_ptr<scalar_t>() : nullptr};
      parallel_rows(bw.rowptr, num_dst, [&](int64_t b, int64_t n) { bw.destinations(b, n); },
                    row_width);
      parallel_rows(bw.colptr, num_src, [&](int64_t b, int64_t n) { bw.sources(b, n); },
                    row_width);
    });
  });
  return {dq, dk, dv, de};
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(fastgat, CPU, m) {
  m.impl("transformer_backward", TORCH_BOX(&transformer_backward));
}

}  // namespace fastgat::cpu
