// CSR CPU training kernels for unstructured (element-wise) sparsity, int32 indices.
//
// They work on feature-major activations (x^T: (in, n)) so that the vector dimension is the token
// dimension, contiguous for every kept weight:
//   spmm   out[i, :] = sum_k vals[k] * B[col[k], :]      forward (W @ x^T) and input grad (W^T @ dy^T)
//   sddmm  g[k]      = dot(A[row(k), :], B[col[k], :])   weight grad at kept positions (dy^T . x^T)
// Each thread takes a contiguous range of rows and sweeps the token dimension in panels of TN
// columns, so the panel of B it reads (K x TN floats) stays in its L2 while it walks its rows. TN
// is chosen per call from K and this CPU's L2 size: a panel sized for a large L2 thrashes a small one.
#include "common.h"

#include <vector>

namespace sparsebench {
namespace {

// Rows [r0, r1) of out = A @ B. The panel B[:, j0:j0+TN] is first copied into a contiguous buffer:
// read in place, its rows lie n floats apart (a power of two, often), and they would all fall into
// the same few cache sets.
template <int TN>
void spmm_rows(const int32_t* row_ptr, const int32_t* col, const float* vals, const float* B, int64_t K, int64_t n,
               const float* bias, float* out, int64_t r0, int64_t r1) {
  constexpr int L = kMaxLanes;
  constexpr int NA = TN / L;  // accumulator vectors per row
  typedef typename VecT<L>::type V;
  std::vector<float> panel_buf(K * TN + 16);
  float* panel = panel_buf.data();
  for (int64_t j0 = 0; j0 < n; j0 += TN) {
    const int64_t w = std::min<int64_t>(TN, n - j0);
    for (int64_t c = 0; c < K; ++c) {
      const float* src = B + c * n + j0;
      float* dst = panel + c * TN;
      for (int64_t j = 0; j < w; ++j) dst[j] = src[j];
      for (int64_t j = w; j < TN; ++j) dst[j] = 0.f;
    }
    for (int64_t i = r0; i < r1; ++i) {
      const float b0 = bias ? bias[i] : 0.f;  // the bias starts the sum: no separate pass over the output
      V a[NA];
#pragma GCC unroll 16
      for (int q = 0; q < NA; ++q) a[q] = b0 - V{};
      const int32_t k1 = row_ptr[i + 1];
      for (int32_t k = row_ptr[i]; k < k1; ++k) {
        const float v = vals[k];
        const float* b = panel + (int64_t)col[k] * TN;
#pragma GCC unroll 16
        for (int q = 0; q < NA; ++q) a[q] += v * loadu<L>(b + L * q);
      }
      float* o = out + i * n + j0;
      if (w == TN) {
#pragma GCC unroll 16
        for (int q = 0; q < NA; ++q) storeu<L>(o + L * q, a[q]);
      } else {
        float tmp[TN];
        for (int q = 0; q < NA; ++q) storeu<L>(tmp + L * q, a[q]);
        for (int64_t j = 0; j < w; ++j) o[j] = tmp[j];
      }
    }
  }
}

// Panel width: the widest whose K x TN floats fill at most half this core's L2, and no wider than
// the target's registers hold as accumulators.
int64_t panel_width(int64_t K) {
  constexpr int64_t widest = kMaxLanes >= 8 ? 64 : 32;  // at most 8 accumulator registers on 16-register ISAs
  int64_t tn = widest;
  while (tn > 16 && K * tn * (int64_t)sizeof(float) > l2_bytes() / 2) tn /= 2;
  return tn;
}

torch::Tensor check_vals(const torch::Tensor& v, int64_t nnz) {
  TORCH_CHECK_VALUE(v.device().is_cpu(), "values must be on the CPU, got device ", v.device());
  TORCH_CHECK_VALUE(v.scalar_type() == torch::kFloat, "values must be float32, got ", v.scalar_type());
  TORCH_CHECK_VALUE(v.dim() == 1 && v.size(0) == nnz, "CSR structure does not match: col has ", nnz,
                    " entries, values has shape ", v.sizes());
  return v.contiguous();
}

}  // namespace

// out (M, n) = A @ B (+ bias[:, None]); A (M, K) in CSR (row_ptr (M + 1), col (nnz) int32, values
// (nnz) float32), B (K, n) dense float32, bias (M) or none.
torch::Tensor csr_spmm(const torch::Tensor& row_ptr_in, const torch::Tensor& col_in, const torch::Tensor& vals_in,
                       const torch::Tensor& B_in, const std::optional<torch::Tensor>& bias_in) {
  auto B = check_dense("b", B_in).contiguous();
  auto row_ptr = check_index("row_ptr", row_ptr_in, torch::kInt);
  auto col = check_index("col", col_in, torch::kInt);
  auto vals = check_vals(vals_in, col.size(0));
  const int64_t M = row_ptr.size(0) - 1, K = B.size(0), n = B.size(1);
  check_compressed<int32_t>("row_ptr", row_ptr, "col", col, K);
  torch::Tensor bias;
  if (bias_in.has_value()) {
    bias = bias_in->contiguous();
    TORCH_CHECK_VALUE(bias.scalar_type() == torch::kFloat && bias.device().is_cpu(), "bias must be float32 on the CPU");
    TORCH_CHECK_VALUE(bias.dim() == 1 && bias.size(0) == M, "bias must have shape (", M, ",), got ", bias.sizes());
  }
  auto out = torch::empty({M, n}, B.options());
  if (M == 0 || n == 0) return out;
  const int32_t* rp = row_ptr.data_ptr<int32_t>();
  const int32_t* ci = col.data_ptr<int32_t>();
  const float* vp = vals.data_ptr<float>();
  const float* bp = B.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const float* biasp = bias.defined() ? bias.data_ptr<float>() : nullptr;
  const int64_t tn = panel_width(K);
  at::parallel_for(0, M, 1, [&](int64_t r0, int64_t r1) {
    if (tn == 64)
      spmm_rows<64>(rp, ci, vp, bp, K, n, biasp, op, r0, r1);
    else if (tn == 32)
      spmm_rows<32>(rp, ci, vp, bp, K, n, biasp, op, r0, r1);
    else
      spmm_rows<16>(rp, ci, vp, bp, K, n, biasp, op, r0, r1);
  });
  return out;
}

// g[k] = dot(A[i, :], B[col[k], :]) for every stored k of row i; A (M, n), B (K, n) row-major.
torch::Tensor csr_sddmm(const torch::Tensor& row_ptr_in, const torch::Tensor& col_in, const torch::Tensor& A_in,
                        const torch::Tensor& B_in) {
  auto A = check_dense("a", A_in).contiguous();
  auto B = check_dense("b", B_in, A.size(1)).contiguous();
  auto row_ptr = check_index("row_ptr", row_ptr_in, torch::kInt, A.size(0) + 1);
  auto col = check_index("col", col_in, torch::kInt);
  check_compressed<int32_t>("row_ptr", row_ptr, "col", col, B.size(0));
  const int64_t M = A.size(0), n = A.size(1);
  auto g = torch::empty({col.size(0)}, A.options());
  const int32_t* rp = row_ptr.data_ptr<int32_t>();
  const int32_t* ci = col.data_ptr<int32_t>();
  const float* ap = A.data_ptr<float>();
  const float* bp = B.data_ptr<float>();
  float* gp = g.data_ptr<float>();
  at::parallel_for(0, M, 1, [&](int64_t r0, int64_t r1) {
    for (int64_t i = r0; i < r1; ++i) {
      const float* a = ap + i * n;
      int32_t k = rp[i];
      const int32_t k1 = rp[i + 1];
      for (; k + 3 < k1; k += 4) {  // four dots share each load of a
        const float* b0 = bp + (int64_t)ci[k] * n;
        const float* b1 = bp + (int64_t)ci[k + 1] * n;
        const float* b2 = bp + (int64_t)ci[k + 2] * n;
        const float* b3 = bp + (int64_t)ci[k + 3] * n;
        float s0 = 0.f, s1 = 0.f, s2 = 0.f, s3 = 0.f;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
        for (int64_t j = 0; j < n; ++j) {
          s0 += a[j] * b0[j];
          s1 += a[j] * b1[j];
          s2 += a[j] * b2[j];
          s3 += a[j] * b3[j];
        }
        gp[k] = s0;
        gp[k + 1] = s1;
        gp[k + 2] = s2;
        gp[k + 3] = s3;
      }
      for (; k < k1; ++k) {
        const float* b0 = bp + (int64_t)ci[k] * n;
        float s0 = 0.f;
#pragma omp simd reduction(+ : s0)
        for (int64_t j = 0; j < n; ++j) s0 += a[j] * b0[j];
        gp[k] = s0;
      }
    }
  });
  return g;
}

// a^T, contiguous (torch's strided copy). The CSR layer's activations change layout through this:
// one copy of x per step, saved for the backward, instead of one in forward and one in backward.
torch::Tensor transpose(const torch::Tensor& a_in) { return check_dense("a", a_in).t().contiguous(); }

// The training op, feature-major: y^T = W @ x^T + bias. Takes W^T's structure too (t_row_ptr,
// t_col, perm: values[perm] are W^T's values) so its backward needs nothing but the op's inputs.
torch::Tensor csr_linear_t(const torch::Tensor& x_t, const torch::Tensor& values, const std::optional<torch::Tensor>& bias,
                           const torch::Tensor& row_ptr, const torch::Tensor& col, const torch::Tensor& t_row_ptr,
                           const torch::Tensor& t_col, const torch::Tensor& perm) {
  TORCH_CHECK_VALUE(x_t.dim() == 2, "x_t must be 2-D (in_features, n), got shape ", x_t.sizes());
  check_index("t_row_ptr", t_row_ptr, torch::kInt, x_t.size(0) + 1);
  check_index("t_col", t_col, torch::kInt, col.size(0));
  check_index("perm", perm, torch::kInt, col.size(0));
  return csr_spmm(row_ptr, col, values, x_t, bias);
}

}  // namespace sparsebench
