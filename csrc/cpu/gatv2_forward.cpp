// Fused GATv2 forward on CPU (docs/design.md, "GATv2"): GATv2's rule on the row skeleton of
// attention_rows.h. The score reads the C-vector xl_j that the aggregation gathers anyway.

#include "../common/checks.h"
#include "attention_rows.h"
#include "gatv2_cpu.h"

namespace fastgat::cpu {
namespace {

// GATv2's rule for the row skeleton: the score <att, LeakyReLU(xl_j + xr_i + e_ij)>, the
// value xl_j.
template <typename scalar_t_>
struct Gatv2Rule : Gatv2Inputs<scalar_t_> {
  using scalar_t = scalar_t_;
  using acc = acc_t<scalar_t>;
  using Gatv2Inputs<scalar_t>::Gatv2Inputs;

  acc logit(int64_t i, int64_t j, int64_t slot, int64_t hd) const {
    return Gatv2Inputs<scalar_t>::logit(i, j, slot, hd);
  }
  void keep(int64_t slot, acc* k) const { this->dropout.keep_heads(slot, k); }
  bool drops() const { return this->dropout.on; }
  void gather(acc* part, acc w, int64_t j, int64_t, int64_t hd) const {
    axpy(part, w, this->xl_row(j, hd), this->channels);
  }
  bool one_value_row() const { return true; }
  const scalar_t* value_row(int64_t j) const { return this->xl_row(j, 0); }
  [[gnu::always_inline]] void prefetch(int64_t j) const {
    fastgat::cpu::prefetch(this->xl_row(j, 0), this->heads * this->channels * sizeof(scalar_t));
  }
};

std::tuple<Tensor, Tensor> gatv2_fused_forward(
    const Tensor& xl, const Tensor& xr, const Tensor& att,
    const std::optional<Tensor>& e, const std::optional<Tensor>& e_loop,
    const Tensor& rowptr, const Tensor& col, int64_t num_loops, double negative_slope,
    double dropout, const std::optional<Tensor>& seed,
    const Hubs& /*row_hubs*/) {  // no CPU kernel splits a segment
  check_gatv2_forward_inputs(xl, xr, att, e, e_loop, rowptr, col, num_loops, dropout, seed);
  std::tuple<Tensor, Tensor> result;
  dispatch_floating(xl.scalar_type(), [&](auto scalar) {
    using scalar_t = decltype(scalar);
    const Gatv2Rule<scalar_t> rule(xl, xr, att, e, e_loop, col.numel(), negative_slope, dropout,
                                   seed);
    result = attention_forward(rule, xl, rowptr, col, num_loops);
  });
  return result;
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(fastgat, CPU, m) {
  m.impl("gatv2_fused_forward", TORCH_BOX(&gatv2_fused_forward));
}

}  // namespace fastgat::cpu
