// Fused GAT forward on CPU (docs/design.md §2): per destination row, all heads at once, the softmax
// over the row's in-edges (plus its implicit self loop) and the weighted sum of source rows
// written straight into out. Only out and lse are stored: no E x H or E x H x C tensor.
#include <torch/library.h>

#include "../common/checks.h"
#include "gat_cpu.h"

namespace fastgat::cpu {
namespace {

template <typename scalar_t, typename index_t>
FASTGAT_CLONES void forward_rows(const scalar_t* h, const index_t* rowptr, const index_t* col,
                  const Scores<scalar_t>& sc, int64_t num_loops, int64_t channels,
                  scalar_t* out, acc_t<scalar_t>* lse, int64_t begin, int64_t end) {
  using acc = acc_t<scalar_t>;
  constexpr bool direct = std::is_same_v<scalar_t, acc>;  // accumulate in out itself
  const int64_t H = sc.heads, HC = H * channels;
  std::vector<acc> x;                               // (edges + loop) x H scores, then weights
  std::vector<acc> row_acc(direct ? 0 : HC);        // float accumulator for reduced dtypes
  std::vector<acc> m(H), l(H), l_part(H);
  std::vector<acc> part(HC);  // the current chunk's weighted sum (see kChunk)
  for (int64_t i = begin; i < end; ++i) {
    const int64_t first = rowptr[i], last = rowptr[i + 1];
    const bool loop = i < num_loops;
    const int64_t n = last - first + loop;
    acc* acc_row = direct ? reinterpret_cast<acc*>(out + i * HC) : row_acc.data();
    std::fill(acc_row, acc_row + HC, acc(0));
    if (n == 0) {
      if (!direct) store(out + i * HC, acc_row, HC);
      std::fill(lse + i * H, lse + (i + 1) * H, -std::numeric_limits<acc>::infinity());
      continue;
    }
    // Edge e < n of row i is CSR slot k = first + e, or the self loop (slot E + i) last.
    // Written out in each loop, not as lambdas, so FASTGAT_CLONES compiles them in.
    x.resize(n * H);
    std::fill(m.begin(), m.end(), -std::numeric_limits<acc>::infinity());
    std::fill(l.begin(), l.end(), acc(0));
    for (int64_t e = 0, k = first; e < n; ++e, ++k) {
      const int64_t j = k < last ? int64_t(col[k]) : i, slot = k < last ? k : sc.num_slots + i;
      for (int64_t hd = 0; hd < H; ++hd) {
        const acc v = sc.leaky_relu(sc.score(j, i, slot, hd));
        x[e * H + hd] = v;
        m[hd] = std::max(m[hd], v);
      }
    }
    std::fill(l_part.begin(), l_part.end(), acc(0));
    for (int64_t e = 0; e < n; ++e) {
      if (e % kChunk == 0) flush(l.data(), l_part.data(), H);
      for (int64_t hd = 0; hd < H; ++hd) {
        // A -inf score weighs 0, also in a row of -inf scores only (m = -inf: no NaN), which
        // ends with l = 0: out = 0 and lse = -inf, as a row without in-edges.
        const acc v = x[e * H + hd];
        const acc p = v == -std::numeric_limits<acc>::infinity() ? acc(0) : std::exp(v - m[hd]);
        x[e * H + hd] = p;
        l_part[hd] += p;
      }
    }
    flush(l.data(), l_part.data(), H);
    for (int64_t hd = 0; hd < H; ++hd) {
      lse[i * H + hd] = m[hd] + std::log(l[hd]);
      l[hd] = l[hd] > acc(0) ? acc(1) / l[hd] : acc(0);
    }
    std::fill(part.begin(), part.end(), acc(0));
    for (int64_t e = 0, k = first; e < n; ++e, ++k) {
      if (e % kChunk == 0) flush(acc_row, part.data(), HC);
      const int64_t j = k < last ? int64_t(col[k]) : i, slot = k < last ? k : sc.num_slots + i;
      const scalar_t* h_j = h + j * HC;
      for (int64_t hd = 0; hd < H; ++hd) {
        const acc w = x[e * H + hd] * l[hd] * sc.keep(slot, hd);
        if (w != acc(0)) axpy(part.data() + hd * channels, w, h_j + hd * channels, channels);
      }
    }
    flush(acc_row, part.data(), HC);
    if (!direct) store(out + i * HC, acc_row, HC);
  }
}

std::tuple<at::Tensor, at::Tensor> fused_forward(
    const at::Tensor& h, const at::Tensor& s, const at::Tensor& d,
    const c10::optional<at::Tensor>& t, const c10::optional<at::Tensor>& t_loop,
    const at::Tensor& rowptr, const at::Tensor& col, int64_t num_loops, double negative_slope,
    double dropout, const c10::optional<at::Tensor>& seed) {
  check_forward_inputs(h, s, d, t, t_loop, rowptr, col, num_loops, dropout, seed);
  const int64_t num_dst = rowptr.numel() - 1, heads = h.size(1), channels = h.size(2);
  const auto lse_dtype = h.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor out = at::empty({num_dst, heads, channels}, h.options());
  at::Tensor lse = at::empty({num_dst, heads}, h.options().dtype(lse_dtype));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, h.scalar_type(), "fastgat_forward",
                                  [&] {
    const auto sc = make_scores<scalar_t>(s, d, t, t_loop, col.numel(), negative_slope, dropout,
                                          seed);
    AT_DISPATCH_INDEX_TYPES(rowptr.scalar_type(), "fastgat_forward", [&] {
      const index_t* rowptr_p = rowptr.const_data_ptr<index_t>();
      parallel_rows(rowptr_p, num_dst, [&](int64_t begin, int64_t end) {
        forward_rows(h.const_data_ptr<scalar_t>(), rowptr_p, col.const_data_ptr<index_t>(), sc,
                     num_loops, channels, out.mutable_data_ptr<scalar_t>(),
                     lse.mutable_data_ptr<acc_t<scalar_t>>(), begin, end);
      }, heads * channels);
    });
  });
  return {out, lse};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgat, CPU, m) { m.impl("fused_forward", &fused_forward); }

}  // namespace fastgat::cpu
