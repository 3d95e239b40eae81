// Shared by the BSR and CSR kernels: the target's vector shape, output allocation, the thread
// split and argument checks.
//
// One source, three builds (see build.py): the ISA macros the compiler defines for each variant's
// flags pick the vector width and the number of vector registers, and from them every register
// tile below. Nothing here asks the compiler for the host CPU (no -march=native).
#pragma once

#include <ATen/Parallel.h>
#include <torch/library.h>
#include <torch/torch.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#endif

namespace sparsebench {

#if defined(__AVX512F__)
#define SB_ISA "avx512"
constexpr int kMaxLanes = 16;  // floats per vector register
constexpr int kVRegs = 32;     // architectural vector registers
#elif defined(__AVX2__)
#define SB_ISA "avx2"
constexpr int kMaxLanes = 8;
constexpr int kVRegs = 16;
#else
#define SB_ISA "generic"
constexpr int kMaxLanes = 4;  // 128-bit: SSE2 on x86-64, NEON on arm64
#if defined(__aarch64__)
constexpr int kVRegs = 32;
#else
constexpr int kVRegs = 16;
#endif
#endif

typedef float v4 __attribute__((vector_size(16)));
typedef float v8 __attribute__((vector_size(32)));
typedef float v16 __attribute__((vector_size(64)));

template <int L> struct VecT;
template <> struct VecT<4> { typedef v4 type; };
template <> struct VecT<8> { typedef v8 type; };
template <> struct VecT<16> { typedef v16 type; };

template <int L>
static inline typename VecT<L>::type loadu(const float* p) {
  typename VecT<L>::type v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
template <int L>
static inline void storeu(float* p, typename VecT<L>::type v) {
  std::memcpy(p, &v, sizeof(v));
}

// Lanes of the vectors that hold one block dimension of d floats: as wide as the target allows.
constexpr int lanes_for(int d) {
  return std::min(kMaxLanes, d >= 16 ? 16 : (d >= 8 ? 8 : 4));
}

// Tokens per register tile when each token needs nv accumulator vectors: the accumulators, one
// broadcast scalar and the weight vectors must fit the register file, or they spill.
constexpr int token_tile(int nv) {
  return kVRegs >= 32 ? (nv == 1 ? 12 : (nv == 2 ? 6 : 4))
                      : (nv == 1 ? 12 : (nv == 2 ? 6 : (nv == 4 ? 3 : 1)));
}

// Output allocation. Fresh multi-MB outputs are page-faulted in 4 KiB pages on first touch, which
// costs more than the sparse product itself at high sparsity; asking for transparent huge pages on
// the (still untouched) range makes that cheaper.
static inline torch::Tensor empty_out(int64_t rows, int64_t cols, const torch::TensorOptions& opts) {
  auto t = torch::empty({rows, cols}, opts);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  const size_t bytes = (size_t)rows * (size_t)cols * sizeof(float);
  const uintptr_t huge = (uintptr_t)2 << 20;
  if (bytes >= 4 * huge) {
    const uintptr_t a = (uintptr_t)t.data_ptr<float>();
    const uintptr_t s = (a + huge - 1) & ~(huge - 1), e = (a + bytes) & ~(huge - 1);
    if (e > s) (void)madvise((void*)s, e - s, MADV_HUGEPAGE);
  }
#endif
  return t;
}

// Per-core L2 size in bytes (for panel sizes); 1 MiB where the OS does not say.
static inline int64_t l2_bytes() {
  static const int64_t v = [] {
    long s = -1;
#if defined(__linux__) && defined(_SC_LEVEL2_CACHE_SIZE)
    s = sysconf(_SC_LEVEL2_CACHE_SIZE);
#endif
    return s > 0 ? (int64_t)s : (int64_t)1 << 20;
  }();
  return v;
}

// Run f(begin, end) over [0, n) split into chunks of >= grain items, handed out dynamically to
// torch.get_num_threads() OpenMP threads (the same libgomp pool ATen uses). Dynamic hand-out keeps
// both cores busy when the sparsity pattern is uneven or another process steals a core for a while.
template <class F>
static void par_chunks(int64_t n, int64_t grain, const F& f) {
  if (n <= 0) return;
  const int64_t nthr = std::max(1, at::get_num_threads());
  grain = std::max<int64_t>(1, grain);
  int64_t nchunks = std::min<int64_t>((n + grain - 1) / grain, 8 * nthr);
  if (nthr == 1 || nchunks <= 1) nchunks = 1;
#ifdef _OPENMP
  if (nchunks > 1 && !omp_in_parallel()) {
#pragma omp parallel for schedule(dynamic, 1) num_threads((int)std::min(nthr, nchunks))
    for (int64_t c = 0; c < nchunks; ++c) f(c * n / nchunks, (c + 1) * n / nchunks);
    return;
  }
#endif
  for (int64_t c = 0; c < nchunks; ++c) f(c * n / nchunks, (c + 1) * n / nchunks);
}

// ----------------------------------------------------------------------------- argument checks
// Argument errors raise ValueError in Python (TORCH_CHECK_VALUE), naming the argument.

// A dense float32 CPU matrix, returned with unit column stride (copied if needed).
static inline torch::Tensor check_dense(const char* name, const torch::Tensor& t, int64_t cols = -1) {
  TORCH_CHECK_VALUE(t.device().is_cpu(), name, " must be on the CPU, got device ", t.device());
  TORCH_CHECK_VALUE(t.scalar_type() == torch::kFloat, name, " must be float32, got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.layout() == torch::kStrided, name, " must be a dense (strided) tensor");
  TORCH_CHECK_VALUE(t.dim() == 2, name, " must be 2-D, got shape ", t.sizes());
  TORCH_CHECK_VALUE(cols < 0 || t.size(1) == cols, name, " must have ", cols, " columns, got shape ", t.sizes());
  if (t.stride(1) != 1 || (t.size(0) > 1 && t.stride(0) < t.size(1))) return t.contiguous();
  return t;
}

static inline torch::Tensor check_index(const char* name, const torch::Tensor& t, torch::ScalarType dtype,
                                        int64_t length = -1) {
  TORCH_CHECK_VALUE(t.device().is_cpu(), name, " must be on the CPU, got device ", t.device());
  TORCH_CHECK_VALUE(t.scalar_type() == dtype, name, " must be ",
                    (dtype == torch::kLong ? "int64" : dtype == torch::kShort ? "int16" : "int32"),
                    ", got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.dim() == 1, name, " must be 1-D, got shape ", t.sizes());
  TORCH_CHECK_VALUE(length < 0 || t.size(0) == length, name, " must have length ", length, ", got ", t.size(0));
  return t.contiguous();
}

// A compressed structure: ptr (rows + 1) from 0 to nnz, non-decreasing; idx (nnz) in [0, cols).
template <class I, class J = I>
static inline void check_compressed(const char* ptr_name, const torch::Tensor& ptr, const char* idx_name,
                                    const torch::Tensor& idx, int64_t cols) {
  const I* p = ptr.data_ptr<I>();
  const int64_t rows = ptr.size(0) - 1, nnz = idx.size(0);
  TORCH_CHECK_VALUE(rows >= 0, ptr_name, " must have at least one entry");
  TORCH_CHECK_VALUE(p[0] == 0 && (int64_t)p[rows] == nnz, ptr_name, " must run from 0 to ", nnz, " (the number of ",
                    idx_name, " entries), got ", (int64_t)p[0], "..", (int64_t)p[rows]);
  for (int64_t r = 0; r < rows; ++r)
    TORCH_CHECK_VALUE(p[r] <= p[r + 1], ptr_name, " must be non-decreasing (entry ", r, ")");
  const J* c = idx.data_ptr<J>();
  J lo = 0, hi = 0;
  for (int64_t k = 0; k < nnz; ++k) {
    lo = std::min(lo, c[k]);
    hi = std::max(hi, c[k]);
  }
  TORCH_CHECK_VALUE(nnz == 0 || (lo >= 0 && (int64_t)hi < cols), idx_name, " entries must lie in [0, ", cols,
                    "), got range [", (int64_t)lo, ", ", (int64_t)hi, "]");
}

}  // namespace sparsebench
