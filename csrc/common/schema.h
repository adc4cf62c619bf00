// The fused ops' schemas, declared by csrc/fastgat.cpp (namespace fastgat) and, with the same
// signatures, by the emulated-CUDA test library (csrc/emulated/gat_emulated.cpp).
// row_hubs / col_hubs: the long segments of rowptr / colptr as fastgat/launch_plan.py's `hubs`
// lists them (CPU int64 (k, 2): edges, has implicit loop; every segment of more than 64
// entries, longest first), or None. The CUDA kernels then size their split buffers exactly and
// launch no split machinery when nothing splits; like the index tensors they must describe the
// graph truly. The CPU kernels split no segment and ignore them.
#pragma once

namespace fastgat {

constexpr const char* kForwardSchema =
    "fused_forward(Tensor h, Tensor s, Tensor d, Tensor? t, Tensor? t_loop, Tensor rowptr, "
    "Tensor col, int num_loops, float negative_slope, float dropout, Tensor? seed, "
    "Tensor? row_hubs=None) -> (Tensor, Tensor)";

constexpr const char* kBackwardSchema =
    "fused_backward(Tensor dout, Tensor out, Tensor lse, Tensor h, Tensor s, Tensor d, "
    "Tensor? t, Tensor? t_loop, Tensor rowptr, Tensor col, Tensor colptr, Tensor csc_row, "
    "Tensor csc_eid, int num_loops, float negative_slope, float dropout, Tensor? seed, "
    "Tensor? row_hubs=None, Tensor? col_hubs=None) -> (Tensor, Tensor, Tensor, Tensor, Tensor)";

// GATv2: xl (N_src, H, C), xr (N_dst, H, C), att (H, C), e (E, H, C)?,
// e_loop (num_loops, H, C)?; the backward returns (dxl, dxr, datt, de, de_loop).
constexpr const char* kGatv2ForwardSchema =
    "gatv2_fused_forward(Tensor xl, Tensor xr, Tensor att, Tensor? e, Tensor? e_loop, "
    "Tensor rowptr, Tensor col, int num_loops, float negative_slope, float dropout, "
    "Tensor? seed, Tensor? row_hubs=None) -> (Tensor, Tensor)";

constexpr const char* kGatv2BackwardSchema =
    "gatv2_fused_backward(Tensor dout, Tensor out, Tensor lse, Tensor xl, Tensor xr, Tensor att, "
    "Tensor? e, Tensor? e_loop, Tensor rowptr, Tensor col, Tensor colptr, Tensor csc_row, "
    "Tensor csc_eid, int num_loops, float negative_slope, float dropout, Tensor? seed, "
    "Tensor? row_hubs=None, Tensor? col_hubs=None) -> (Tensor, Tensor, Tensor, Tensor, Tensor)";

// TransformerConv's rule (csrc/cpu/transformer_*.cpp; contract in fastgat/ops.py).
constexpr const char* kTransformerForwardSchema =
    "transformer_forward(Tensor q, Tensor k, Tensor v, Tensor? e, Tensor rowptr, Tensor col, "
    "float scale, float dropout, Tensor? seed, Tensor? row_hubs=None) -> (Tensor, Tensor)";

constexpr const char* kTransformerBackwardSchema =
    "transformer_backward(Tensor dout, Tensor out, Tensor lse, Tensor q, Tensor k, Tensor v, "
    "Tensor? e, Tensor rowptr, Tensor col, Tensor colptr, Tensor csc_row, Tensor csc_eid, "
    "float scale, float dropout, Tensor? seed, Tensor? row_hubs=None, Tensor? col_hubs=None) "
    "-> (Tensor, Tensor, Tensor, Tensor)";

}  // namespace fastgat
