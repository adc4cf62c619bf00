// The type the kernels accumulate T in, on the host and on the GPU alike: float for the 16-bit
// types, else T itself (torch's opmath type, which the stable ABI does not carry).
#pragma once
#include <torch/headeronly/util/BFloat16.h>
#include <torch/headeronly/util/Half.h>

namespace fastgat {

template <typename T>
struct AccumulateType {
  using type = T;
};
template <>
struct AccumulateType<c10::Half> {
  using type = float;
};
template <>
struct AccumulateType<c10::BFloat16> {
  using type = float;
};
template <typename T>
using acc_type = typename AccumulateType<T>::type;

}  // namespace fastgat
