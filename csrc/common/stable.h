// The part of torch the library is built on: torch's stable ABI (torch/csrc/stable,
// torch/headeronly) and nothing else of its C++, so one binary loads into every torch from
// TORCH_TARGET_VERSION on (setup.py). What that ABI lacks and the kernels use is written here
// once (docs/design.md §9): the dtype dispatch, error messages that name
// shapes and devices, and a device-side cumsum.
#pragma once
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/core/ScalarType.h>

#include <array>
#include <cstdint>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "accumulate.h"

namespace fastgat {

using Tensor = torch::stable::Tensor;
using ScalarType = torch::headeronly::ScalarType;
using Sizes = torch::headeronly::IntHeaderOnlyArrayRef;
using torch::stable::empty_like;
using torch::stable::parallel_for;

constexpr ScalarType kFloat = ScalarType::Float;
constexpr ScalarType kDouble = ScalarType::Double;
constexpr ScalarType kHalf = ScalarType::Half;
constexpr ScalarType kBFloat16 = ScalarType::BFloat16;
constexpr ScalarType kInt = ScalarType::Int;
constexpr ScalarType kLong = ScalarType::Long;

template <typename T>
constexpr ScalarType scalar_type_of = c10::CppTypeToScalarType<T>::value;

inline bool is_floating(ScalarType type) {
  return type == kFloat || type == kDouble || type == kHalf || type == kBFloat16;
}

// The message of a failed check: its arguments streamed in order.
template <typename... Args>
[[noreturn]] void fail(const Args&... args) {
  std::ostringstream message;
  (message << ... << args);
  throw std::runtime_error(message.str());
}

// Raises RuntimeError (Python) with the streamed message unless `cond` holds.
#define FASTGAT_CHECK(cond, ...)                           \
  do {                                                     \
    if (!(cond)) ::fastgat::fail("fastgat: ", __VA_ARGS__); \
  } while (false)

// "[2, 3]", as torch prints sizes.
inline std::string shape_of(Sizes sizes) {
  std::ostringstream text;
  text << "[";
  for (size_t k = 0; k < sizes.size(); ++k) text << (k ? ", " : "") << sizes[k];
  text << "]";
  return text.str();
}

// "cpu" or "cuda:0", as torch prints devices.
inline std::string device_of(const Tensor& x) {
  if (x.is_cpu()) return "cpu";
  std::string name = x.is_cuda() ? "cuda" : "device";
  return name + ":" + std::to_string(x.get_device_index());
}

inline bool same_device(const Tensor& a, const Tensor& b) { return a.device() == b.device(); }

// An uninitialised tensor of `sizes` and `dtype` on `like`'s device.
inline Tensor empty(Sizes sizes, ScalarType dtype, const Tensor& like) {
  return torch::stable::new_empty(like, sizes, dtype);
}

// Runs fn(T{}) for the floating dtype `type` (float, double, float16, bfloat16).
template <typename Fn>
void dispatch_floating(ScalarType type, Fn&& fn) {
  switch (type) {
    case kFloat: return fn(float{});
    case kDouble: return fn(double{});
    case kHalf: return fn(c10::Half{});
    case kBFloat16: return fn(c10::BFloat16{});
    default: fail("fastgat: no kernel for dtype ", type);
  }
}

// Runs fn(Index{}) for the index dtype `type` (int32, int64).
template <typename Fn>
void dispatch_index(ScalarType type, Fn&& fn) {
  switch (type) {
    case kInt: return fn(int32_t{});
    case kLong: return fn(int64_t{});
    default: fail("fastgat: no kernel for index dtype ", type);
  }
}

// Inclusive cumulative sum along `dim`, on x's device (aten::cumsum through the dispatcher).
inline Tensor cumsum(const Tensor& x, int64_t dim) {
  std::array<StableIValue, 3> stack{torch::stable::detail::from(x),
                                    torch::stable::detail::from(dim),
                                    torch::stable::detail::from(std::nullopt)};
  STABLE_TORCH_ERROR_CODE_CHECK(
      torch_call_dispatcher("aten::cumsum", "", stack.data(), TORCH_ABI_VERSION));
  return torch::stable::detail::to<Tensor>(stack[0]);
}

}  // namespace fastgat
