// Per-head dot products of node rows with attention vectors, GAT's node scores s and d
// (fastgat/node_scores.py): y[k, n, h] = <x[n, h, :], att[k, h, :]>, and their backward.
// One pass over x each way (dots_per_head, gat_cpu.h). As a matrix product against a
// block-diagonal (H C) x (K H) matrix it spent H times the arithmetic on zeros and, with
// C = 8, took as long as a third of the layer's own GEMM.

#include "../common/checks.h"
#include "gat_cpu.h"

namespace fastgat::cpu {
namespace {

// Rows per piece of the att gradient's partial sums: fixed, so the sum's order (pieces in
// order, rows in order within one) does not depend on the thread count.
constexpr int64_t kRowsPerPiece = 1024;

void check_head_dots(const Tensor& x, const Tensor& att) {
  FASTGAT_CHECK(x.dim() == 3 && is_floating(x.scalar_type()),
                "x must be a floating (N, H, C) tensor, got ", x.scalar_type(), " ",
                shape_of(x.sizes()));
  FASTGAT_CHECK(x.is_contiguous(), "x must be contiguous");
  FASTGAT_CHECK(att.dim() == 3, "att must be (K, H, C), got ", shape_of(att.sizes()));
  check_float(att, "att", x, {att.size(0), x.size(1), x.size(2)}, "x");
}

struct Shape {
  int64_t K, N, H, C;
};

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"  // vectors passed to always-inlined helpers only
// y[0 ..) = the lanes of v (or v itself), narrowed to scalar_t.
template <typename scalar_t, typename V>
[[gnu::always_inline]] inline void store_lanes(scalar_t* y, V v) {
  if constexpr (std::is_arithmetic_v<V>) {
    *y = static_cast<scalar_t>(v);
  } else {
    for (int64_t l = 0; l < int64_t(sizeof(V) / sizeof(v[0])); ++l) {
      y[l] = static_cast<scalar_t>(v[l]);
    }
  }
}

template <typename scalar_t>
struct HeadDots {
  using acc = acc_t<scalar_t>;
  const scalar_t* x;
  const scalar_t* att;
  Shape n;

  FASTGAT_CLONES void forward(scalar_t* y, int64_t begin, int64_t end) const {
    const int64_t HC = n.H * n.C;
    for (int64_t row = begin; row < end; ++row) {
      for (int64_t k = 0; k < n.K; ++k) {
        dots_per_head(x + row * HC, att + k * HC, n.H, n.C, y + (k * n.N + row) * n.H);
      }
    }
  }

  // dx[row] = sum_k g[k, row, h] att[k, h, :]; part += sum over rows of g[k, row, h] x[row, h, :].
  FASTGAT_CLONES void backward(const scalar_t* g, scalar_t* __restrict dx, acc* __restrict part,
                               int64_t begin, int64_t end) const {
    const int64_t K = n.K, N = n.N, H = n.H, C = n.C, HC = H * C;  // kept out of the stores'
    const scalar_t* __restrict xs = x;                                // reach: no reloads
    const scalar_t* __restrict as = att;
    for (int64_t row = begin; row < end; ++row) {
      for (int64_t hd = 0; hd < H; ++hd) {
        const int64_t at = row * HC + hd * C;
        each_channel<acc>(C, [&](int64_t c, auto lanes) __attribute__((always_inline)) {
          using V = decltype(lanes);
          V sum{};
          for (int64_t k = 0; k < K; ++k) {
            const acc w = static_cast<acc>(g[(k * N + row) * H + hd]);
            acc* p = part + k * HC + hd * C + c;
            sum += w * load<V>(as + k * HC + hd * C + c);
            store(p, load<V>(p) + w * load<V>(xs + at + c));
          }
          store_lanes(dx + at + c, sum);
        });
      }
    }
  }
};
#pragma GCC diagnostic pop

Tensor head_dots(const Tensor& x, const Tensor& att) {
  check_head_dots(x, att);
  const Shape n{att.size(0), x.size(0), x.size(1), x.size(2)};
  Tensor y = empty({n.K, n.N, n.H}, x.scalar_type(), x);
  dispatch_floating(x.scalar_type(), [&](auto scalar) {
    using scalar_t = decltype(scalar);
    const HeadDots<scalar_t> op{x.const_data_ptr<scalar_t>(), att.const_data_ptr<scalar_t>(), n};
    scalar_t* out = y.mutable_data_ptr<scalar_t>();
    parallel_for(0, n.N, kRowsPerPiece, [&](int64_t b, int64_t e) { op.forward(out, b, e); });
  });
  return y;
}

std::tuple<Tensor, Tensor> head_dots_backward(const Tensor& grad, const Tensor& x,
                                              const Tensor& att) {
  check_head_dots(x, att);
  check_float(grad, "grad", x, {att.size(0), x.size(0), x.size(1)}, "x");
  const Shape n{att.size(0), x.size(0), x.size(1), x.size(2)};
  Tensor dx = empty_like(x), datt = empty_like(att);
  const int64_t width = n.K * n.H * n.C, pieces = (n.N + kRowsPerPiece - 1) / kRowsPerPiece;
  dispatch_floating(x.scalar_type(), [&](auto scalar) {
    using scalar_t = decltype(scalar);
    using acc = acc_t<scalar_t>;
    const HeadDots<scalar_t> op{x.const_data_ptr<scalar_t>(), att.const_data_ptr<scalar_t>(), n};
    std::vector<acc> parts(pieces * width, acc(0));
    const scalar_t* g = grad.const_data_ptr<scalar_t>();
    scalar_t* dx_data = dx.mutable_data_ptr<scalar_t>();
    parallel_for(0, pieces, 1, [&](int64_t first, int64_t last) {
      for (int64_t p = first; p < last; ++p) {
        op.backward(g, dx_data, parts.data() + p * width, p * kRowsPerPiece,
                    std::min(n.N, (p + 1) * kRowsPerPiece));
      }
    });
    std::vector<acc> total(width, acc(0));
    for (int64_t p = 0; p < pieces; ++p) {
      for (int64_t c = 0; c < width; ++c) total[c] += parts[p * width + c];
    }
    store(datt.mutable_data_ptr<scalar_t>(), total.data(), width);
  });
  return {dx, datt};
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(fastgat, CPU, m) {
  m.impl("head_dots", TORCH_BOX(&head_dots));
  m.impl("head_dots_backward", TORCH_BOX(&head_dots_backward));
}

}  // namespace fastgat::cpu
