// Kernels that test the SIMT emulator itself (tests/test_emulator.py): lane-group collectives
// of fastgat::cuda::Group with groups of 1..32 lanes looping different numbers of times, and
// shuffles that a GPU leaves undefined, which the emulator must report.
#include "simt.h"  // first: it defines the CUDA keywords the kernel headers use

#include <limits>
#include <stdexcept>
#include <string>

#include "../common/stable.h"
#include "../cuda/gat_cuda.cuh"

namespace fastgat {
namespace emulated {
namespace {

using cuda::Group;

enum Collective : int64_t { kSum = 0, kMax = 1, kBroadcast = 2 };

// Thread k of group g (of `size` lanes) repeats trips[g] times: acc += collective of x * (r + 1)
// over its group, the broadcast reading lane r % size.
__global__ void group_kernel(const double* x, const int64_t* trips, double* out, int size,
                             int64_t collective, int64_t n) {
  const Group g(size);
  const int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (k >= n) return;
  double acc = 0.0;
  for (int64_t r = 0; r < trips[k / size]; ++r) {
    const double v = x[k] * static_cast<double>(r + 1);
    acc += collective == kSum ? g.sum(v)
           : collective == kMax ? g.max(v)
                                : g.broadcast(v, static_cast<int>(r % size));
  }
  out[k] = acc;
}

// Odd lanes exit; even lanes then shuffle with a mask that names their odd partner.
__global__ void exited_partner_kernel(double* out) {
  const int lane = static_cast<int>(threadIdx.x & 31);
  if (lane % 2 == 1) return;
  out[threadIdx.x] = __shfl_xor_sync(0x3u << lane, 1.0, 1, 2);
}

// Lanes 0..15 name the whole warp while lanes 16..31 shuffle among themselves elsewhere.
__global__ void other_shuffle_kernel(double* out) {
  const int lane = static_cast<int>(threadIdx.x & 31);
  double v = lane;
  if (lane < 16) {
    v = __shfl_xor_sync(0xffffffffu, v, 1);
  } else {
    v = __shfl_xor_sync(0xffff0000u, v, 1, 16);
  }
  out[threadIdx.x] = v;
}

// Every lane passes mask 0x1: lanes 1..31 omit themselves.
__global__ void mask_omits_self_kernel(double* out) {
  out[threadIdx.x] = __shfl_sync(0x1u, 1.0, 0);
}

// Lanes 0 and 1 read lane 5, which their mask does not name.
__global__ void source_outside_mask_kernel(double* out) {
  if (threadIdx.x >= 2) return;
  out[threadIdx.x] = __shfl_sync(0x3u, 1.0, 5);
}

// Lanes of a pair loop different numbers of times around one shuffle: lane 1 leaves its
// partner waiting.
__global__ void uneven_trips_kernel(double* out) {
  if (threadIdx.x >= 2) return;
  double v = 0.0;
  for (unsigned r = 0; r <= threadIdx.x; ++r) v += __shfl_xor_sync(0x3u, 1.0, 1);
  out[threadIdx.x] = v;
}

Tensor group_collective(const Tensor& x, const Tensor& trips, int64_t size, int64_t collective) {
  FASTGAT_CHECK(x.scalar_type() == kDouble && trips.scalar_type() == kLong &&
                    x.is_contiguous() && trips.is_contiguous() && x.numel() % size == 0 &&
                    trips.numel() == x.numel() / size,
                "group_collective: bad arguments");
  Tensor out = empty_like(x);
  torch::stable::fill_(out, std::numeric_limits<double>::quiet_NaN());
  const int64_t n = x.numel(), blocks = (n + cuda::kBlock - 1) / cuda::kBlock;
  simt::launch(group_kernel, simt::Dim3{static_cast<unsigned>(blocks)},
               simt::Dim3{static_cast<unsigned>(cuda::kBlock)}, x.mutable_data_ptr<double>(),
               trips.mutable_data_ptr<int64_t>(), out.mutable_data_ptr<double>(),
               static_cast<int>(size), collective, n);
  return out;
}

// Runs one of the undefined-behaviour kernels; the emulator's report becomes a RuntimeError.
void misuse(const std::string& name) {
  Tensor out = torch::stable::empty({64}, kDouble);
  torch::stable::zero_(out);
  void (*kernel)(double*) = name == "exited_partner"        ? exited_partner_kernel
                            : name == "other_shuffle"       ? other_shuffle_kernel
                            : name == "mask_omits_self"     ? mask_omits_self_kernel
                            : name == "source_outside_mask" ? source_outside_mask_kernel
                            : name == "uneven_trips"        ? uneven_trips_kernel
                                                            : nullptr;
  FASTGAT_CHECK(kernel != nullptr, "misuse: unknown kernel ", name);
  try {
    simt::launch(kernel, simt::Dim3{1}, simt::Dim3{64}, out.mutable_data_ptr<double>());
  } catch (const std::runtime_error& error) {
    FASTGAT_CHECK(false, error.what());
  }
}

}  // namespace
}  // namespace emulated
}  // namespace fastgat

STABLE_TORCH_LIBRARY_FRAGMENT(fastgat_emulated, m) {
  m.def("group_collective(Tensor x, Tensor trips, int size, int collective) -> Tensor");
  m.def("misuse(str name) -> ()");
}

STABLE_TORCH_LIBRARY_IMPL(fastgat_emulated, CPU, m) {
  m.impl("group_collective", TORCH_BOX(&fastgat::emulated::group_collective));
}

// No tensor argument to dispatch on: one kernel for every key.
STABLE_TORCH_LIBRARY_IMPL(fastgat_emulated, CompositeExplicitAutograd, m) {
  m.impl("misuse", TORCH_BOX(&fastgat::emulated::misuse));
}
