// Direct sparse 2-D convolution training kernels: forward, input gradient and weight gradient at
// kept positions only, computed on the sparse weight itself (no im2col rows, no dense weight).
//
// The weight is seen as the (out, in * kh * kw) matrix of a conv weight, stored as CSR (one row
// per output channel) or as BSR (R x C blocks of that matrix, so R output channels share each
// block's C columns). Both arrive as a compressed structure over row groups (a CSR row, or a
// block row of R channels), and the kernels turn it, per call, into lists of kept (in-channel,
// kh, kw) entries with their offsets into the packed input: O(kept weights) work, small against
// the products.
//
// Activations are packed row-major with the batch innermost, (H + 2ph, C, W + 2pw, N'),
// zero-padded in space and in the batch (N' = N rounded up to whole vectors), so every kept
// weight multiplies whole vectors of images at every output position with no bounds tests. Each
// register tile holds T output positions x NV batch vectors x RK output channels (RK = 4 for
// blocks of 4k rows: one load of the input feeds four FMAs), summed over the tile's kept entries.
//   forward       Y[o, p, :]  = bias[o] + sum_(c,i,j) W[o, c, i, j] X[c, p*s + (i, j) - pad, :]
//   input grad    dX[c, q, :] = sum_(o,i,j) W[o, c, i, j] dY[o, (q + pad - (i, j)) / s, :], a gather per
//                 input channel (the transposed entry lists), split by the phase of q modulo the stride
//                 so that each phase is a stride-1 correlation on the padded dY
//   weight grad   dW[o, c, i, j] = sum_(p, n) dY[o, p, n] X[c, p*s + (i, j) - pad, n], accumulated in
//                 vector registers per entry, dY's loads shared by the E entries of a tile
// The batch is cut into chunks whose input rows fit in L2, so rows read for one output row are
// reused from L2 by every output channel.
#include "common.h"

#include <vector>

namespace sparsebench {
namespace {

constexpr int L = kMaxLanes;
typedef typename VecT<L>::type V;
constexpr int kAccF = kVRegs >= 32 ? 24 : 12;  // accumulator vectors of a forward / input-grad tile
constexpr int kMaxT = 8;                        // output positions per tile

// ------------------------------------------------------------------ packing
// A packed activation: (Hp, C, Wp, Bp) floats, batch innermost and rows outermost, so the few
// input rows one output row reads are one contiguous span for every channel (few pages: a
// gather over many channels stays within the TLB).
struct Packed {
  torch::Tensor t;
  int64_t C, Hp, Wp, Bp;
  int64_t sc() const { return Wp * Bp; }
  int64_t sr() const { return C * Wp * Bp; }
  const float* data() const { return t.data_ptr<float>(); }
};

// dst[h + top, c, w + left, n] = src[n, c, h, w] (src any strides), zeros elsewhere: the borders
// zeroed and the interior written once, by torch's strided copy (a blocked transpose, faster
// than a scalar one here).
Packed pack(const torch::Tensor& src, int64_t Hp, int64_t Wp, int64_t Bp, int64_t top, int64_t left) {
  const int64_t N = src.size(0), C = src.size(1), H = src.size(2), W = src.size(3);
  TORCH_CHECK(top >= 0 && left >= 0 && top + H <= Hp && left + W <= Wp && N <= Bp, "pack: bad geometry");
  Packed p{torch::empty({Hp, C, Wp, Bp}, src.options()), C, Hp, Wp, Bp};
  auto& t = p.t;
  if (top > 0) t.narrow(0, 0, top).zero_();
  if (Hp > top + H) t.narrow(0, top + H, Hp - top - H).zero_();
  auto rows = t.narrow(0, top, H);
  if (left > 0) rows.narrow(2, 0, left).zero_();
  if (Wp > left + W) rows.narrow(2, left + W, Wp - left - W).zero_();
  auto inner = rows.narrow(2, left, W);
  if (Bp > N) inner.narrow(3, N, Bp - N).zero_();
  inner.narrow(3, 0, N).copy_(src.permute({2, 1, 3, 0}));
  return p;
}

// ------------------------------------------------------------------ the weight as entry lists
// Row groups (CSR: one output channel; BSR: R channels), each with its kept columns of the
// (out, in*kh*kw) matrix. A group is computed in subgroups of RK channels (4 where R allows).
struct Entries {
  int64_t groups = 0, R = 1, Cb = 1, RK = 1, nelem = 0;
  std::vector<int64_t> gp;    // groups + 1: entry range of each group
  std::vector<int64_t> col;   // per entry: column j = ic * kh * kw + i * kw + j
  std::vector<int64_t> ebase; // per group: index of its first element in the packed value order
  std::vector<int64_t> vidx;  // per element (packed order): its index in `values`
};

// Packed element order: group g, subgroup s (RK channels), entry e of g, channel r of s.
Entries entries_of(const torch::Tensor& row_ptr, const torch::Tensor& col, int64_t R, int64_t Cb) {
  Entries E;
  E.groups = row_ptr.size(0) - 1;
  E.R = R, E.Cb = Cb, E.RK = (R % 4 == 0) ? 4 : 1;
  const int64_t* rp = row_ptr.data_ptr<int64_t>();
  const int64_t* ci = col.data_ptr<int64_t>();
  E.gp.resize(E.groups + 1);
  E.ebase.resize(E.groups + 1);
  E.gp[0] = 0, E.ebase[0] = 0;
  for (int64_t g = 0; g < E.groups; ++g) {
    const int64_t ne = (rp[g + 1] - rp[g]) * Cb;
    E.gp[g + 1] = E.gp[g] + ne;
    E.ebase[g + 1] = E.ebase[g] + ne * R;
  }
  E.nelem = E.ebase[E.groups];
  E.col.resize(E.gp[E.groups]);
  E.vidx.resize(E.nelem);
  for (int64_t g = 0; g < E.groups; ++g) {
    const int64_t ne = E.gp[g + 1] - E.gp[g];
    for (int64_t b = rp[g]; b < rp[g + 1]; ++b)
      for (int64_t c = 0; c < Cb; ++c) {
        const int64_t e = (b - rp[g]) * Cb + c;
        E.col[E.gp[g] + e] = ci[b] * Cb + c;
        for (int64_t r = 0; r < R; ++r) {
          const int64_t s = r / E.RK, rk = r % E.RK;
          E.vidx[E.ebase[g] + s * ne * E.RK + e * E.RK + rk] = b * R * Cb + r * Cb + c;
        }
      }
  }
  return E;
}

// ------------------------------------------------------------------ register tiles
// acc[r][t][q] = bias[r] + sum_e val[e * RK + r] * X[off[e] + t * in_step + q * L]; stored at
// Y + r * y_ch + t * out_step + q * L.
template <int RK, int NV, int T>
void conv_tile(const int64_t* __restrict off, const float* __restrict val, int64_t ne, const float* __restrict X,
               int64_t in_step, float* __restrict Y, int64_t y_ch, int64_t out_step, const float* __restrict bias) {
  V acc[RK][T][NV];
#pragma GCC unroll 4
  for (int r = 0; r < RK; ++r) {
    const float b0 = bias ? bias[r] : 0.f;
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t)
#pragma GCC unroll 4
      for (int q = 0; q < NV; ++q) acc[r][t][q] = b0 - V{};
  }
  for (int64_t e = 0; e < ne; ++e) {
    const float* xp = X + off[e];
    V w[RK];
#pragma GCC unroll 4
    for (int r = 0; r < RK; ++r) w[r] = val[e * RK + r] - V{};
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t)
#pragma GCC unroll 4
      for (int q = 0; q < NV; ++q) {
        const V xv = loadu<L>(xp + t * in_step + q * L);
#pragma GCC unroll 4
        for (int r = 0; r < RK; ++r) acc[r][t][q] += w[r] * xv;
      }
  }
#pragma GCC unroll 4
  for (int r = 0; r < RK; ++r)
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t)
#pragma GCC unroll 4
      for (int q = 0; q < NV; ++q) storeu<L>(Y + r * y_ch + t * out_step + q * L, acc[r][t][q]);
}

typedef void (*TileFn)(const int64_t*, const float*, int64_t, const float*, int64_t, float*, int64_t, int64_t,
                       const float*);

template <int RK, int NV>
TileFn tile_t(int t) {
  switch (t) {
    case 8: return &conv_tile<RK, NV, 8>;
    case 7: return &conv_tile<RK, NV, 7>;
    case 6: return &conv_tile<RK, NV, 6>;
    case 5: return &conv_tile<RK, NV, 5>;
    case 4: return &conv_tile<RK, NV, 4>;
    case 3: return &conv_tile<RK, NV, 3>;
    case 2: return &conv_tile<RK, NV, 2>;
    default: return &conv_tile<RK, NV, 1>;
  }
}
template <int RK>
TileFn tile_nv(int nv, int t) {
  switch (nv) {
    case 4: return tile_t<RK, 4>(t);
    case 3: return tile_t<RK, 3>(t);
    case 2: return tile_t<RK, 2>(t);
    default: return tile_t<RK, 1>(t);
  }
}
TileFn tile_fn(int64_t rk, int64_t nv, int64_t t) { return rk == 4 ? tile_nv<4>((int)nv, (int)t) : tile_nv<1>((int)nv, (int)t); }

// Batch vectors per tile: at most 4 and what the accumulators allow, fewer while the input rows
// one output row reads (`row_floats_per_vector` floats per batch vector) would not fit in L2.
int64_t batch_vectors(int64_t nvb, int64_t rk, int64_t row_floats_per_vector) {
  int64_t nv = std::max<int64_t>(1, std::min<int64_t>({4, nvb, kAccF / rk}));
  while (nv > 1 && row_floats_per_vector * nv * (int64_t)sizeof(float) > l2_bytes() * 3 / 4) --nv;
  return nv;
}
int64_t positions_per_tile(int64_t rk, int64_t nv) {
  return std::max<int64_t>(1, std::min<int64_t>(kMaxT, kAccF / (rk * nv)));
}

// ------------------------------------------------------------------ weight-gradient tiles
// acc[e][r] (vectors, at acc + (e * RK + r) * L) += sum over npos positions and nq batch vectors of
// dY[r * dy_ch + p * Bp + q * L] * X[off[e] + p * x_step + q * L].
template <int RK, int E>
void wgrad_tile(const float* __restrict dy, int64_t dy_ch, int64_t Bp, const float* __restrict X,
                const int64_t* __restrict off, int64_t npos, int64_t x_step, int64_t nq, float* __restrict acc) {
  V a[E][RK];
#pragma GCC unroll 8
  for (int e = 0; e < E; ++e)
#pragma GCC unroll 4
    for (int r = 0; r < RK; ++r) a[e][r] = loadu<L>(acc + (e * RK + r) * L);
  const float* xe[E];
#pragma GCC unroll 8
  for (int e = 0; e < E; ++e) xe[e] = X + off[e];
  for (int64_t p = 0; p < npos; ++p)
    for (int64_t q = 0; q < nq; ++q) {
      V d[RK];
#pragma GCC unroll 4
      for (int r = 0; r < RK; ++r) d[r] = loadu<L>(dy + r * dy_ch + p * Bp + q * L);
#pragma GCC unroll 8
      for (int e = 0; e < E; ++e) {
        const V xv = loadu<L>(xe[e] + p * x_step + q * L);
#pragma GCC unroll 4
        for (int r = 0; r < RK; ++r) a[e][r] += d[r] * xv;
      }
    }
#pragma GCC unroll 8
  for (int e = 0; e < E; ++e)
#pragma GCC unroll 4
    for (int r = 0; r < RK; ++r) storeu<L>(acc + (e * RK + r) * L, a[e][r]);
}

typedef void (*WTileFn)(const float*, int64_t, int64_t, const float*, const int64_t*, int64_t, int64_t, int64_t,
                        float*);
constexpr int kWE1 = kVRegs >= 32 ? 8 : 6;  // entries per weight-grad tile, one channel
constexpr int kWE4 = kVRegs >= 32 ? 4 : 2;  // entries per weight-grad tile, four channels

template <int RK>
WTileFn wtile_e(int e) {
  switch (e) {
    case 8: return &wgrad_tile<RK, 8>;
    case 7: return &wgrad_tile<RK, 7>;
    case 6: return &wgrad_tile<RK, 6>;
    case 5: return &wgrad_tile<RK, 5>;
    case 4: return &wgrad_tile<RK, 4>;
    case 3: return &wgrad_tile<RK, 3>;
    case 2: return &wgrad_tile<RK, 2>;
    default: return &wgrad_tile<RK, 1>;
  }
}

static inline float hsum_lanes(const float* v) {
  float s = 0.f;
  for (int l = 0; l < L; ++l) s += v[l];
  return s;
}

// ------------------------------------------------------------------ geometry and checks
struct Geometry {
  int64_t N, IC, H, W, OC, KH, KW, SH, SW, PH, PW, OH, OW, Bp;
};

Geometry geometry(const torch::Tensor& x, int64_t oc, at::IntArrayRef kernel, at::IntArrayRef stride,
                  at::IntArrayRef padding) {
  TORCH_CHECK_VALUE(kernel.size() == 2 && stride.size() == 2 && padding.size() == 2,
                    "kernel, stride and padding must be pairs (h, w)");
  Geometry g{};
  g.N = x.size(0), g.IC = x.size(1), g.H = x.size(2), g.W = x.size(3), g.OC = oc;
  g.KH = kernel[0], g.KW = kernel[1], g.SH = stride[0], g.SW = stride[1], g.PH = padding[0], g.PW = padding[1];
  TORCH_CHECK_VALUE(g.KH >= 1 && g.KW >= 1, "kernel sizes must be at least 1, got ", kernel);
  TORCH_CHECK_VALUE(g.SH >= 1 && g.SW >= 1, "strides must be at least 1, got ", stride);
  TORCH_CHECK_VALUE(g.PH >= 0 && g.PW >= 0, "padding must be non-negative, got ", padding);
  g.OH = (g.H + 2 * g.PH - g.KH) / g.SH + 1;
  g.OW = (g.W + 2 * g.PW - g.KW) / g.SW + 1;
  TORCH_CHECK_VALUE(g.H + 2 * g.PH >= g.KH && g.W + 2 * g.PW >= g.KW, "input ", g.H, "x", g.W, " with padding ",
                    padding, " is smaller than the kernel ", kernel);
  g.Bp = (g.N + L - 1) / L * L;
  return g;
}

torch::Tensor check_input(const char* name, const torch::Tensor& t) {
  TORCH_CHECK_VALUE(t.device().is_cpu(), name, " must be on the CPU, got device ", t.device());
  TORCH_CHECK_VALUE(t.scalar_type() == torch::kFloat, name, " must be float32, got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.layout() == torch::kStrided, name, " must be a dense (strided) tensor");
  TORCH_CHECK_VALUE(t.dim() == 4, name, " must be 4-D (n, channels, h, w), got shape ", t.sizes());
  return t;
}

torch::Tensor as_long_index(const char* name, const torch::Tensor& t) {
  TORCH_CHECK_VALUE(t.device().is_cpu(), name, " must be on the CPU, got device ", t.device());
  const auto st = t.scalar_type();
  TORCH_CHECK_VALUE(st == torch::kShort || st == torch::kInt || st == torch::kLong, name,
                    " must be int16, int32 or int64, got ", st);
  TORCH_CHECK_VALUE(t.dim() == 1, name, " must be 1-D, got shape ", t.sizes());
  return t.to(torch::kLong).contiguous();
}

// The structure and values, checked against the input: returns the entry lists.
Entries check_weight(const torch::Tensor& values, const torch::Tensor& row_ptr_in, const torch::Tensor& col_in,
                     at::IntArrayRef block, int64_t in_ch, at::IntArrayRef kernel) {
  TORCH_CHECK_VALUE(block.size() == 2 && block[0] >= 1 && block[1] >= 1, "block must be a pair (R, C) of positive sizes, got ",
                    block);
  const int64_t R = block[0], Cb = block[1];
  auto row_ptr = as_long_index("row_ptr", row_ptr_in);
  auto col = as_long_index("col", col_in);
  const int64_t K = in_ch * kernel[0] * kernel[1];
  TORCH_CHECK_VALUE(K % Cb == 0, "the weight's ", K, " columns (in_channels * kh * kw) are not a whole number of ", Cb,
                    "-column blocks");
  check_compressed<int64_t>("row_ptr", row_ptr, "col", col, K / Cb);
  TORCH_CHECK_VALUE(values.device().is_cpu() && values.scalar_type() == torch::kFloat,
                    "values must be float32 on the CPU, got ", values.scalar_type(), " on ", values.device());
  const int64_t nnz = col.size(0);
  if (values.dim() == 1 && R == 1 && Cb == 1) {  // CSR; BSR with 1x1 blocks keeps its (nnzb, 1, 1)
    TORCH_CHECK_VALUE(values.dim() == 1 && values.size(0) == nnz, "values must have shape (", nnz,
                      ",) (one per col entry), got ", values.sizes());
  } else {
    TORCH_CHECK_VALUE(values.dim() == 3 && values.size(0) == nnz && values.size(1) == R && values.size(2) == Cb,
                      "values must have shape (", nnz, ", ", R, ", ", Cb, ") (one block per col entry), got ",
                      values.sizes());
  }
  return entries_of(row_ptr, col, R, Cb);
}

// Per entry: its offset into a packed input (strides sc, sr, sp of channel, row, position).
std::vector<int64_t> offsets(const Entries& E, int64_t KH, int64_t KW, int64_t sc, int64_t sr, int64_t sp) {
  std::vector<int64_t> off(E.col.size());
  const int64_t kk = KH * KW;
  for (size_t e = 0; e < off.size(); ++e) {
    const int64_t j = E.col[e], c = j / kk, i = (j % kk) / KW, w = j % KW;
    off[e] = c * sc + i * sr + w * sp;
  }
  return off;
}

std::vector<float> packed_values(const Entries& E, const torch::Tensor& values) {
  auto v = values.contiguous();
  const float* vp = v.data_ptr<float>();
  std::vector<float> pv(E.nelem);
  for (int64_t k = 0; k < E.nelem; ++k) pv[k] = vp[E.vidx[k]];
  return pv;
}

// Contiguous ranges of groups with about equal kept elements: the units the threads share.
std::vector<int64_t> balanced_groups(const Entries& E, int64_t parts) {
  parts = std::max<int64_t>(1, std::min<int64_t>(parts, E.groups));
  std::vector<int64_t> cut{0};
  for (int64_t p = 1; p < parts; ++p) {
    const int64_t target = E.nelem * p / parts;
    int64_t g = cut.back();
    while (g < E.groups && E.ebase[g] < target) ++g;
    if (g > cut.back() && g < E.groups) cut.push_back(g);
  }
  cut.push_back(E.groups);
  return cut;
}

// ------------------------------------------------------------------ forward
// A tile buffer's results, buf[c][t][lane] (channel stride ch_stride, position stride t_stride),
// written into out[n, c0 + c, h, w0 + t * w_step] (4-D, any strides) for images [n0, n1): along
// whichever of channels or positions is contiguous in out, so every store run is contiguous.
struct Out4 {
  float* p;
  int64_t sn, sc, sh, sw;
};
// The L x L block r[i][k] -> r[k][i] in registers: log2(L) butterfly stages, each swapping the
// off-diagonal sub-blocks of one size.
typedef int VI __attribute__((vector_size(sizeof(V))));
template <int STEP>
static inline void transpose_stage(V* r) {
  VI lo, hi;
  for (int k = 0; k < L; ++k) {
    lo[k] = (k & STEP) ? L + k - STEP : k;
    hi[k] = (k & STEP) ? L + k : k + STEP;
  }
#pragma GCC unroll 16
  for (int i = 0; i < L; ++i) {
    if (i & STEP) continue;
    const V a = r[i], b = r[i + STEP];
    r[i] = __builtin_shuffle(a, b, lo);
    r[i + STEP] = __builtin_shuffle(a, b, hi);
  }
}
static inline void transpose_block(V* r) {
  transpose_stage<1>(r);
  transpose_stage<2>(r);
  if constexpr (L >= 8) transpose_stage<4>(r);
  if constexpr (L >= 16) transpose_stage<8>(r);
}

static inline void write_tile(const float* buf, int64_t nc, int64_t nt, int64_t ch_stride, int64_t t_stride,
                              const Out4& o, int64_t n0, int64_t n1, int64_t c0, int64_t h, int64_t w0,
                              int64_t w_step) {
  if (o.sc == 1) {
    // channels contiguous: L images x L channels at a time through a register transpose, each
    // image's L channels one contiguous store; the ragged edges element by element
    const int64_t nfull = (n1 - n0) / L * L, cfull = nc / L * L;
    for (int64_t t = 0; t < nt; ++t) {
      float* base = o.p + c0 + h * o.sh + (w0 + t * w_step) * o.sw;
      const float* bt = buf + t * t_stride;
      for (int64_t nb = 0; nb < nfull; nb += L)
        for (int64_t cb = 0; cb < cfull; cb += L) {
          V r[L];
#pragma GCC unroll 16
          for (int i = 0; i < L; ++i) r[i] = loadu<L>(bt + (cb + i) * ch_stride + nb);
          transpose_block(r);
#pragma GCC unroll 16
          for (int k = 0; k < L; ++k) storeu<L>(base + (n0 + nb + k) * o.sn + cb, r[k]);
        }
      for (int64_t n = n0; n < n1; ++n) {
        const int64_t cstart = (n - n0) < nfull ? cfull : 0;
        float* dst = base + n * o.sn;
        const float* src = bt + (n - n0);
        for (int64_t c = cstart; c < nc; ++c) dst[c] = src[c * ch_stride];
      }
    }
  } else {
    const int64_t ws = w_step * o.sw;
    for (int64_t n = n0; n < n1; ++n)
      for (int64_t c = 0; c < nc; ++c) {
        float* dst = o.p + n * o.sn + (c0 + c) * o.sc + h * o.sh + w0 * o.sw;
        const float* src = buf + c * ch_stride + (n - n0);
        for (int64_t t = 0; t < nt; ++t) dst[t * ws] = src[t * t_stride];
      }
  }
}

constexpr int64_t kChannelBlock = 16;  // output channels written out together (one 64-byte line per position)

// y (n, out, oh, ow), channels-last in memory (what the ReLU and pooling after a conv run fastest on).
torch::Tensor forward_impl(const torch::Tensor& x, const Entries& E, const std::vector<float>& pv,
                           const float* bias, const Geometry& g) {
  const Packed X = pack(x, g.H + 2 * g.PH, g.W + 2 * g.PW, g.Bp, g.PH, g.PW);
  const int64_t sp = g.Bp, sr = X.sr(), sc = X.sc();
  const auto off = offsets(E, g.KH, g.KW, sc, sr, sp);
  auto Y = torch::empty({g.N, g.OC, g.OH, g.OW}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  const Out4 out{Y.data_ptr<float>(), Y.stride(0), Y.stride(1), Y.stride(2), Y.stride(3)};
  const int64_t nvb = g.Bp / L, RK = E.RK;
  const int64_t nv = batch_vectors(nvb, RK, g.KH * g.IC * X.Wp * L);
  const int64_t T = positions_per_tile(RK, nv);
  const int64_t GB = std::max<int64_t>(1, kChannelBlock / E.R);  // groups per channel block
  // work item: (output row, group range); rows outer so one row's input stays in L2 across groups
  const int64_t nthr = std::max(1, at::get_num_threads());
  const auto cut = balanced_groups(E, std::max<int64_t>(1, (4 * nthr + g.OH - 1) / g.OH));
  const int64_t parts = (int64_t)cut.size() - 1;
  const float* xd = X.data();
  par_chunks(g.OH * parts, 1, [&](int64_t b, int64_t e) {
    std::vector<float> bufv((size_t)GB * E.R * kMaxT * 4 * L + 16);
    float* buf = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(bufv.data()) + 63) & ~(uintptr_t)63);
    for (int64_t item = b; item < e; ++item) {
      const int64_t oh = item / parts, part = item % parts;
      for (int64_t q0 = 0; q0 < nvb; q0 += nv) {
        const int64_t nq = std::min(nv, nvb - q0), n0 = q0 * L, n1 = std::min(g.N, (q0 + nq) * L);
        for (int64_t gb = cut[part]; gb < cut[part + 1]; gb += GB) {
          const int64_t ge = std::min(cut[part + 1], gb + GB);
          for (int64_t ow0 = 0; ow0 < g.OW; ow0 += T) {
            const int64_t nt = std::min(T, g.OW - ow0), ych = nt * nq * L;
            for (int64_t grp = gb; grp < ge; ++grp) {
              const int64_t ne = E.gp[grp + 1] - E.gp[grp];
              for (int64_t s = 0; s < E.R / RK; ++s) {
                const int64_t oc0 = grp * E.R + s * RK;
                tile_fn(RK, nq, nt)(off.data() + E.gp[grp], pv.data() + E.ebase[grp] + s * ne * RK, ne,
                                    xd + oh * g.SH * sr + ow0 * g.SW * sp + n0, g.SW * sp,
                                    buf + (oc0 - gb * E.R) * ych, ych, nq * L, bias ? bias + oc0 : nullptr);
              }
            }
            write_tile(buf, (ge - gb) * E.R, nt, ych, nq * L, out, n0, n1, gb * E.R, oh, ow0, 1);
          }
        }
      }
    }
  });
  return Y;
}

// ------------------------------------------------------------------ backward
// dY packed for the gather: top/left padding so that every (row of dX's phase grid + entry shift)
// lands inside, zeros where dY has no position.
struct DyLayout {
  int64_t top, left, Hp, Wp;
};
DyLayout dy_layout(const Geometry& g) {
  auto pad = [](int64_t k, int64_t p, int64_t s) { return std::max<int64_t>(0, (k - 1 - p + s - 1) / s); };
  DyLayout d{};
  d.top = pad(g.KH, g.PH, g.SH), d.left = pad(g.KW, g.PW, g.SW);
  d.Hp = d.top + std::max(g.OH, (g.H + g.PH) / g.SH + 1);
  d.Wp = d.left + std::max(g.OW, (g.W + g.PW) / g.SW + 1);
  return d;
}

// dx (n, in, h, w) in ``format`` (the input's own memory format).
torch::Tensor input_grad_impl(const Packed& DY, const DyLayout& dl, const Entries& E, const std::vector<float>& pv,
                              const Geometry& g, const torch::TensorOptions& opts, at::MemoryFormat format) {
  // the transposed entries, one list per (input channel, phase): counting sort by key
  const int64_t ph_count = g.SH * g.SW, keys = g.IC * ph_count, kk = g.KH * g.KW;
  const int64_t sp = g.Bp, sr = DY.sr(), sc = DY.sc();
  std::vector<int64_t> kp(keys + 1, 0);
  struct Elem { int64_t key, off; float v; };
  std::vector<Elem> elems;
  elems.reserve(E.nelem);
  for (int64_t grp = 0; grp < E.groups; ++grp) {
    const int64_t ne = E.gp[grp + 1] - E.gp[grp];
    for (int64_t e = 0; e < ne; ++e) {
      const int64_t j = E.col[E.gp[grp] + e], c = j / kk, i = (j % kk) / g.KW, w = j % g.KW;
      const int64_t rh = ((i - g.PH) % g.SH + g.SH) % g.SH, rw = ((w - g.PW) % g.SW + g.SW) % g.SW;
      const int64_t dh = (rh + g.PH - i) / g.SH + dl.top, dw = (rw + g.PW - w) / g.SW + dl.left;
      const int64_t key = c * ph_count + rh * g.SW + rw;
      for (int64_t r = 0; r < E.R; ++r) {
        const int64_t s = r / E.RK, rk = r % E.RK, oc = grp * E.R + r;
        elems.push_back({key, oc * sc + dh * sr + dw * sp, pv[E.ebase[grp] + s * ne * E.RK + e * E.RK + rk]});
        ++kp[key + 1];
      }
    }
  }
  for (int64_t k = 0; k < keys; ++k) kp[k + 1] += kp[k];
  std::vector<int64_t> toff(elems.size());
  std::vector<float> tval(elems.size());
  {
    std::vector<int64_t> fill(kp.begin(), kp.end() - 1);
    for (const auto& el : elems) {
      const int64_t at = fill[el.key]++;
      toff[at] = el.off, tval[at] = el.v;
    }
  }
  elems.clear();
  elems.shrink_to_fit();
  auto DX = torch::empty({g.N, g.IC, g.H, g.W}, opts.memory_format(format));
  const Out4 out{DX.data_ptr<float>(), DX.stride(0), DX.stride(1), DX.stride(2), DX.stride(3)};
  const int64_t nvb = g.Bp / L;
  const int64_t nv = batch_vectors(nvb, 1, g.KH * g.OC * DY.Wp * L / g.SH);
  const int64_t T = positions_per_tile(1, nv);
  const int64_t rows_per_phase = (g.H + g.SH - 1) / g.SH;
  // work item: (phase, row of the phase's grid, input-channel range)
  const int64_t nthr = std::max(1, at::get_num_threads());
  const int64_t parts = std::max<int64_t>(1, std::min<int64_t>((g.IC + kChannelBlock - 1) / kChannelBlock,
                                                               (4 * nthr + ph_count * rows_per_phase - 1) /
                                                                   (ph_count * rows_per_phase)));
  const float* dyd = DY.data();
  par_chunks(ph_count * rows_per_phase * parts, 1, [&](int64_t b, int64_t e) {
    alignas(64) float buf[kChannelBlock * kMaxT * 4 * kMaxLanes];
    for (int64_t item = b; item < e; ++item) {
      const int64_t part = item % parts, rest = item / parts;
      const int64_t u = rest % rows_per_phase, phase = rest / rows_per_phase;
      const int64_t rh = phase / g.SW, rw = phase % g.SW;
      const int64_t ih = u * g.SH + rh;
      if (ih >= g.H) continue;
      const int64_t ncols = (g.W - rw + g.SW - 1) / g.SW;  // positions of this phase in a row
      if (ncols <= 0) continue;
      const int64_t c_begin = part * g.IC / parts, c_end = (part + 1) * g.IC / parts;
      for (int64_t q0 = 0; q0 < nvb; q0 += nv) {
        const int64_t nq = std::min(nv, nvb - q0), n0 = q0 * L, n1 = std::min(g.N, (q0 + nq) * L);
        for (int64_t cb = c_begin; cb < c_end; cb += kChannelBlock) {
          const int64_t ce = std::min(c_end, cb + kChannelBlock);
          for (int64_t v0 = 0; v0 < ncols; v0 += T) {
            const int64_t nt = std::min(T, ncols - v0), ych = nt * nq * L;
            for (int64_t c = cb; c < ce; ++c) {
              const int64_t key = c * ph_count + phase, k0 = kp[key], ne = kp[key + 1] - k0;
              tile_fn(1, nq, nt)(toff.data() + k0, tval.data() + k0, ne, dyd + u * sr + v0 * sp + n0, sp,
                                 buf + (c - cb) * ych, 0, nq * L, nullptr);
            }
            write_tile(buf, ce - cb, nt, ych, nq * L, out, n0, n1, cb, ih, v0 * g.SW + rw, g.SW);
          }
        }
      }
    }
  });
  return DX;
}

torch::Tensor weight_grad_impl(const Packed& DY, const DyLayout& dl, const Packed& X, const Entries& E,
                               const Geometry& g, const torch::Tensor& values) {
  const int64_t sp = g.Bp, xr = X.sr(), xc = X.sc();
  const auto off = offsets(E, g.KH, g.KW, xc, xr, sp);
  const int64_t dsr = DY.sr(), dsc = DY.sc();
  const int64_t nvb = g.Bp / L, RK = E.RK;
  // batch vectors per pass: the input rows of one output row, for every input channel, in L2
  int64_t nq = nvb;
  while (nq > 1 && g.KH * g.IC * X.Wp * L * nq * (int64_t)sizeof(float) > l2_bytes() * 3 / 4) nq = (nq + 1) / 2;
  const int64_t EW = RK == 4 ? kWE4 : kWE1;
  const int64_t nthr = std::max(1, at::get_num_threads());
  const auto cut = balanced_groups(E, 2 * nthr);
  const int64_t parts = (int64_t)cut.size() - 1;
  std::vector<float> grad(E.nelem, 0.f);
  const float* xd = X.data();
  const float* dyd = DY.data();
  par_chunks(parts, 1, [&](int64_t b, int64_t e) {
    for (int64_t part = b; part < e; ++part) {
      const int64_t e0 = E.ebase[cut[part]], e1 = E.ebase[cut[part + 1]];
      std::vector<float> accbuf((size_t)(e1 - e0) * L + 16, 0.f);
      float* acc = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(accbuf.data()) + 63) & ~(uintptr_t)63);
      for (int64_t q0 = 0; q0 < nvb; q0 += nq) {
        const int64_t nqq = std::min(nq, nvb - q0);
        for (int64_t oh = 0; oh < g.OH; ++oh) {
          for (int64_t grp = cut[part]; grp < cut[part + 1]; ++grp) {
            const int64_t ne = E.gp[grp + 1] - E.gp[grp];
            for (int64_t s = 0; s < E.R / RK; ++s) {
              const int64_t oc0 = grp * E.R + s * RK;
              const float* dy = dyd + oc0 * dsc + (oh + dl.top) * dsr + dl.left * sp + q0 * L;
              float* a = acc + (E.ebase[grp] + s * ne * RK - e0) * L;
              for (int64_t k = 0; k < ne; k += EW) {
                const int64_t ke = std::min(EW, ne - k);
                auto fn = RK == 4 ? wtile_e<4>((int)ke) : wtile_e<1>((int)ke);
                fn(dy, dsc, g.Bp, xd + oh * g.SH * xr + q0 * L, off.data() + E.gp[grp] + k, g.OW, g.SW * sp, nqq,
                   a + k * RK * L);
              }
            }
          }
        }
      }
      for (int64_t k = e0; k < e1; ++k) grad[k] = hsum_lanes(acc + (k - e0) * L);
    }
  });
  auto dvalues = torch::empty(values.sizes(), values.options());
  float* dv = dvalues.data_ptr<float>();
  for (int64_t k = 0; k < E.nelem; ++k) dv[E.vidx[k]] = grad[k];
  return dvalues;
}

}  // namespace

// y (n, out, oh, ow) = conv2d(x, W) + bias for W (out, in, kh, kw) stored as CSR (block (1, 1):
// values (nnz)) or BSR (block (R, C): values (nnzb, R, C)) over the (out, in*kh*kw) matrix.
torch::Tensor sparse_conv2d_forward(const torch::Tensor& x_in, const torch::Tensor& values,
                                    const std::optional<torch::Tensor>& bias_in, const torch::Tensor& row_ptr,
                                    const torch::Tensor& col, at::IntArrayRef block, at::IntArrayRef kernel,
                                    at::IntArrayRef stride, at::IntArrayRef padding) {
  const auto& x = check_input("x", x_in);
  const Entries E = check_weight(values, row_ptr, col, block, x.size(1), kernel);
  const Geometry g = geometry(x, E.groups * E.R, kernel, stride, padding);
  torch::Tensor bias;
  if (bias_in.has_value()) {
    bias = bias_in->contiguous();
    TORCH_CHECK_VALUE(bias.scalar_type() == torch::kFloat && bias.device().is_cpu(), "bias must be float32 on the CPU");
    TORCH_CHECK_VALUE(bias.dim() == 1 && bias.size(0) == g.OC, "bias must have shape (", g.OC, ",), got ", bias.sizes());
  }
  if (g.N == 0 || g.OC == 0)
    return torch::zeros({g.N, g.OC, g.OH, g.OW}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  const auto pv = packed_values(E, values);
  return forward_impl(x, E, pv, bias.defined() ? bias.data_ptr<float>() : nullptr, g);
}

// (dx, dvalues) of sparse_conv2d_forward for the output gradient dy; each only where asked (an
// empty (0,) tensor otherwise).
std::tuple<torch::Tensor, torch::Tensor> sparse_conv2d_backward(
    const torch::Tensor& dy_in, const torch::Tensor& x_in, const torch::Tensor& values, const torch::Tensor& row_ptr,
    const torch::Tensor& col, at::IntArrayRef block, at::IntArrayRef kernel, at::IntArrayRef stride,
    at::IntArrayRef padding, bool need_x, bool need_w) {
  const auto& x = check_input("x", x_in);
  const auto& dy = check_input("dy", dy_in);
  const Entries E = check_weight(values, row_ptr, col, block, x.size(1), kernel);
  const Geometry g = geometry(x, E.groups * E.R, kernel, stride, padding);
  TORCH_CHECK_VALUE(dy.size(0) == g.N && dy.size(1) == g.OC && dy.size(2) == g.OH && dy.size(3) == g.OW,
                    "dy must have shape (", g.N, ", ", g.OC, ", ", g.OH, ", ", g.OW, "), got ", dy.sizes());
  torch::Tensor dx = x.new_empty({0}), dvalues = x.new_empty({0});
  if (!need_x && !need_w) return {dx, dvalues};
  if (g.N == 0 || E.nelem == 0) {
    if (need_x) dx = torch::zeros({g.N, g.IC, g.H, g.W}, x.options().memory_format(x.suggest_memory_format()));
    if (need_w) dvalues = torch::zeros(values.sizes(), values.options());
    return {dx, dvalues};
  }
  const DyLayout dl = dy_layout(g);
  const Packed DY = pack(dy, dl.Hp, dl.Wp, g.Bp, dl.top, dl.left);
  if (need_w) {  // first, so the packed input is freed before dx is allocated: a lower peak
    const Packed X = pack(x, g.H + 2 * g.PH, g.W + 2 * g.PW, g.Bp, g.PH, g.PW);
    dvalues = weight_grad_impl(DY, dl, X, E, g, values);
  }
  if (need_x) dx = input_grad_impl(DY, dl, E, packed_values(E, values), g, x.options(), x.suggest_memory_format());
  return {dx, dvalues};
}

// The training op: its backward (sparsebench/kernels/ops.py) is sparse_conv2d_backward.
torch::Tensor sparse_conv2d(const torch::Tensor& x, const torch::Tensor& values,
                            const std::optional<torch::Tensor>& bias, const torch::Tensor& row_ptr,
                            const torch::Tensor& col, at::IntArrayRef block, at::IntArrayRef kernel,
                            at::IntArrayRef stride, at::IntArrayRef padding) {
  return sparse_conv2d_forward(x, values, bias, row_ptr, col, block, kernel, stride, padding);
}

}  // namespace sparsebench
