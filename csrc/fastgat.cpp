// Declares the fused kernels' ops once; csrc/cpu and csrc/cuda register their implementations.
// Autograd, the fake kernel and backend choice live in Python (fastgat/ops.py): these ops are
// the plain kernels behind backend="cpu" and backend="cuda". Contract: fastgat/ops.py.
#include <Python.h>
#include <torch/library.h>

extern "C" {
// Importing fastgat._C loads this library and runs the registrations below.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}
}

TORCH_LIBRARY_FRAGMENT(fastgat, m) {
  m.def(
      "fused_forward(Tensor h, Tensor s, Tensor d, Tensor? t, Tensor? t_loop, Tensor rowptr, "
      "Tensor col, int num_loops, float negative_slope, float dropout, Tensor? seed) "
      "-> (Tensor, Tensor)");
  m.def(
      "fused_backward(Tensor dout, Tensor out, Tensor lse, Tensor h, Tensor s, Tensor d, "
      "Tensor? t, Tensor? t_loop, Tensor rowptr, Tensor col, Tensor colptr, Tensor csc_row, "
      "Tensor csc_eid, int num_loops, float negative_slope, float dropout, Tensor? seed) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
}
