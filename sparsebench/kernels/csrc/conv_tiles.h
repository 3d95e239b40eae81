// What both direct sparse conv paths share (conv.cpp vectorises over the batch, conv_width.cpp
// over the output width): the weight as entry lists, the register tiles, geometry and checks.
// Included by one translation unit each; everything is in an anonymous namespace.
#pragma once

#include "common.h"

#include <vector>

namespace sparsebench {
namespace {

// the vector width in floats; a translation unit may set a narrower one (SB_CONV_LANES) before including
#ifndef SB_CONV_LANES
#define SB_CONV_LANES kMaxLanes
#endif
constexpr int L = SB_CONV_LANES;
static_assert(L <= kMaxLanes && (L == 4 || L == 8 || L == 16), "SB_CONV_LANES: 4, 8 or 16, at most the ISA's");
typedef typename VecT<L>::type V;
constexpr int kAccF = kVRegs >= 32 ? 24 : 12;  // accumulator vectors of a forward / input-grad tile
constexpr int kMaxT = 8;                        // output positions per tile

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


// The input gradient's gather lists: the weight transposed into one list per (input channel, phase
// of the input position modulo the stride), counting-sorted by key c * SH * SW + rh * SW + rw. Each
// element: its offset into the packed dY (channel, row and position strides sc, sr, sp; dY shifted
// by `top` rows and `left` positions, so every offset is non-negative) and its weight.
struct Transposed {
  std::vector<int64_t> kp;   // keys + 1: each key's range
  std::vector<int64_t> off;
  std::vector<float> val;
};
Transposed transposed_entries(const Entries& E, const std::vector<float>& pv, const Geometry& g, int64_t top,
                              int64_t left, int64_t sc, int64_t sr, int64_t sp) {
  const int64_t ph_count = g.SH * g.SW, keys = g.IC * ph_count, kk = g.KH * g.KW;
  Transposed T;
  T.kp.assign(keys + 1, 0);
  struct Elem { int64_t key, off; float v; };
  std::vector<Elem> elems;
  elems.reserve(E.nelem);
  for (int64_t grp = 0; grp < E.groups; ++grp) {
    const int64_t ne = E.gp[grp + 1] - E.gp[grp];
    for (int64_t e = 0; e < ne; ++e) {
      const int64_t j = E.col[E.gp[grp] + e], c = j / kk, i = (j % kk) / g.KW, w = j % g.KW;
      const int64_t rh = ((i - g.PH) % g.SH + g.SH) % g.SH, rw = ((w - g.PW) % g.SW + g.SW) % g.SW;
      const int64_t dh = (rh + g.PH - i) / g.SH + top, dw = (rw + g.PW - w) / g.SW + left;
      const int64_t key = c * ph_count + rh * g.SW + rw;
      for (int64_t r = 0; r < E.R; ++r) {
        const int64_t s = r / E.RK, rk = r % E.RK, oc = grp * E.R + r;
        elems.push_back({key, oc * sc + dh * sr + dw * sp, pv[E.ebase[grp] + s * ne * E.RK + e * E.RK + rk]});
        ++T.kp[key + 1];
      }
    }
  }
  for (int64_t k = 0; k < keys; ++k) T.kp[k + 1] += T.kp[k];
  T.off.resize(elems.size());
  T.val.resize(elems.size());
  std::vector<int64_t> fill(T.kp.begin(), T.kp.end() - 1);
  for (const auto& el : elems) {
    const int64_t at = fill[el.key]++;
    T.off[at] = el.off, T.val[at] = el.v;
  }
  return T;
}

// A bias argument, checked: float32 on the CPU, one per output channel (undefined where none).
torch::Tensor checked_bias(const std::optional<torch::Tensor>& bias_in, int64_t oc) {
  if (!bias_in.has_value()) return torch::Tensor();
  auto bias = bias_in->contiguous();
  TORCH_CHECK_VALUE(bias.scalar_type() == torch::kFloat && bias.device().is_cpu(), "bias must be float32 on the CPU");
  TORCH_CHECK_VALUE(bias.dim() == 1 && bias.size(0) == oc, "bias must have shape (", oc, ",), got ", bias.sizes());
  return bias;
}

}  // namespace
}  // namespace sparsebench
