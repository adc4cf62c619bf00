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

  Gatv2Inputs(const at::Tensor& xl_, const at::Tensor& xr_, const at::Tensor& att_,
              const c10::optional<at::Tensor>& e_, const c10::optional<at::Tensor>& e_loop_,
              int64_t num_slots, double negative_slope, double p,
              const c10::optional<at::Tensor>& seed)
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

  // z of the edge j -> i in slot `slot`, head h; also writes u to u_out when it is given.
  // Lanes summed in a fixed order, as dot(): the result does not depend on the thread count.
  acc logit(int64_t i, int64_t j, int64_t slot, int64_t h, acc* u_out = nullptr) const {
    const scalar_t* l = xl_row(j, h);
    const scalar_t* r = xr_row(i, h);
    const scalar_t* ev = edge_row(slot, h);
    const scalar_t* a = att + h * channels;
    acc lanes[kLanes] = {};
    auto step = [&](int64_t c, int64_t lane) {
      acc u = static_cast<acc>(l[c]) + static_cast<acc>(r[c]);
      if (ev != nullptr) u += static_cast<acc>(ev[c]);
      if (u_out != nullptr) u_out[c] = u;
      lanes[lane] += static_cast<acc>(a[c]) * (u > 0 ? u : u * slope);
    };
    int64_t c = 0;
    for (; c + kLanes <= channels; c += kLanes) {
      for (int64_t k = 0; k < kLanes; ++k) step(c + k, k);
    }
    for (; c < channels; ++c) step(c, c % kLanes);
    acc total = 0;
    for (int64_t k = 0; k < kLanes; ++k) total += lanes[k];
    return total;
  }
};

}  // namespace fastgat::cpu
