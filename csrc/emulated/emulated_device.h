// The SIMT emulator (simt.h) as the device the launch code of csrc/cuda/launch.h is templated
// on: launches run lane by lane on the CPU, buffers are exactly sized and poisoned.
#pragma once
#include "simt.h"  // first: it defines the CUDA keywords the kernel headers use

#include <atomic>
#include <limits>
#include <stdexcept>
#include <utility>

#include "../common/stable.h"

namespace fastgat {
namespace emulated {

// The SM count the launch plan sees: tests pretend to have few SMs to split rows on small graphs.
inline std::atomic<int64_t> num_sms{132};
// Kernel launches so far: tests check what a launch plan runs.
inline std::atomic<int64_t> num_launches{0};

struct EmulatedDevice {
  struct Guard {  // CPU tensors: no device to make current
    explicit Guard(const Tensor&) {}
  };

  int64_t sms() const { return num_sms.load(); }
  int64_t plan_sms() const { return num_sms.load(); }

  template <typename... P, typename... Args>
  void launch(void (*kernel)(P...), int64_t blocks, int threads, Args&&... args) const {
    ++num_launches;
    try {
      simt::launch(kernel, simt::Dim3{static_cast<unsigned>(blocks)},
                   simt::Dim3{static_cast<unsigned>(threads)}, std::forward<Args>(args)...);
    } catch (const std::runtime_error& error) {
      FASTGAT_CHECK(false, error.what());
    }
  }

  // Exactly sized host buffers, poisoned so that an element no thread writes shows up: NaN
  // for floating point, a huge value for indices (an out-of-bounds read if used).
  Tensor empty(Sizes sizes, ScalarType dtype, const Tensor& like) const {
    Tensor buffer = fastgat::empty(sizes, dtype, like);
    if (is_floating(dtype)) {
      torch::stable::fill_(buffer, std::numeric_limits<double>::quiet_NaN());
    } else {
      // fill_ takes a double: the int64 poison is 0x7a7a...7a rounded to 53 bits, still huge.
      const double poison = dtype == kLong ? double(0x7a7a7a7a7a7a7a7a) : double(0x7a7a7a7a);
      torch::stable::fill_(buffer, poison);
    }
    return buffer;
  }
};

}  // namespace emulated
}  // namespace fastgat
