// Fused TransformerConv forward on CPU (docs/design.md §11): TransformerConv's rule on the row
// skeleton of attention_rows.h. The score gathers k_j (and reads e per slot), the sum gathers
// v_j: two H x C rows per edge, no self loops, only out and lse written.

#include "../common/checks.h"
#include "attention_rows.h"

namespace fastgat::cpu {
namespace {

// z = scale <q_i, k_j + e>, value v_j + e; e (E, H, C) by CSR slot, or none.
template <typename scalar_t_>
struct TransformerRule {
  using scalar_t = scalar_t_;
  using acc = acc_t<scalar_t>;
  const scalar_t* q;
  const scalar_t* k;
  const scalar_t* v;
  const scalar_t* e;  // nullptr without edge_dim
  acc scale;
  EdgeDropout<acc> dropout;
  int64_t heads, channels, num_slots;

  acc logit(int64_t i, int64_t j, int64_t slot, int64_t hd) const {
    const scalar_t* q_i = q + (i * heads + hd) * channels;
    acc z = dot(q_i, k + (j * heads + hd) * channels, channels);
    if (e != nullptr) z += dot(q_i, e + (slot * heads + hd) * channels, channels);
    return scale * z;
  }
  void keep(int64_t slot, acc* k) const { dropout.keep_heads(slot, k); }
  bool drops() const { return dropout.on; }
  void gather(acc* part, acc w, int64_t j, int64_t slot, int64_t hd) const {
    axpy(part, w, v + (j * heads + hd) * channels, channels);
    if (e != nullptr) axpy(part, w, e + (slot * heads + hd) * channels, channels);
  }
  bool one_value_row() const { return e == nullptr; }  // else the value is v_j + e_slot
  const scalar_t* value_row(int64_t j) const { return v + j * heads * channels; }
  [[gnu::always_inline]] void prefetch(int64_t j) const {
    fastgat::cpu::prefetch(k + j * heads * channels, heads * channels * sizeof(scalar_t));
    fastgat::cpu::prefetch(v + j * heads * channels, heads * channels * sizeof(scalar_t));
  }
};

std::tuple<Tensor, Tensor> transformer_forward(
    const Tensor& q, const Tensor& k, const Tensor& v,
    const std::optional<Tensor>& e, const Tensor& rowptr, const Tensor& col,
    double scale, double dropout, const std::optional<Tensor>& seed,
    const Hubs& /*row_hubs*/) {  // no CPU kernel splits a segment
  check_transformer_inputs(q, k, v, e, rowptr, col, dropout, seed);
  std::tuple<Tensor, Tensor> result;
  dispatch_floating(q.scalar_type(), [&](auto scalar) {
    using scalar_t = decltype(scalar);
    using acc = acc_t<scalar_t>;
    const TransformerRule<scalar_t> rule{
        q.const_data_ptr<scalar_t>(), k.const_data_ptr<scalar_t>(),
        v.const_data_ptr<scalar_t>(), e.has_value() ? e->const_data_ptr<scalar_t>() : nullptr,
        static_cast<acc>(scale), EdgeDropout<acc>(dropout, seed, q.size(1)), q.size(1),
        q.size(2), col.numel()};
    result = attention_forward(rule, q, rowptr, col, /*num_loops=*/0);
  });
  return result;
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(fastgat, CPU, m) {
  m.impl("transformer_forward", TORCH_BOX(&transformer_forward));
}

}  // namespace fastgat::cpu
