// CSR CPU training kernels for unstructured (element-wise) sparsity, on row-major activations
// ((n, in) / (n, out)) as the layers around them produce and consume them. Row pointers and perm
// are int32; column indices int16 or int32 (int16 where the matrix has at most 32767 columns):
//   csr_mm     Y[t, i] = bias[i] + sum_k vals[k] * X[t, col[k]]    forward (A = W), input grad (A = W^T:
//              its values read through perm, vals[perm[k]], so W^T's values are never copied out)
//   csr_sddmm  g[k]    = sum_t DY[t, row(k)] * X[t, col[k]]         weight grad at kept positions only
// The vector dimension is the token: each thread takes panels of TN consecutive tokens and first
// transposes its panel of X (K x TN floats, and DY's for sddmm) into a small buffer that stays in L2,
// so the inner loop is one contiguous vector load and one FMA per kept weight, and no transpose of a
// whole activation is ever made. Output rows of a panel are gathered 16 at a time and written back
// transposed. TN is chosen per call from the panel size and this CPU's L2.
#include "common.h"

#include <vector>

namespace sparsebench {
namespace {

constexpr int64_t kRowGroup = 16;  // output rows written back together

// P (K x TN) <- X[t0 : t0 + w, :]^T, zero-padded to TN tokens. 16 features at a time, so the
// writes stay in 16 lines of P while a row of X is read contiguously.
template <int TN>
void pack_panel(const float* __restrict X, int64_t ldx, int64_t K, int64_t t0, int64_t w, float* __restrict P) {
  for (int64_t c0 = 0; c0 < K; c0 += 16) {
    const int64_t c1 = std::min<int64_t>(K, c0 + 16);
    for (int64_t j = 0; j < w; ++j) {
      const float* xr = X + (t0 + j) * ldx;
      for (int64_t c = c0; c < c1; ++c) P[c * TN + j] = xr[c];
    }
    for (int64_t c = c0; c < c1; ++c)
      for (int64_t j = w; j < TN; ++j) P[c * TN + j] = 0.f;
  }
}

// Y[t0 : t0 + w, r0 : r1] for one panel: rows [r0, r1) of A against the packed panel P of X.
// A's k-th value is vals[perm[k]] when IND (W^T's values in W's storage), else vals[k].
template <int TN, bool IND, class CI>
void mm_panel(const int32_t* __restrict rp, const CI* __restrict col, const float* __restrict vals,
              const int32_t* __restrict perm, const float* __restrict P, const float* __restrict bias, int64_t r0, int64_t r1, float* __restrict Y,
              int64_t ldy, int64_t t0, int64_t w) {
  constexpr int L = kMaxLanes;
  constexpr int NA = TN / L;
  typedef typename VecT<L>::type V;
  alignas(64) float buf[kRowGroup * TN];
  for (int64_t i0 = r0; i0 < r1; i0 += kRowGroup) {
    const int64_t rows = std::min<int64_t>(kRowGroup, r1 - i0);
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t i = i0 + r;
      // two accumulator sets over alternate kept weights: twice the independent FMA chains
      V a[NA], b[NA];
      const float b0 = bias ? bias[i] : 0.f;
#pragma GCC unroll 16
      for (int q = 0; q < NA; ++q) a[q] = b0 - V{}, b[q] = V{};
      int32_t k = rp[i];
      const int32_t k1 = rp[i + 1];
      for (; k + 1 < k1; k += 2) {
        const float v0 = vals[IND ? perm[k] : k], v1 = vals[IND ? perm[k + 1] : k + 1];
        const float* p0 = P + (int64_t)col[k] * TN;
        const float* p1 = P + (int64_t)col[k + 1] * TN;
#pragma GCC unroll 16
        for (int q = 0; q < NA; ++q) {
          a[q] += v0 * loadu<L>(p0 + L * q);
          b[q] += v1 * loadu<L>(p1 + L * q);
        }
      }
      if (k < k1) {
        const float v0 = vals[IND ? perm[k] : k];
        const float* p0 = P + (int64_t)col[k] * TN;
#pragma GCC unroll 16
        for (int q = 0; q < NA; ++q) a[q] += v0 * loadu<L>(p0 + L * q);
      }
#pragma GCC unroll 16
      for (int q = 0; q < NA; ++q) storeu<L>(buf + r * TN + L * q, a[q] + b[q]);
    }
    for (int64_t j = 0; j < w; ++j) {
      float* yr = Y + (t0 + j) * ldy + i0;
      for (int64_t r = 0; r < rows; ++r) yr[r] = buf[r * TN + j];
    }
  }
}

// Sum of a vector's lanes as a tree of half-width adds (a lane-by-lane sum is one long dependency chain).
typedef int vi4 __attribute__((vector_size(16)));
static inline float hsum(v4 v) {
  v += __builtin_shuffle(v, vi4{2, 3, 0, 1});
  v += __builtin_shuffle(v, vi4{1, 0, 3, 2});
  return v[0];
}
static inline float hsum(v8 v) {
  v4 lo, hi;
  std::memcpy(&lo, &v, sizeof(lo));
  std::memcpy(&hi, reinterpret_cast<const char*>(&v) + sizeof(lo), sizeof(hi));
  return hsum(lo + hi);
}
static inline float hsum(v16 v) {
  v8 lo, hi;
  std::memcpy(&lo, &v, sizeof(lo));
  std::memcpy(&hi, reinterpret_cast<const char*>(&v) + sizeof(lo), sizeof(hi));
  return hsum(lo + hi);
}

// g[k] += sum over the panel's tokens of DY[t, row(k)] * X[t, col[k]], rows [r0, r1); PB is the
// packed panel of X (K x TN). DY's rows are packed kRowGroup at a time into PA.
template <int TN, class CI>
void sddmm_panel(const int32_t* __restrict rp, const CI* __restrict col, const float* __restrict DY,
                 int64_t lddy, const float* __restrict PB, int64_t r0, int64_t r1, int64_t t0, int64_t w,
                 float* __restrict g) {
  constexpr int L = kMaxLanes;
  constexpr int NA = TN / L;
  typedef typename VecT<L>::type V;
  alignas(64) float PA[kRowGroup * TN];
  for (int64_t i0 = r0; i0 < r1; i0 += kRowGroup) {
    const int64_t rows = std::min<int64_t>(kRowGroup, r1 - i0);
    for (int64_t j = 0; j < w; ++j) {
      const float* d = DY + (t0 + j) * lddy + i0;
      for (int64_t r = 0; r < rows; ++r) PA[r * TN + j] = d[r];
    }
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t j = w; j < TN; ++j) PA[r * TN + j] = 0.f;
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t i = i0 + r;
      V a[NA];
#pragma GCC unroll 16
      for (int q = 0; q < NA; ++q) a[q] = loadu<L>(PA + r * TN + L * q);
      int32_t k = rp[i];
      const int32_t k1 = rp[i + 1];
      for (; k + 1 < k1; k += 2) {  // two dots per pass share the loads of a
        const float* p0 = PB + (int64_t)col[k] * TN;
        const float* p1 = PB + (int64_t)col[k + 1] * TN;
        V s0 = a[0] * loadu<L>(p0), s1 = a[0] * loadu<L>(p1);
#pragma GCC unroll 16
        for (int q = 1; q < NA; ++q) {
          s0 += a[q] * loadu<L>(p0 + L * q);
          s1 += a[q] * loadu<L>(p1 + L * q);
        }
        g[k] += hsum(s0);
        g[k + 1] += hsum(s1);
      }
      if (k < k1) {
        const float* p0 = PB + (int64_t)col[k] * TN;
        V s0 = a[0] * loadu<L>(p0);
#pragma GCC unroll 16
        for (int q = 1; q < NA; ++q) s0 += a[q] * loadu<L>(p0 + L * q);
        g[k] += hsum(s0);
      }
    }
  }
}

// Panel width in tokens, at most `widest`, whose packed panel (`floats_per_token` floats per token)
// fills at most half this core's L2: a panel sized for a large L2 thrashes a small one.
int64_t panel_width(int64_t floats_per_token, int64_t widest) {
  int64_t tn = widest;
  while (tn > kMaxLanes && floats_per_token * tn * (int64_t)sizeof(float) > l2_bytes() / 2) tn /= 2;
  return tn;
}

// A panel buffer of at least `floats` floats starting on a 64-byte boundary: a full-width AVX-512
// load from an unaligned row straddles two cache lines, every time.
static inline float* aligned_panel(std::vector<float>& buf, int64_t floats) {
  if (buf.size() < (size_t)(floats + 16)) buf.resize(floats + 16);
  const uintptr_t a = reinterpret_cast<uintptr_t>(buf.data());
  return reinterpret_cast<float*>((a + 63) & ~(uintptr_t)63);
}

// How many row ranges each panel is split into so that every thread has work: 1 when there are
// panels enough (no panel is packed twice), more for few tokens (a batch of 64 is one panel).
int64_t row_splits(int64_t npanels, int64_t rows) {
  const int64_t nthr = std::max(1, at::get_num_threads());
  if (npanels >= 2 * nthr) return 1;
  return std::max<int64_t>(1, std::min<int64_t>((2 * nthr + npanels - 1) / npanels, rows / kRowGroup));
}

// The widest panels, in tokens: for csr_mm at most 4 vectors (twice) of accumulators and 32 tokens,
// and for sddmm as many vectors of DY as half the register file holds, up to 64 tokens (every kept
// weight's dot ends in a horizontal sum). Wider panels measured slower on AVX-512 (they leave L1).
constexpr int kMmWidest = std::min(4 * kMaxLanes, 32);
constexpr int kSddmmWidest = std::min((kVRegs / 2) * kMaxLanes, 64);

#define SB_BY_WIDTH(tn, CALL)                                    \
  switch (tn) {                                                  \
    case 16 * kMaxLanes: CALL((16 * kMaxLanes)); break;          \
    case 8 * kMaxLanes: CALL((8 * kMaxLanes)); break;            \
    case 4 * kMaxLanes: CALL((4 * kMaxLanes)); break;            \
    case 2 * kMaxLanes: CALL((2 * kMaxLanes)); break;            \
    default: CALL((kMaxLanes));                                  \
  }

torch::Tensor check_vals(const torch::Tensor& v, int64_t nnz) {
  TORCH_CHECK_VALUE(v.device().is_cpu(), "values must be on the CPU, got device ", v.device());
  TORCH_CHECK_VALUE(v.scalar_type() == torch::kFloat, "values must be float32, got ", v.scalar_type());
  TORCH_CHECK_VALUE(v.dim() == 1 && v.size(0) == nnz, "CSR structure does not match: col has ", nnz,
                    " entries, values has shape ", v.sizes());
  return v.contiguous();
}

// Column indices: int16 or int32. sparsebench stores int16 where the matrix has at most 32767
// columns (half the index memory of int32), else int32.
torch::Tensor check_col(const torch::Tensor& col) {
  TORCH_CHECK_VALUE(col.scalar_type() == torch::kShort || col.scalar_type() == torch::kInt,
                    "col must be int16 or int32, got ", col.scalar_type());
  return check_index("col", col, col.scalar_type());
}

// f(CI{}) with CI the column index type of col
template <class F>
auto by_col_type(const torch::Tensor& col, const F& f) {
  if (col.scalar_type() == torch::kShort) return f(int16_t{});
  return f(int32_t{});
}

}  // namespace

// Y (n, M) = X @ A^T (+ bias); A (M, K) in CSR (row_ptr (M + 1), col (nnz) int16 or int32, values (nnz)
// float32, read as values[perm[k]] when perm (nnz int32) is given), X (n, K) dense float32
// row-major, bias (M) or none.
torch::Tensor csr_mm(const torch::Tensor& row_ptr_in, const torch::Tensor& col_in, const torch::Tensor& vals_in,
                     const torch::Tensor& X_in, const std::optional<torch::Tensor>& bias_in,
                     const std::optional<torch::Tensor>& perm_in) {
  auto X = check_dense("x", X_in);
  auto row_ptr = check_index("row_ptr", row_ptr_in, torch::kInt);
  auto col = check_col(col_in);
  auto vals = check_vals(vals_in, col.size(0));
  torch::Tensor perm;
  if (perm_in.has_value()) {
    perm = check_index("perm", *perm_in, torch::kInt, col.size(0));
    const int32_t* pp = perm.data_ptr<int32_t>();
    const int64_t nnz = col.size(0);
    for (int64_t k = 0; k < nnz; ++k)
      TORCH_CHECK_VALUE(pp[k] >= 0 && pp[k] < nnz, "perm entries must lie in [0, ", nnz, "), got ", pp[k]);
  }
  const int64_t M = row_ptr.size(0) - 1, n = X.size(0), K = X.size(1);
  by_col_type(col, [&](auto tag) { check_compressed<int32_t, decltype(tag)>("row_ptr", row_ptr, "col", col, K); });
  torch::Tensor bias;
  if (bias_in.has_value()) {
    bias = bias_in->contiguous();
    TORCH_CHECK_VALUE(bias.scalar_type() == torch::kFloat && bias.device().is_cpu(), "bias must be float32 on the CPU");
    TORCH_CHECK_VALUE(bias.dim() == 1 && bias.size(0) == M, "bias must have shape (", M, ",), got ", bias.sizes());
  }
  auto Y = empty_out(n, M, X.options());
  if (M == 0 || n == 0) return Y;
  by_col_type(col, [&](auto tag) {
  using CI = decltype(tag);
  const int32_t* rp = row_ptr.data_ptr<int32_t>();
  const CI* ci = col.data_ptr<CI>();
  const float* vp = vals.data_ptr<float>();
  const int32_t* pp = perm.defined() ? perm.data_ptr<int32_t>() : nullptr;
  const float* xp = X.data_ptr<float>();
  const float* bp = bias.defined() ? bias.data_ptr<float>() : nullptr;
  float* yp = Y.data_ptr<float>();
  const int64_t ldx = X.stride(0);
  const int64_t tn = panel_width(K, kMmWidest);
  const int64_t npanels = (n + tn - 1) / tn, splits = row_splits(npanels, M);
  // work item = (panel, row range); a panel's X is packed by each item that computes with it
#define SB_MM(TN)                                                                              \
  par_chunks(npanels * splits, 1, [&](int64_t b, int64_t e) {                                  \
    static thread_local std::vector<float> buf;                                                \
    float* P = aligned_panel(buf, K * TN);                                                     \
    int64_t packed = -1;                                                                       \
    for (int64_t item = b; item < e; ++item) {                                                 \
      const int64_t p = item / splits, part = item % splits, t0 = p * TN;                      \
      const int64_t w = std::min<int64_t>(TN, n - t0);                                         \
      if (p != packed) pack_panel<TN>(xp, ldx, K, t0, w, P), packed = p;                       \
      if (pp)                                                                                  \
        mm_panel<TN, true, CI>(rp, ci, vp, pp, P, bp, part * M / splits, (part + 1) * M / splits, yp, M, t0, w); \
      else                                                                                     \
        mm_panel<TN, false, CI>(rp, ci, vp, pp, P, bp, part * M / splits, (part + 1) * M / splits, yp, M, t0, w); \
    }                                                                                          \
  });
  SB_BY_WIDTH(tn, SB_MM)
#undef SB_MM
  });
  return Y;
}

// g[k] = sum_t DY[t, i] * X[t, col[k]] for every stored k of row i; DY (n, M), X (n, K) row-major.
torch::Tensor csr_sddmm(const torch::Tensor& row_ptr_in, const torch::Tensor& col_in, const torch::Tensor& DY_in,
                        const torch::Tensor& X_in) {
  auto DY = check_dense("dy", DY_in);
  auto X = check_dense("x", X_in);
  TORCH_CHECK_VALUE(DY.size(0) == X.size(0), "dy and x must have the same number of rows, got ", DY.size(0), " and ",
                    X.size(0));
  auto row_ptr = check_index("row_ptr", row_ptr_in, torch::kInt, DY.size(1) + 1);
  auto col = check_col(col_in);
  const int64_t n = X.size(0), M = DY.size(1), K = X.size(1), nnz = col.size(0);
  by_col_type(col, [&](auto tag) { check_compressed<int32_t, decltype(tag)>("row_ptr", row_ptr, "col", col, K); });
  auto g = torch::zeros({nnz}, X.options());
  if (nnz == 0 || n == 0) return g;
  by_col_type(col, [&](auto tag) {
  using CI = decltype(tag);
  const int32_t* rp = row_ptr.data_ptr<int32_t>();
  const CI* ci = col.data_ptr<CI>();
  const float* dp = DY.data_ptr<float>();
  const float* xp = X.data_ptr<float>();
  const int64_t lddy = DY.stride(0), ldx = X.stride(0);
  const int64_t tn = panel_width(K, kSddmmWidest);
  const int64_t npanels = (n + tn - 1) / tn, splits = row_splits(npanels, M);
  float* gp = g.data_ptr<float>();
  if (splits == 1) {
    // panels split among the threads; each thread sums into its own copy of g, added at the end
    const int64_t nthr = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), npanels));
    std::vector<float> partial((size_t)(nthr - 1) * nnz, 0.f);
#define SB_SD(TN)                                                                             \
    at::parallel_for(0, nthr, 1, [&](int64_t tb, int64_t te) {                                \
      std::vector<float> buf;                                                                 \
      float* PB = aligned_panel(buf, K * TN);                                                 \
      for (int64_t task = tb; task < te; ++task) {                                            \
        float* gt = task == 0 ? gp : partial.data() + (task - 1) * nnz;                       \
        for (int64_t p = task * npanels / nthr; p < (task + 1) * npanels / nthr; ++p) {       \
          const int64_t t0 = p * TN, w = std::min<int64_t>(TN, n - t0);                       \
          pack_panel<TN>(xp, ldx, K, t0, w, PB);                                       \
          sddmm_panel<TN, CI>(rp, ci, dp, lddy, PB, 0, M, t0, w, gt);                      \
        }                                                                                     \
      }                                                                                       \
    });
    SB_BY_WIDTH(tn, SB_SD)
#undef SB_SD
    at::parallel_for(0, nnz, 4096, [&](int64_t b, int64_t e) {
      for (int64_t task = 1; task < nthr; ++task) {
        const float* src = partial.data() + (task - 1) * nnz;
        for (int64_t k = b; k < e; ++k) gp[k] += src[k];
      }
    });
  } else {
    // few tokens: rows split among the threads (each writes only its rows' g), every panel
    // packed by each
#define SB_SD(TN)                                                                             \
    par_chunks(splits, 1, [&](int64_t b, int64_t e) {                                         \
      std::vector<float> buf;                                                                 \
      float* PB = aligned_panel(buf, K * TN);                                                 \
      for (int64_t p = 0; p < npanels; ++p) {                                                 \
        const int64_t t0 = p * TN, w = std::min<int64_t>(TN, n - t0);                         \
        pack_panel<TN>(xp, ldx, K, t0, w, PB);                                         \
        sddmm_panel<TN, CI>(rp, ci, dp, lddy, PB, b * M / splits, e * M / splits, t0, w, gp); \
      }                                                                                       \
    });
    SB_BY_WIDTH(tn, SB_SD)
#undef SB_SD
  }
  });
  return g;
}

// The training op: Y = X @ W^T + bias, row-major. Takes W^T's structure too (t_row_ptr and perm
// int32, t_col int16 or int32; values[perm] are W^T's values) so its backward needs nothing but
// the op's inputs.
torch::Tensor csr_linear(const torch::Tensor& x, const torch::Tensor& values, const std::optional<torch::Tensor>& bias,
                         const torch::Tensor& row_ptr, const torch::Tensor& col, const torch::Tensor& t_row_ptr,
                         const torch::Tensor& t_col, const torch::Tensor& perm) {
  TORCH_CHECK_VALUE(x.dim() == 2, "x must be 2-D (n, in_features), got shape ", x.sizes());
  check_index("t_row_ptr", t_row_ptr, torch::kInt, x.size(1) + 1);
  check_index("t_col", t_col, t_col.scalar_type() == torch::kShort ? torch::kShort : torch::kInt, col.size(0));
  check_index("perm", perm, torch::kInt, col.size(0));
  return csr_mm(row_ptr, col, values, x, bias, std::nullopt);
}

}  // namespace sparsebench
