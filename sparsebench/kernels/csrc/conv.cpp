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
#include "conv_tiles.h"

namespace sparsebench {
namespace {

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
  const int64_t ph_count = g.SH * g.SW, sp = g.Bp, sr = DY.sr();
  const Transposed tr = transposed_entries(E, pv, g, dl.top, dl.left, DY.sc(), sr, sp);
  const std::vector<int64_t>&kp = tr.kp, &toff = tr.off;
  const std::vector<float>& tval = tr.val;
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
  const torch::Tensor bias = checked_bias(bias_in, g.OC);
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
