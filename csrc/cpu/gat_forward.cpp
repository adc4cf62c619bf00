// Fused GAT forward on CPU (docs/design.md §2): GAT's rule on the row skeleton of
// attention_rows.h.

#include "../common/checks.h"
#include "attention_rows.h"

namespace fastgat::cpu {
namespace {

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"  // logit<V> returns vectors to inlined callers only
// GAT's rule for the row skeleton: the score LeakyReLU(s_j + d_i + t), the value h_j; the
// scores are score_t (h's dtype or float32).
template <typename scalar_t_, typename score_t>
struct GatRule {
  using scalar_t = scalar_t_;
  using acc = acc_t<scalar_t>;
  Scores<score_t> sc;
  const scalar_t* h;
  int64_t heads, channels, num_slots;

  template <typename V = acc>  // heads hd, hd + 1, ... in V's lanes
  [[gnu::always_inline]] V logit(int64_t i, int64_t j, int64_t slot, int64_t hd) const {
    return sc.leaky_relu(sc.template score<V>(j, i, slot, hd));
  }
  void keep(int64_t slot, acc* k) const { sc.dropout.keep_heads(slot, k); }
  bool drops() const { return sc.dropout.on; }
  void gather(acc* part, acc w, int64_t j, int64_t, int64_t hd) const {
    axpy(part, w, h + (j * heads + hd) * channels, channels);
  }
  bool one_value_row() const { return true; }
  const scalar_t* value_row(int64_t j) const { return h + j * heads * channels; }
  [[gnu::always_inline]] void prefetch(int64_t j) const {
    fastgat::cpu::prefetch(sc.s + j * heads, heads * sizeof(score_t));
    fastgat::cpu::prefetch(h + j * heads * channels, heads * channels * sizeof(scalar_t));
  }
};
#pragma GCC diagnostic pop

std::tuple<Tensor, Tensor> fused_forward(
    const Tensor& h, const Tensor& s, const Tensor& d,
    const std::optional<Tensor>& t, const std::optional<Tensor>& t_loop,
    const Tensor& rowptr, const Tensor& col, int64_t num_loops, double negative_slope,
    double dropout, const std::optional<Tensor>& seed,
    const Hubs& /*row_hubs*/) {  // no CPU kernel splits a segment
  check_forward_inputs(h, s, d, t, t_loop, rowptr, col, num_loops, dropout, seed);
  std::tuple<Tensor, Tensor> result;
  dispatch_floating(h.scalar_type(), [&](auto scalar) {
    using scalar_t = decltype(scalar);
    dispatch_scores<scalar_t>(s, [&](auto score) {
      using score_t = decltype(score);
      const GatRule<scalar_t, score_t> rule{
          Scores<score_t>(s, d, t, t_loop, col.numel(), negative_slope, dropout, seed),
          h.const_data_ptr<scalar_t>(), h.size(1), h.size(2), col.numel()};
      result = attention_forward(rule, h, rowptr, col, num_loops);
    });
  });
  return result;
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(fastgat, CPU, m) {
  m.impl("fused_forward", TORCH_BOX(&fused_forward));
}

}  // namespace fastgat::cpu
