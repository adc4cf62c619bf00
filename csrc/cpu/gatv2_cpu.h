// GATv2's edge score on CPU (docs/design.md, "GATv2"), shared by its fused forward (a rule on
// the row skeleton of attention_rows.h) and its backward:
//   u_ij = xl_j + xr_i + e_ij,   z_ij = <att, LeakyReLU(u_ij)>   per head, over C channels.
// Kernels assume inputs that passed csrc/common/checks.h and graph preparation.
#pragma once
#include "gat_cpu.h"

namespace fastgat::cpu {

template <typename scalar_t>
struct Gatv2Inputs {
  using acc = acc_t<scalar_t>;
  const scalar_t* xl;      // (N_src, H, C): the source rows, also the gathered values
  const scalar_t* xr;      // (N_dst, H, C)
  const scalar_t* att;     // (H, C)
  const scalar_t* e;       // (E, H, C) by CSR slot, or nullptr
  const scalar_t* e_loop;  // (num_loops, H, C), or nullptr
  int64_t heads, channels;
  int64_t num_slots;  // E: node i's self loop is slot E + i
  acc slope;
  EdgeDropout<acc> dropout;

  Gatv2Inputs(const Tensor& xl_, const Tensor& xr_, const Tensor& att_,
              const std::optional<Tensor>& e_, const std::optional<Tensor>& e_loop_,
              int64_t num_slots, double negative_slope, double p,
              const std::optional<Tensor>& seed)
      : xl(xl_.const_data_ptr<scalar_t>()),
        xr(xr_.const_data_ptr<scalar_t>()),
        att(att_.const_data_ptr<scalar_t>()),
        e(e_.has_value() ? e_->const_data_ptr<scalar_t>() : nullptr),
        e_loop(e_loop_.has_value() ? e_loop_->const_data_ptr<scalar_t>() : nullptr),
        heads(xl_.size(1)),
        channels(xl_.size(2)),
        num_slots(num_slots),
        slope(static_cast<acc>(negative_slope)),
        dropout(p, seed, xl_.size(1)) {}

  const scalar_t* xl_row(int64_t j, int64_t h) const { return xl + (j * heads + h) * channels; }
  const scalar_t* xr_row(int64_t i, int64_t h) const { return xr + (i * heads + h) * channels; }

  // e_ij of CSR slot `slot` (self loop of node i: slot E + i) in head h, or nullptr.
  const scalar_t* edge_row(int64_t slot, int64_t h) const {
    if (slot < num_slots) return e != nullptr ? e + (slot * heads + h) * channels : nullptr;
    return e_loop != nullptr ? e_loop + ((slot - num_slots) * heads + h) * channels : nullptr;
  }

  // LeakyReLU(u): u or slope u exactly, on vector lanes (a select of both sides) or a scalar.
  template <typename V>
  [[gnu::always_inline]] static V leaky(V u, acc slope) {
    return u > 0 ? u : u * slope;
  }

  // z of the edge j -> i in slot `slot`, head h; also writes u to u_out when it is given.
  // Always inlined: a call would run the baseline build, not the caller's AVX2 clone.
  [[gnu::always_inline]] acc logit(int64_t i, int64_t j, int64_t slot, int64_t h, acc* u_out = nullptr) const {
    const scalar_t* l = xl_row(j, h);
    const scalar_t* r = xr_row(i, h);
    const scalar_t* ev = edge_row(slot, h);
    const scalar_t* a = att + h * channels;
    // One loop per case, so that each compiles to straight vector code (no branch inside).
    if (u_out == nullptr) {
      return ev == nullptr ? score<false, false>(l, r, ev, a, u_out)
                           : score<true, false>(l, r, ev, a, u_out);
    }
    return ev == nullptr ? score<false, true>(l, r, ev, a, u_out)
                         : score<true, true>(l, r, ev, a, u_out);
  }

  // <a, LeakyReLU(l + r (+ ev))>, u stored if kStoreU, summed in a fixed order (as dot()).
  template <bool kEdge, bool kStoreU>
  [[gnu::always_inline]] acc score(const scalar_t* l, const scalar_t* r, const scalar_t* ev,
                                   const scalar_t* a, acc* u_out) const {
    const acc s = slope;  // a local: the stores to u_out could otherwise alias it
    return sum_channels<acc>(channels, [&](int64_t c, auto v) __attribute__((always_inline)) {
      using V = decltype(v);
      V u = load<V>(l + c) + load<V>(r + c);
      if constexpr (kEdge) u += load<V>(ev + c);
      if constexpr (kStoreU) store(u_out + c, u);
      return load<V>(a + c) * leaky(u, s);
    });
  }
};

}  // namespace fastgat::cpu
