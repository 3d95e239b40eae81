// The op library `sparse_linear`: sparse training products for linear layers (BSR blocks, CSR
// elements) and direct sparse 2-D convolutions on the CPU, as PyTorch custom operators. Schemas
// here; the CPU kernels in bsr.cpp, csr.cpp, conv.cpp and conv_width.cpp; the fake (meta) and autograd
// registrations in Python (sparsebench/kernels/ops.py).
#include "common.h"

#include <string>

namespace sparsebench {
torch::Tensor bsr_forward(const torch::Tensor&, const torch::Tensor&, const std::optional<torch::Tensor>&,
                          const torch::Tensor&, const torch::Tensor&, int64_t);
torch::Tensor bsr_linear(const torch::Tensor&, const torch::Tensor&, const std::optional<torch::Tensor>&,
                         const torch::Tensor&, const torch::Tensor&, const torch::Tensor&, const torch::Tensor&,
                         const torch::Tensor&, int64_t);
torch::Tensor bsr_input_grad(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&, const torch::Tensor&,
                             const torch::Tensor&, int64_t);
torch::Tensor bsr_weight_grad(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&, const torch::Tensor&,
                              int64_t, int64_t);
torch::Tensor csr_mm(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&, const torch::Tensor&,
                     const std::optional<torch::Tensor>&, const std::optional<torch::Tensor>&);
torch::Tensor csr_sddmm(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&, const torch::Tensor&);
torch::Tensor csr_linear(const torch::Tensor&, const torch::Tensor&, const std::optional<torch::Tensor>&,
                         const torch::Tensor&, const torch::Tensor&, const torch::Tensor&, const torch::Tensor&,
                         const torch::Tensor&);

torch::Tensor sparse_conv2d(const torch::Tensor&, const torch::Tensor&, const std::optional<torch::Tensor>&,
                            const torch::Tensor&, const torch::Tensor&, at::IntArrayRef, at::IntArrayRef,
                            at::IntArrayRef, at::IntArrayRef);
torch::Tensor sparse_conv2d_forward(const torch::Tensor&, const torch::Tensor&, const std::optional<torch::Tensor>&,
                                    const torch::Tensor&, const torch::Tensor&, at::IntArrayRef, at::IntArrayRef,
                                    at::IntArrayRef, at::IntArrayRef);
std::tuple<torch::Tensor, torch::Tensor> sparse_conv2d_backward(const torch::Tensor&, const torch::Tensor&,
                                                                const torch::Tensor&, const torch::Tensor&,
                                                                const torch::Tensor&, at::IntArrayRef, at::IntArrayRef,
                                                                at::IntArrayRef, at::IntArrayRef, bool, bool);

torch::Tensor sparse_conv2d_width(const torch::Tensor&, const torch::Tensor&, const std::optional<torch::Tensor>&,
                                  const torch::Tensor&, const torch::Tensor&, at::IntArrayRef, at::IntArrayRef,
                                  at::IntArrayRef, at::IntArrayRef);
torch::Tensor sparse_conv2d_width_forward(const torch::Tensor&, const torch::Tensor&,
                                          const std::optional<torch::Tensor>&, const torch::Tensor&,
                                          const torch::Tensor&, at::IntArrayRef, at::IntArrayRef, at::IntArrayRef,
                                          at::IntArrayRef);
std::tuple<torch::Tensor, torch::Tensor> sparse_conv2d_width_backward(const torch::Tensor&, const torch::Tensor&,
                                                                      const torch::Tensor&, const torch::Tensor&,
                                                                      const torch::Tensor&, at::IntArrayRef,
                                                                      at::IntArrayRef, at::IntArrayRef,
                                                                      at::IntArrayRef, bool, bool);

std::string isa() { return SB_ISA; }
}  // namespace sparsebench

TORCH_LIBRARY(sparse_linear, m) {
  m.def("isa() -> str", &sparsebench::isa);  // which variant this build is
  m.def("bsr_forward(Tensor x, Tensor values, Tensor? bias, Tensor row_ptr, Tensor col_idx, int out_features) -> "
        "Tensor");
  m.def("bsr_linear(Tensor x, Tensor values, Tensor? bias, Tensor row_ptr, Tensor col_idx, Tensor t_row_ptr, "
        "Tensor t_col_idx, Tensor perm, int out_features) -> Tensor");
  m.def("bsr_input_grad(Tensor dy, Tensor values, Tensor t_row_ptr, Tensor t_col_idx, Tensor perm, "
        "int in_features) -> Tensor");
  m.def("bsr_weight_grad(Tensor dy, Tensor x, Tensor row_ptr, Tensor col_idx, int R, int C) -> Tensor");
  m.def("csr_mm(Tensor row_ptr, Tensor col, Tensor values, Tensor x, Tensor? bias, Tensor? perm=None) -> Tensor");
  m.def("csr_sddmm(Tensor row_ptr, Tensor col, Tensor dy, Tensor x) -> Tensor");
  m.def("csr_linear(Tensor x, Tensor values, Tensor? bias, Tensor row_ptr, Tensor col, Tensor t_row_ptr, "
        "Tensor t_col, Tensor perm) -> Tensor");
  m.def("sparse_conv2d(Tensor x, Tensor values, Tensor? bias, Tensor row_ptr, Tensor col, int[2] block, "
        "int[2] kernel, int[2] stride, int[2] padding) -> Tensor");
  m.def("sparse_conv2d_forward(Tensor x, Tensor values, Tensor? bias, Tensor row_ptr, Tensor col, int[2] block, "
        "int[2] kernel, int[2] stride, int[2] padding) -> Tensor");
  m.def("sparse_conv2d_backward(Tensor dy, Tensor x, Tensor values, Tensor row_ptr, Tensor col, int[2] block, "
        "int[2] kernel, int[2] stride, int[2] padding, bool need_x, bool need_w) -> (Tensor, Tensor)");
  m.def("sparse_conv2d_width(Tensor x, Tensor values, Tensor? bias, Tensor row_ptr, Tensor col, int[2] block, "
        "int[2] kernel, int[2] stride, int[2] padding) -> Tensor");
  m.def("sparse_conv2d_width_forward(Tensor x, Tensor values, Tensor? bias, Tensor row_ptr, Tensor col, "
        "int[2] block, int[2] kernel, int[2] stride, int[2] padding) -> Tensor");
  m.def("sparse_conv2d_width_backward(Tensor dy, Tensor x, Tensor values, Tensor row_ptr, Tensor col, "
        "int[2] block, int[2] kernel, int[2] stride, int[2] padding, bool need_x, bool need_w) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(sparse_linear, CPU, m) {
  m.impl("bsr_forward", &sparsebench::bsr_forward);
  m.impl("bsr_linear", &sparsebench::bsr_linear);
  m.impl("bsr_input_grad", &sparsebench::bsr_input_grad);
  m.impl("bsr_weight_grad", &sparsebench::bsr_weight_grad);
  m.impl("csr_mm", &sparsebench::csr_mm);
  m.impl("csr_sddmm", &sparsebench::csr_sddmm);
  m.impl("csr_linear", &sparsebench::csr_linear);
  m.impl("sparse_conv2d", &sparsebench::sparse_conv2d);
  m.impl("sparse_conv2d_forward", &sparsebench::sparse_conv2d_forward);
  m.impl("sparse_conv2d_backward", &sparsebench::sparse_conv2d_backward);
  m.impl("sparse_conv2d_width", &sparsebench::sparse_conv2d_width);
  m.impl("sparse_conv2d_width_forward", &sparsebench::sparse_conv2d_width_forward);
  m.impl("sparse_conv2d_width_backward", &sparsebench::sparse_conv2d_width_backward);
}
