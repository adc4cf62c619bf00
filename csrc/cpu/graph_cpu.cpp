// Graph preparation on CPU (docs/design.md §3): CSR by destination as a counting sort with each
// row's few slots then sorted by source, CSC by source as a counting sort, on the calling
// thread. No thread team: torch's stable argsort runs a parallel radix sort whose barriers
// stall for hundreds of milliseconds when other processes hold the cores, and a mini-batch
// pays this once per step.
#include <algorithm>
#include <cstdint>
#include <tuple>
#include <vector>

#include "../common/stable.h"

namespace fastgat::cpu {
namespace {

// Fails naming the first bad index kind, with the message of fastgat/graph.py's torch path,
// which re-raises it as IndexError (the stable ABI raises RuntimeError only).
void check_range(int64_t low, int64_t high, int64_t bound, const char* what) {
  const int64_t bad = low < 0 ? low : high;
  FASTGAT_CHECK(low >= 0 && high < bound, "edge_index holds ", what, " node index ", bad,
                ", outside [0, ", bound - 1, "] (", bound, " ", what, " nodes)");
}

// (rowptr, col, perm): edges sorted by (destination, source), stable: one counting sort by
// destination, then each row's slots sorted by (source, input id), a total order, so the
// result is unique (short rows by insertion). A first counting sort by source, as the order
// needs, cost two more passes of random accesses over all edges. With drop_self_loops, loops
// take key num_dst: dead slots past rowptr[-1], sorted as one more row.
template <typename in_t, typename index_t>
void build_csr(const in_t* src, const in_t* dst, int64_t E, int64_t num_dst,
               bool drop_self_loops, index_t* rowptr, index_t* col, index_t* perm) {
  const auto key = [&](int64_t e) -> int64_t {
    return drop_self_loops && src[e] == dst[e] ? num_dst : static_cast<int64_t>(dst[e]);
  };
  std::vector<int64_t> next(num_dst + 2, 0);
  for (int64_t e = 0; e < E; ++e) ++next[key(e) + 1];
  for (int64_t i = 0; i <= num_dst; ++i) next[i + 1] += next[i];  // next[i]: row i's start
  for (int64_t i = 0; i <= num_dst; ++i) rowptr[i] = static_cast<index_t>(next[i]);
  for (int64_t e = 0; e < E; ++e) perm[next[key(e)]++] = static_cast<index_t>(e);
  using Item = std::pair<int64_t, index_t>;  // (source, input id) of a slot
  std::vector<Item> long_row;
  Item short_row[32];
  for (int64_t i = 0; i <= num_dst; ++i) {
    const int64_t first = rowptr[i], last = i < num_dst ? int64_t(rowptr[i + 1]) : E;
    const int64_t n = last - first;
    if (n <= 1) {  // most rows of a sampled graph
      if (n == 1) col[first] = static_cast<index_t>(src[perm[first]]);
      continue;
    }
    Item* row = short_row;
    if (n > 32) {
      long_row.resize(n);
      row = long_row.data();
    }
    for (int64_t k = 0; k < n; ++k) row[k] = {src[perm[first + k]], perm[first + k]};
    if (n > 32) {
      std::sort(row, row + n);
    } else {  // insertion sort: few slots, already in a local buffer
      for (int64_t k = 1; k < n; ++k) {
        const Item item = row[k];
        int64_t q = k;
        for (; q > 0 && item < row[q - 1]; --q) row[q] = row[q - 1];
        row[q] = item;
      }
    }
    for (int64_t k = 0; k < n; ++k) {
      col[first + k] = static_cast<index_t>(row[k].first);
      perm[first + k] = row[k].second;
    }
  }
}

std::tuple<Tensor, Tensor, Tensor> csr_from_coo(
    const Tensor& src_in, const Tensor& dst_in, int64_t num_src, int64_t num_dst,
    bool drop_self_loops, ScalarType index_dtype) {
  FASTGAT_CHECK(src_in.dim() == 1 && src_in.sizes().equals(dst_in.sizes()),
                "src and dst must be 1-D tensors of equal length");
  FASTGAT_CHECK(src_in.scalar_type() == dst_in.scalar_type(),
                "src and dst must share a dtype");
  FASTGAT_CHECK(index_dtype == kInt || index_dtype == kLong,
                "index_dtype must be int32 or int64");
  const Tensor src = torch::stable::contiguous(src_in), dst = torch::stable::contiguous(dst_in);
  const int64_t E = src.numel();
  Tensor rowptr = empty({num_dst + 1}, index_dtype, src);
  Tensor col = empty({E}, index_dtype, src), perm = empty({E}, index_dtype, src);
  dispatch_index(src.scalar_type(), [&](auto index) {
    using index_t = decltype(index);
    using in_t = index_t;
    const in_t* s = src.const_data_ptr<in_t>();
    const in_t* d = dst.const_data_ptr<in_t>();
    if (E > 0) {  // one read before any write: the sorts index by these values
      const auto [s_lo, s_hi] = std::minmax_element(s, s + E);
      const auto [d_lo, d_hi] = std::minmax_element(d, d + E);
      check_range(*s_lo, *s_hi, num_src, "source");
      check_range(*d_lo, *d_hi, num_dst, "destination");
    }
    dispatch_index(index_dtype, [&](auto index) {
      using index_t = decltype(index);
      build_csr<in_t, index_t>(s, d, E, num_dst, drop_self_loops,
                               rowptr.mutable_data_ptr<index_t>(),
                               col.mutable_data_ptr<index_t>(),
                               perm.mutable_data_ptr<index_t>());
    });
  });
  return {rowptr, col, perm};
}

// (colptr, csc_row, csc_eid) of a CSR from csr_from_coo: slots counting-sorted by source, so
// each source lists its slots in slot order (by destination); dead slots (dropped loops, whose
// destination is their source) go past colptr[-1].
std::tuple<Tensor, Tensor, Tensor> csc_from_csr(const Tensor& rowptr,
                                                const Tensor& col,
                                                int64_t num_src) {
  FASTGAT_CHECK(rowptr.dim() == 1 && col.dim() == 1 && rowptr.scalar_type() == col.scalar_type() &&
                    rowptr.is_contiguous() && col.is_contiguous(),
                "rowptr and col must be contiguous 1-D tensors of one index dtype");
  const int64_t num_dst = rowptr.numel() - 1, E = col.numel();
  Tensor colptr = empty({num_src + 1}, rowptr.scalar_type(), rowptr);
  Tensor csc_row = empty({E}, col.scalar_type(), col), csc_eid = empty({E}, col.scalar_type(), col);
  dispatch_index(rowptr.scalar_type(), [&](auto index) {
    using index_t = decltype(index);
    const index_t* rp = rowptr.const_data_ptr<index_t>();
    const index_t* c = col.const_data_ptr<index_t>();
    const int64_t live = rp[num_dst];
    std::vector<int64_t> next(num_src + 1, 0);
    for (int64_t k = 0; k < live; ++k) ++next[c[k]];
    index_t* cp = colptr.mutable_data_ptr<index_t>();
    int64_t sum = 0;
    for (int64_t j = 0; j <= num_src; ++j) {
      cp[j] = static_cast<index_t>(sum);
      const int64_t n = j < num_src ? next[j] : 0;
      next[j] = sum;
      sum += n;
    }
    index_t* row_out = csc_row.mutable_data_ptr<index_t>();
    index_t* eid_out = csc_eid.mutable_data_ptr<index_t>();
    for (int64_t i = 0; i < num_dst; ++i) {
      for (int64_t k = rp[i]; k < rp[i + 1]; ++k) {
        const int64_t q = next[c[k]]++;
        row_out[q] = static_cast<index_t>(i);
        eid_out[q] = static_cast<index_t>(k);
      }
    }
    for (int64_t k = live, q = sum; k < E; ++k, ++q) {
      row_out[q] = c[k];
      eid_out[q] = static_cast<index_t>(k);
    }
  });
  return {colptr, csc_row, csc_eid};
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(fastgat, CPU, m) {
  m.impl("csr_from_coo", TORCH_BOX(&csr_from_coo));
  m.impl("csc_from_csr", TORCH_BOX(&csc_from_csr));
}

}  // namespace fastgat::cpu
