// Direct sparse 2-D convolution training kernels vectorised over the output width: the forward,
// input gradient and weight gradient of conv.cpp, for the shapes where conv.cpp's batch vectors are
// mostly padding (a small batch) and the rows are long (a large image). Which of the two a layer
// uses is measured per layer and input shape (sparsebench/representations/conv_paths.py).
//
// Activations are packed per image with rows outermost and the width innermost, the width split by
// its phase modulo the stride: (N, Hp, C, S, Wq), so the input under L consecutive output positions
// of a row, for one kept entry (c, i, j), is one contiguous vector at any stride. The register
// tiles of conv_tiles.h then hold T output rows x NV width vectors x RK output channels.
//   forward      Y[n, o, oh, ow..]  = bias[o] + sum_(c,i,j) W[o, c, i, j] X[n, c, oh*sh + i - ph, ow..*sw + j - pw]
//   input grad   dX[n, c, u*sh + rh, v..*sw + rw] = sum over the phase's transposed entries of
//                W[o, c, i, j] dY[n, o, u + dh, v.. + dw] (as in conv.cpp: each phase of the stride
//                is a stride-1 correlation on the padded dY)
//   weight grad  dW[o, c, i, j] = sum_(n, oh) <dY[n, o, oh, ..], X[n, c, oh*sh + i - ph, ..*sw + j - pw]>,
//                the lanes summed once at the end
// Outputs are NCHW contiguous, the width innermost as the kernels compute it.
#ifndef SB_WIDTH_ENTRY
// the ISA's own vector width; in the avx512 build rows of at most 8 output columns go to the 8-lane
// build of this file (conv_width_narrow.cpp), where a 16-lane vector would be half empty or worse
#define SB_WIDTH_ENTRY(name) name
#if defined(__AVX512F__)
#define SB_WIDTH_SENDS_NARROW_ROWS 1
#else
#define SB_WIDTH_SENDS_NARROW_ROWS 0
#endif
#endif
#include "conv_tiles.h"

namespace sparsebench {
namespace {

// ------------------------------------------------------------------ packing
// (N, Hp, C, S, Wq): image, padded row, channel, column phase modulo the stride S, column / S.
struct WPacked {
  torch::Tensor t;
  int64_t C, Hp, S, Wq;
  int64_t sc() const { return S * Wq; }
  int64_t sr() const { return C * S * Wq; }
  int64_t si() const { return Hp * C * S * Wq; }
  const float* data() const { return t.data_ptr<float>(); }
};

// dst[n, h + top, c, (w + left) % S, (w + left) / S] = src[n, c, h, w] (src any strides), zeros elsewhere.
WPacked pack_width(const torch::Tensor& src, int64_t Hp, int64_t S, int64_t Wq, int64_t top, int64_t left) {
  const int64_t N = src.size(0), C = src.size(1), H = src.size(2), W = src.size(3);
  TORCH_CHECK(top >= 0 && left >= 0 && top + H <= Hp && (left + W + S - 1) / S <= Wq, "pack_width: bad geometry");
  WPacked p{torch::zeros({N, Hp, C, S, Wq}, src.options()), C, Hp, S, Wq};
  for (int64_t ph = 0; ph < S; ++ph) {
    const int64_t w0 = ((ph - left) % S + S) % S;  // the first input column in this phase
    if (w0 >= W) continue;
    const int64_t count = (W - w0 + S - 1) / S, q0 = (w0 + left) / S;
    p.t.select(3, ph).narrow(1, top, H).narrow(3, q0, count).copy_(src.slice(3, w0, W, S).permute({0, 2, 1, 3}));
  }
  return p;
}

// Per entry: its offset into an image of the packed input.
std::vector<int64_t> width_offsets(const Entries& E, const Geometry& g, const WPacked& X) {
  std::vector<int64_t> off(E.col.size());
  const int64_t kk = g.KH * g.KW;
  for (size_t e = 0; e < off.size(); ++e) {
    const int64_t j = E.col[e], c = j / kk, i = (j % kk) / g.KW, w = j % g.KW;
    off[e] = c * X.sc() + i * X.sr() + (w % X.S) * X.Wq + w / X.S;
  }
  return off;
}

int64_t width_vectors(const Geometry& g) { return (g.OW + L - 1) / L; }

WPacked pack_input(const torch::Tensor& x, const Geometry& g) {
  const int64_t Wq = std::max((g.W + 2 * g.PW + g.SW - 1) / g.SW, width_vectors(g) * L + (g.KW - 1) / g.SW);
  return pack_width(x, g.H + 2 * g.PH, g.SW, Wq, g.PH, g.PW);
}

// ------------------------------------------------------------------ forward
torch::Tensor forward_impl(const torch::Tensor& x, const Entries& E, const std::vector<float>& pv,
                           const float* bias, const Geometry& g) {
  const WPacked X = pack_input(x, g);
  const auto off = width_offsets(E, g, X);
  auto Y = torch::empty({g.N, g.OC, g.OH, g.OW}, x.options());
  float* yd = Y.data_ptr<float>();
  const int64_t RK = E.RK, nvw = width_vectors(g);
  const int64_t nv = std::max<int64_t>(1, std::min<int64_t>({4, nvw, kAccF / RK}));
  const int64_t T = positions_per_tile(RK, nv), sr = X.sr();
  // work item: (image, group range); the rows of a tile are read from L1/L2 by every group
  const int64_t nthr = std::max(1, at::get_num_threads());
  const auto cut = balanced_groups(E, std::max<int64_t>(1, (4 * nthr + g.N - 1) / g.N));
  const int64_t parts = (int64_t)cut.size() - 1;
  par_chunks(g.N * parts, 1, [&](int64_t b, int64_t e) {
    std::vector<float> buf((size_t)kAccF * L);
    for (int64_t item = b; item < e; ++item) {
      const int64_t n = item / parts, part = item % parts;
      const float* xn = X.data() + n * X.si();
      for (int64_t oh0 = 0; oh0 < g.OH; oh0 += T) {
        const int64_t nt = std::min(T, g.OH - oh0);
        for (int64_t q0 = 0; q0 < nvw; q0 += nv) {
          const int64_t nq = std::min(nv, nvw - q0), width = std::min(nq * L, g.OW - q0 * L), ych = nt * nq * L;
          for (int64_t grp = cut[part]; grp < cut[part + 1]; ++grp) {
            const int64_t ne = E.gp[grp + 1] - E.gp[grp];
            for (int64_t s = 0; s < E.R / RK; ++s) {
              const int64_t oc0 = grp * E.R + s * RK;
              tile_fn(RK, nq, nt)(off.data() + E.gp[grp], pv.data() + E.ebase[grp] + s * ne * RK, ne,
                                  xn + oh0 * g.SH * sr + q0 * L, g.SH * sr, buf.data(), ych, nq * L,
                                  bias ? bias + oc0 : nullptr);
              for (int64_t r = 0; r < RK; ++r)
                for (int64_t t = 0; t < nt; ++t)
                  std::memcpy(yd + ((n * g.OC + oc0 + r) * g.OH + oh0 + t) * g.OW + q0 * L,
                              buf.data() + r * ych + t * nq * L, width * sizeof(float));
            }
          }
        }
      }
    }
  });
  return Y;
}

// ------------------------------------------------------------------ backward
// dY packed as (N, Hd, OC, Wd), the width innermost, shifted by (top, left) so that every row and
// column an input-gradient phase reads (u + dh, v + dw) lies inside, zeros where dY has none; the
// weight gradient reads the same packing, its rows at top and columns from left, zero past OW.
struct WDy {
  torch::Tensor t;
  int64_t top, left, Hd, OC, Wd;
  int64_t sc() const { return Wd; }
  int64_t sr() const { return OC * Wd; }
  int64_t si() const { return Hd * OC * Wd; }
  const float* data() const { return t.data_ptr<float>(); }
};

WDy pack_dy(const torch::Tensor& dy, const Geometry& g) {
  auto pad = [](int64_t k, int64_t p, int64_t s) { return std::max<int64_t>(0, (k - 1 - p + s - 1) / s); };
  WDy d{};
  d.top = pad(g.KH, g.PH, g.SH), d.left = pad(g.KW, g.PW, g.SW), d.OC = g.OC;
  const int64_t rows = (g.H + g.SH - 1) / g.SH, cols = (g.W + g.SW - 1) / g.SW;
  const int64_t max_dh = d.top + (g.SH - 1 + g.PH) / g.SH, max_dw = d.left + (g.SW - 1 + g.PW) / g.SW;
  d.Hd = std::max(d.top + g.OH, rows + max_dh);
  d.Wd = std::max(d.left + width_vectors(g) * L, (cols + L - 1) / L * L + max_dw);
  d.t = torch::zeros({g.N, d.Hd, g.OC, d.Wd}, dy.options());
  d.t.narrow(1, d.top, g.OH).narrow(3, d.left, g.OW).copy_(dy.permute({0, 2, 1, 3}));
  return d;
}

torch::Tensor input_grad_impl(const WDy& DY, const Entries& E, const std::vector<float>& pv, const Geometry& g,
                              const torch::TensorOptions& opts) {
  const int64_t ph_count = g.SH * g.SW;
  const Transposed tr = transposed_entries(E, pv, g, DY.top, DY.left, DY.sc(), DY.sr(), 1);
  const std::vector<int64_t>&kp = tr.kp, &toff = tr.off;
  const std::vector<float>& tval = tr.val;
  auto DX = torch::empty({g.N, g.IC, g.H, g.W}, opts);
  float* dxd = DX.data_ptr<float>();
  const int64_t max_cols = (g.W + g.SW - 1) / g.SW;
  const int64_t nvw = (max_cols + L - 1) / L;
  const int64_t nv = std::max<int64_t>(1, std::min<int64_t>({4, nvw, kAccF}));
  const int64_t T = positions_per_tile(1, nv);
  const int64_t nthr = std::max(1, at::get_num_threads());
  const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(g.IC, (4 * nthr + g.N * ph_count - 1) / (g.N * ph_count)));
  par_chunks(g.N * ph_count * parts, 1, [&](int64_t b, int64_t e) {
    std::vector<float> buf((size_t)kAccF * L);
    for (int64_t item = b; item < e; ++item) {
      const int64_t part = item % parts, rest = item / parts;
      const int64_t phase = rest % ph_count, n = rest / ph_count;
      const int64_t rh = phase / g.SW, rw = phase % g.SW;
      const int64_t ncols = (g.W - rw + g.SW - 1) / g.SW;  // positions of this phase in a row
      const int64_t nrows = (g.H - rh + g.SH - 1) / g.SH;
      if (ncols <= 0 || nrows <= 0) continue;
      const int64_t c_begin = part * g.IC / parts, c_end = (part + 1) * g.IC / parts;
      const float* dyn = DY.data() + n * DY.si();
      for (int64_t u0 = 0; u0 < nrows; u0 += T) {
        const int64_t nt = std::min(T, nrows - u0);
        for (int64_t q0 = 0; q0 * L < ncols; q0 += nv) {
          const int64_t nq = std::min(nv, (ncols - q0 * L + L - 1) / L), width = std::min(nq * L, ncols - q0 * L);
          const int64_t ych = nt * nq * L;
          for (int64_t c = c_begin; c < c_end; ++c) {
            const int64_t key = c * ph_count + phase, k0 = kp[key], ne = kp[key + 1] - k0;
            tile_fn(1, nq, nt)(toff.data() + k0, tval.data() + k0, ne, dyn + u0 * DY.sr() + q0 * L, DY.sr(),
                               buf.data(), ych, nq * L, nullptr);
            for (int64_t t = 0; t < nt; ++t) {
              float* dst = dxd + ((n * g.IC + c) * g.H + (u0 + t) * g.SH + rh) * g.W + q0 * L * g.SW + rw;
              const float* src = buf.data() + t * nq * L;
              if (g.SW == 1) {
                std::memcpy(dst, src, width * sizeof(float));
              } else {
                for (int64_t v = 0; v < width; ++v) dst[v * g.SW] = src[v];
              }
            }
          }
        }
      }
    }
  });
  return DX;
}

torch::Tensor weight_grad_impl(const WDy& DY, const WPacked& X, const Entries& E, const Geometry& g,
                               const torch::Tensor& values) {
  const auto off = width_offsets(E, g, X);
  const int64_t RK = E.RK, nvw = width_vectors(g);
  const int64_t EW = RK == 4 ? kWE4 : kWE1;
  const int64_t nthr = std::max(1, at::get_num_threads());
  const auto cut = balanced_groups(E, 2 * nthr);
  const int64_t parts = (int64_t)cut.size() - 1;
  std::vector<float> grad(E.nelem, 0.f);
  par_chunks(parts, 1, [&](int64_t b, int64_t e) {
    for (int64_t part = b; part < e; ++part) {
      const int64_t e0 = E.ebase[cut[part]], e1 = E.ebase[cut[part + 1]];
      std::vector<float> acc((size_t)(e1 - e0) * L, 0.f);
      for (int64_t n = 0; n < g.N; ++n) {
        const float* xn = X.data() + n * X.si();
        const float* dyn = DY.data() + n * DY.si() + DY.top * DY.sr() + DY.left;
        for (int64_t grp = cut[part]; grp < cut[part + 1]; ++grp) {
          const int64_t ne = E.gp[grp + 1] - E.gp[grp];
          for (int64_t s = 0; s < E.R / RK; ++s) {
            const int64_t oc0 = grp * E.R + s * RK;
            float* a = acc.data() + (E.ebase[grp] + s * ne * RK - e0) * L;
            for (int64_t k = 0; k < ne; k += EW) {
              const int64_t ke = std::min(EW, ne - k);
              auto fn = RK == 4 ? wtile_e<4>((int)ke) : wtile_e<1>((int)ke);
              fn(dyn + oc0 * DY.sc(), DY.sc(), DY.sr(), xn, off.data() + E.gp[grp] + k, g.OH, g.SH * X.sr(), nvw,
                 a + k * RK * L);
            }
          }
        }
      }
      for (int64_t k = e0; k < e1; ++k) grad[k] = hsum_lanes(acc.data() + (k - e0) * L);
    }
  });
  auto dvalues = torch::empty(values.sizes(), values.options());
  float* dv = dvalues.data_ptr<float>();
  for (int64_t k = 0; k < E.nelem; ++k) dv[E.vidx[k]] = grad[k];
  return dvalues;
}

}  // namespace

#if SB_WIDTH_SENDS_NARROW_ROWS
torch::Tensor sparse_conv2d_width_forward_narrow(const torch::Tensor&, const torch::Tensor&,
                                                 const std::optional<torch::Tensor>&, const torch::Tensor&,
                                                 const torch::Tensor&, at::IntArrayRef, at::IntArrayRef,
                                                 at::IntArrayRef, at::IntArrayRef);
std::tuple<torch::Tensor, torch::Tensor> sparse_conv2d_width_backward_narrow(
    const torch::Tensor&, const torch::Tensor&, const torch::Tensor&, const torch::Tensor&, const torch::Tensor&,
    at::IntArrayRef, at::IntArrayRef, at::IntArrayRef, at::IntArrayRef, bool, bool);
// Rows of at most 8 output columns, decided before any check or entry list: the narrow build is this
// same source, so it checks (and rejects) every argument exactly as this one would.
static bool narrow_rows(const torch::Tensor& x, at::IntArrayRef kernel, at::IntArrayRef stride,
                        at::IntArrayRef padding) {
  if (x.dim() != 4 || kernel.size() != 2 || stride.size() != 2 || padding.size() != 2 || stride[1] <= 0) return false;
  return (x.size(3) + 2 * padding[1] - kernel[1]) / stride[1] + 1 <= 8;
}
#endif

// y (n, out, oh, ow), NCHW contiguous: sparse_conv2d_forward's product, vectorised over the width.
torch::Tensor SB_WIDTH_ENTRY(sparse_conv2d_width_forward)(const torch::Tensor& x_in, const torch::Tensor& values,
                                          const std::optional<torch::Tensor>& bias_in, const torch::Tensor& row_ptr,
                                          const torch::Tensor& col, at::IntArrayRef block, at::IntArrayRef kernel,
                                          at::IntArrayRef stride, at::IntArrayRef padding) {
#if SB_WIDTH_SENDS_NARROW_ROWS
  if (narrow_rows(x_in, kernel, stride, padding))
    return sparse_conv2d_width_forward_narrow(x_in, values, bias_in, row_ptr, col, block, kernel, stride, padding);
#endif
  const auto& x = check_input("x", x_in);
  const Entries E = check_weight(values, row_ptr, col, block, x.size(1), kernel);
  const Geometry g = geometry(x, E.groups * E.R, kernel, stride, padding);
  const torch::Tensor bias = checked_bias(bias_in, g.OC);
  if (g.N == 0 || g.OC == 0 || g.OH == 0 || g.OW == 0) return torch::zeros({g.N, g.OC, g.OH, g.OW}, x.options());
  const auto pv = packed_values(E, values);
  return forward_impl(x, E, pv, bias.defined() ? bias.data_ptr<float>() : nullptr, g);
}

// (dx, dvalues) of sparse_conv2d_width_forward for the output gradient dy; each only where asked
// (an empty (0,) tensor otherwise). dx is NCHW contiguous.
std::tuple<torch::Tensor, torch::Tensor> SB_WIDTH_ENTRY(sparse_conv2d_width_backward)(
    const torch::Tensor& dy_in, const torch::Tensor& x_in, const torch::Tensor& values, const torch::Tensor& row_ptr,
    const torch::Tensor& col, at::IntArrayRef block, at::IntArrayRef kernel, at::IntArrayRef stride,
    at::IntArrayRef padding, bool need_x, bool need_w) {
#if SB_WIDTH_SENDS_NARROW_ROWS
  if (narrow_rows(x_in, kernel, stride, padding))
    return sparse_conv2d_width_backward_narrow(dy_in, x_in, values, row_ptr, col, block, kernel, stride, padding,
                                               need_x, need_w);
#endif
  const auto& x = check_input("x", x_in);
  const auto& dy = check_input("dy", dy_in);
  const Entries E = check_weight(values, row_ptr, col, block, x.size(1), kernel);
  const Geometry g = geometry(x, E.groups * E.R, kernel, stride, padding);
  TORCH_CHECK_VALUE(dy.size(0) == g.N && dy.size(1) == g.OC && dy.size(2) == g.OH && dy.size(3) == g.OW,
                    "dy must have shape (", g.N, ", ", g.OC, ", ", g.OH, ", ", g.OW, "), got ", dy.sizes());
  torch::Tensor dx = x.new_empty({0}), dvalues = x.new_empty({0});
  if (!need_x && !need_w) return {dx, dvalues};
  if (g.N == 0 || E.nelem == 0) {
    if (need_x) dx = torch::zeros({g.N, g.IC, g.H, g.W}, x.options());
    if (need_w) dvalues = torch::zeros(values.sizes(), values.options());
    return {dx, dvalues};
  }
  const WDy DY = pack_dy(dy, g);
  if (need_w) {  // first, so the packed input is freed before dx is allocated
    const WPacked X = pack_input(x, g);
    dvalues = weight_grad_impl(DY, X, E, g, values);
  }
  if (need_x) dx = input_grad_impl(DY, E, packed_values(E, values), g, x.options());
  return {dx, dvalues};
}

// The training op: its backward (sparsebench/kernels/ops.py) is sparse_conv2d_width_backward.
torch::Tensor SB_WIDTH_ENTRY(sparse_conv2d_width)(const torch::Tensor& x, const torch::Tensor& values,
                                  const std::optional<torch::Tensor>& bias, const torch::Tensor& row_ptr,
                                  const torch::Tensor& col, at::IntArrayRef block, at::IntArrayRef kernel,
                                  at::IntArrayRef stride, at::IntArrayRef padding) {
  return SB_WIDTH_ENTRY(sparse_conv2d_width_forward)(x, values, bias, row_ptr, col, block, kernel, stride, padding);
}

}  // namespace sparsebench
