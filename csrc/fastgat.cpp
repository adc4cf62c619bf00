// Declares the fused kernels' ops once; csrc/cpu and csrc/cuda register their implementations.
// Autograd, the fake kernel and backend choice live in Python (fastgat/ops.py): these ops are
// the plain kernels behind backend="cpu" and backend="cuda". Contract: fastgat/ops.py.
#include <Python.h>

#include "common/schema.h"
#include "common/stable.h"

extern "C" {
// Importing fastgat._C loads this library and runs the registrations below.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}
}

STABLE_TORCH_LIBRARY_FRAGMENT(fastgat, m) {
  m.def(fastgat::kForwardSchema);
  m.def(fastgat::kBackwardSchema);
  m.def(fastgat::kGatv2ForwardSchema);
  m.def(fastgat::kGatv2BackwardSchema);
  m.def(fastgat::kTransformerForwardSchema);
  m.def(fastgat::kTransformerBackwardSchema);
  // Graph preparation (csrc/cpu/graph_cpu.cpp, CPU only; fastgat/graph.py).
  m.def("csr_from_coo(Tensor src, Tensor dst, int num_src, int num_dst, bool drop_self_loops, "
        "ScalarType index_dtype) -> (Tensor, Tensor, Tensor)");
  m.def("csc_from_csr(Tensor rowptr, Tensor col, int num_src) -> (Tensor, Tensor, Tensor)");
  // GAT's node scores (csrc/cpu/head_dots.cpp, CPU only; fastgat/node_scores.py).
  m.def("head_dots(Tensor x, Tensor att) -> Tensor");
  m.def("head_dots_backward(Tensor grad, Tensor x, Tensor att) -> (Tensor, Tensor)");
}
