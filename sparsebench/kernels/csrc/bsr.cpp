// Block-sparse (BSR) CPU training kernels: forward, input gradient, weight gradient.
//
// All activations are consumed and produced row-major ((n, in) / (n, out)), so no transposes of x,
// dy, y or dx are ever made. The vector dimension is always a block dimension (R for the forward
// product, C for the two others) and tokens are register-blocked, so the inner loops are
// broadcast-FMA micro-kernels:
//   forward     y[t, br*R:+R]  += x[t, bc*C + c]  * Wt_k[c, :]     (Wt_k = block k transposed)
//   input grad  dx[t, bc*C:+C] += dy[t, br*R + r] * W_k[r, :]
//   weight grad gW_k[r, :]     += dy[t, br*R + r] * x[t, bc*C:+C]
// Fixed (R, C) in {4, 8, 16, 32}^2 are compiled as templates on GCC vector extensions, with the
// vector width and token tile of the target (common.h); other block sizes use a generic path.
// 4x4 blocks on AVX-512 and AVX2 have their own path, with 4 (or 2) tokens x 4 columns per vector.
#include "common.h"

#include <vector>
#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

namespace sparsebench {
namespace {

// --------------------------------------------------------------------------------------
// forward: y (n, out) = x (n, in) @ W^T.  wt: (nnzb, C, R) block-transposed values.
// One call handles T consecutive tokens and all block rows.
template <int R, int C, int T>
static inline void fwd_tokens(const float* __restrict x, int64_t ldx, const float* __restrict wt,
                              const int64_t* __restrict row_ptr, const int64_t* __restrict col_idx,
                              int64_t br0, int64_t br1, const float* __restrict bias, float* __restrict y,
                              int64_t ldy) {
  constexpr int L = lanes_for(R);
  constexpr int NV = R / L;
  typedef typename VecT<L>::type V;
  for (int64_t br = br0; br < br1; ++br) {
    V b0[NV];  // the bias starts the sums: no second pass over the (large) output
#pragma GCC unroll 8
    for (int j = 0; j < NV; ++j) b0[j] = bias ? loadu<L>(bias + br * R + j * L) : V{};
    V acc[T][NV];
#pragma GCC unroll 64
    for (int t = 0; t < T; ++t)
#pragma GCC unroll 8
      for (int j = 0; j < NV; ++j) acc[t][j] = b0[j];
    const int64_t k0 = row_ptr[br], k1 = row_ptr[br + 1];
    for (int64_t k = k0; k < k1; ++k) {
      const float* __restrict xb = x + col_idx[k] * C;
      const float* __restrict w = wt + k * (int64_t)(C * R);
#pragma GCC unroll 4
      for (int c = 0; c < C; ++c) {
        V wv[NV];
#pragma GCC unroll 8
        for (int j = 0; j < NV; ++j) wv[j] = loadu<L>(w + c * R + j * L);
#pragma GCC unroll 64
        for (int t = 0; t < T; ++t) {
          const float s = xb[t * ldx + c];
#pragma GCC unroll 8
          for (int j = 0; j < NV; ++j) acc[t][j] += s * wv[j];
        }
      }
    }
#pragma GCC unroll 64
    for (int t = 0; t < T; ++t)
#pragma GCC unroll 8
      for (int j = 0; j < NV; ++j) storeu<L>(y + t * ldy + br * R + j * L, acc[t][j]);
  }
}

// Cache blocking: a token tile reads every kept block of the rows it computes, so at low
// sparsity (2 MiB of kept 16x16 blocks at S = 0.5 in the feed-forward layer) the weights would
// stream from L3 once per tile. Instead the block rows are cut into chunks whose kept blocks fill
// at most a quarter of L2, and each chunk serves kSuperTile register tiles of tokens in turn.
constexpr int64_t kSuperTile = 8;

// Boundaries of ranges of compressed rows whose kept blocks take at most `budget` bytes each.
static std::vector<int64_t> weight_chunks(const int64_t* ptr, int64_t rows, int64_t block_bytes, int64_t budget) {
  std::vector<int64_t> bounds{0};
  int64_t start = 0;
  for (int64_t r = 0; r < rows; ++r)
    if (r > start && (ptr[r + 1] - ptr[start]) * block_bytes > budget) bounds.push_back(start = r);
  bounds.push_back(rows);
  return bounds;
}

// Run tile(t0, T, lo, hi) for every register tile of T tokens (and the 1-token tiles of the tail)
// and every chunk [lo, hi) of compressed rows, super-tile by super-tile in parallel.
template <int T, class F>
static void blocked_tiles(int64_t n, const std::vector<int64_t>& chunks, const F& tile) {
  const int64_t ntiles = (n + T - 1) / T;
  const int64_t nsuper = (ntiles + kSuperTile - 1) / kSuperTile;
  par_chunks(nsuper, 1, [&](int64_t b, int64_t e) {
    for (int64_t st = b; st < e; ++st) {
      const int64_t first = st * kSuperTile, last = std::min(ntiles, first + kSuperTile);
      for (size_t c = 0; c + 1 < chunks.size(); ++c)
        for (int64_t t = first; t < last; ++t) tile(t * T, std::min<int64_t>(T, n - t * T), chunks[c], chunks[c + 1]);
    }
  });
}

template <int R, int C>
static void fwd_fixed(const float* x, int64_t n, int64_t ldx, const float* wt, const int64_t* row_ptr,
                      const int64_t* col_idx, int64_t nbr, const float* bias, float* y, int64_t ldy) {
  constexpr int NV = R / lanes_for(R);
  constexpr int T = token_tile(NV);
  const auto chunks = weight_chunks(row_ptr, nbr, R * C * sizeof(float), l2_bytes() / 4);
  blocked_tiles<T>(n, chunks, [&](int64_t t0, int64_t w, int64_t lo, int64_t hi) {
    if (w == T) {
      fwd_tokens<R, C, T>(x + t0 * ldx, ldx, wt, row_ptr, col_idx, lo, hi, bias, y + t0 * ldy, ldy);
    } else {
      for (int64_t t = t0; t < t0 + w; ++t)
        fwd_tokens<R, C, 1>(x + t * ldx, ldx, wt, row_ptr, col_idx, lo, hi, bias, y + t * ldy, ldy);
    }
  });
}

// --------------------------------------------------------------------------------------
// input grad: dx (n, in) = dy (n, out) @ W, over the transposed block structure
// (t_row_ptr over block columns, t_col_idx = block row, perm = index of the block in values).
template <int R, int C, int T>
static inline void igrad_tokens(const float* __restrict dy, int64_t lddy, const float* __restrict vals,
                                const int64_t* __restrict t_row_ptr, const int64_t* __restrict t_col_idx,
                                const int64_t* __restrict perm, int64_t bc0, int64_t bc1, float* __restrict dx,
                                int64_t lddx) {
  constexpr int L = lanes_for(C);
  constexpr int NV = C / L;
  typedef typename VecT<L>::type V;
  const int64_t p_end = t_row_ptr[bc1];
  for (int64_t bc = bc0; bc < bc1; ++bc) {
    V acc[T][NV];
#pragma GCC unroll 64
    for (int t = 0; t < T; ++t)
#pragma GCC unroll 8
      for (int j = 0; j < NV; ++j) acc[t][j] = V{};
    const int64_t p0 = t_row_ptr[bc], p1 = t_row_ptr[bc + 1];
    for (int64_t p = p0; p < p1; ++p) {
      const float* __restrict db = dy + t_col_idx[p] * R;
      const float* __restrict w = vals + perm[p] * (int64_t)(R * C);
      // dy rows of a token tile are far apart and live in L2: prefetch the next block's
      // (or the next block column's first block's) lines while this one computes.
      if (p + 1 < p_end) {
        const float* nb = dy + t_col_idx[p + 1] * R;
#pragma GCC unroll 64
        for (int t = 0; t < T; ++t)
#pragma GCC unroll 2
          for (int q = 0; q < R; q += 16) __builtin_prefetch(nb + t * lddy + q, 0, 3);
      }
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) {
        V wv[NV];
#pragma GCC unroll 8
        for (int j = 0; j < NV; ++j) wv[j] = loadu<L>(w + r * C + j * L);
#pragma GCC unroll 64
        for (int t = 0; t < T; ++t) {
          const float s = db[t * lddy + r];
#pragma GCC unroll 8
          for (int j = 0; j < NV; ++j) acc[t][j] += s * wv[j];
        }
      }
    }
#pragma GCC unroll 64
    for (int t = 0; t < T; ++t)
#pragma GCC unroll 8
      for (int j = 0; j < NV; ++j) storeu<L>(dx + t * lddx + bc * C + j * L, acc[t][j]);
  }
}

template <int R, int C>
static void igrad_fixed(const float* dy, int64_t n, int64_t lddy, const float* vals, const int64_t* t_row_ptr,
                        const int64_t* t_col_idx, const int64_t* perm, int64_t nbc, float* dx, int64_t lddx) {
  constexpr int NV = C / lanes_for(C);
  constexpr int T = token_tile(NV);
  const auto chunks = weight_chunks(t_row_ptr, nbc, R * C * sizeof(float), l2_bytes() / 4);
  blocked_tiles<T>(n, chunks, [&](int64_t t0, int64_t w, int64_t lo, int64_t hi) {
    if (w == T) {
      igrad_tokens<R, C, T>(dy + t0 * lddy, lddy, vals, t_row_ptr, t_col_idx, perm, lo, hi, dx + t0 * lddx, lddx);
    } else {
      for (int64_t t = t0; t < t0 + w; ++t)
        igrad_tokens<R, C, 1>(dy + t * lddy, lddy, vals, t_row_ptr, t_col_idx, perm, lo, hi, dx + t * lddx, lddx);
    }
  });
}

// --------------------------------------------------------------------------------------
// weight grad: g_k (R, C) = dy[:, br*R:+R]^T @ x[:, bc*C:+C] for each kept block k.
// Rows of the block are handled RB at a time; U independent token streams hide FMA latency.
template <int R, int C>
static inline void wgrad_block(const float* __restrict dy, int64_t lddy, const float* __restrict x, int64_t ldx,
                               int64_t t0, int64_t t1, float* __restrict g, bool first) {
  constexpr int L = lanes_for(C);
  constexpr int NV = C / L;
  constexpr int RB = (NV == 1) ? (R < 16 ? R : 16) : (R < 8 ? R : 8);
  constexpr int U0 = 16 / (RB * NV);
  constexpr int U = U0 < 1 ? 1 : U0;
  typedef typename VecT<L>::type V;
  for (int r0 = 0; r0 < R; r0 += RB) {
    V acc[U][RB][NV];
#pragma GCC unroll 4
    for (int u = 0; u < U; ++u)
#pragma GCC unroll 32
      for (int r = 0; r < RB; ++r)
#pragma GCC unroll 8
        for (int j = 0; j < NV; ++j) acc[u][r][j] = V{};
    int64_t t = t0;
    for (; t + U <= t1; t += U) {
#pragma GCC unroll 4
      for (int u = 0; u < U; ++u) {
        const float* __restrict xr = x + (t + u) * ldx;
        const float* __restrict dr = dy + (t + u) * lddy + r0;
        // strided rows: prefetch a few tokens ahead (harmless past the tile end)
        __builtin_prefetch(xr + 8 * ldx, 0, 3);
        __builtin_prefetch(dr + 8 * lddy, 0, 3);
        V xv[NV];
#pragma GCC unroll 8
        for (int j = 0; j < NV; ++j) xv[j] = loadu<L>(xr + j * L);
#pragma GCC unroll 32
        for (int r = 0; r < RB; ++r) {
          const float s = dr[r];
#pragma GCC unroll 8
          for (int j = 0; j < NV; ++j) acc[u][r][j] += s * xv[j];
        }
      }
    }
    for (; t < t1; ++t) {
      const float* __restrict xr = x + t * ldx;
      const float* __restrict dr = dy + t * lddy + r0;
      V xv[NV];
#pragma GCC unroll 8
      for (int j = 0; j < NV; ++j) xv[j] = loadu<L>(xr + j * L);
#pragma GCC unroll 32
      for (int r = 0; r < RB; ++r) {
        const float s = dr[r];
#pragma GCC unroll 8
        for (int j = 0; j < NV; ++j) acc[0][r][j] += s * xv[j];
      }
    }
#pragma GCC unroll 32
    for (int r = 0; r < RB; ++r)
#pragma GCC unroll 8
      for (int j = 0; j < NV; ++j) {
        V s = acc[0][r][j];
#pragma GCC unroll 4
        for (int u = 1; u < U; ++u) s += acc[u][r][j];
        float* gp = g + (r0 + r) * C + j * L;
        if (!first) s += loadu<L>(gp);
        storeu<L>(gp, s);
      }
  }
}

// Split kept blocks into contiguous chunks of roughly equal count (one per task); inside a
// chunk, tokens are tiled so the x / dy strips of a tile stay in L2 across blocks.
template <int R, int C>
static void wgrad_fixed(const float* dy, int64_t lddy, const float* x, int64_t ldx, int64_t n,
                        const int64_t* blk_row, const int64_t* col_idx, int64_t nnzb, float* g) {
  const int64_t TT = 128;
  par_chunks(nnzb, 4, [&](int64_t b, int64_t e) {
    if (n == 0) {
      std::memset(g + b * R * C, 0, sizeof(float) * (e - b) * R * C);
      return;
    }
    for (int64_t t0 = 0; t0 < n; t0 += TT) {
      const int64_t t1 = std::min(n, t0 + TT);
      for (int64_t k = b; k < e; ++k)
        wgrad_block<R, C>(dy + blk_row[k] * R, lddy, x + col_idx[k] * C, ldx, t0, t1, g + k * R * C, t0 == 0);
    }
  });
}


// --------------------------------------------------------------------------------------
// 4x4 blocks on AVX-512 / AVX2: a vector of KL = 4 * KTOK lanes holds KTOK rows of 4 floats
// (KTOK tokens x 4 block columns in the products, KTOK blocks x 4 columns in the weight
// gradient), so x / dy rows are read 16 bytes at a time straight from the row-major activations.
#if defined(__AVX512F__) || defined(__AVX2__)
#define SB_HAVE_K44 1
#if defined(__AVX512F__)
typedef __m512 KV;
constexpr int KTOK = 4;
constexpr int KG = 4;  // token groups per tile: 16 accumulators + 4 weights + 1 input of 32 registers
static inline KV k_zero() { return _mm512_setzero_ps(); }
static inline KV k_load(const float* p) { return _mm512_loadu_ps(p); }
static inline void k_store(float* p, KV v) { _mm512_storeu_ps(p, v); }
static inline KV k_bcast4(const float* p) { return _mm512_broadcast_f32x4(_mm_loadu_ps(p)); }
static inline KV k_set1(float s) { return _mm512_set1_ps(s); }
static inline KV k_fma(KV a, KV b, KV c) { return _mm512_fmadd_ps(a, b, c); }
static inline KV k_add(KV a, KV b) { return _mm512_add_ps(a, b); }
static inline KV k_rows(const float* const* p, int64_t off) {
  KV v = _mm512_castps128_ps512(_mm_loadu_ps(p[0] + off));
  v = _mm512_insertf32x4(v, _mm_loadu_ps(p[1] + off), 1);
  v = _mm512_insertf32x4(v, _mm_loadu_ps(p[2] + off), 2);
  return _mm512_insertf32x4(v, _mm_loadu_ps(p[3] + off), 3);
}
static inline void k_store_rows(float* o, int64_t ld, KV v) {
  _mm_storeu_ps(o, _mm512_castps512_ps128(v));
  _mm_storeu_ps(o + ld, _mm512_extractf32x4_ps(v, 1));
  _mm_storeu_ps(o + 2 * ld, _mm512_extractf32x4_ps(v, 2));
  _mm_storeu_ps(o + 3 * ld, _mm512_extractf32x4_ps(v, 3));
}
#define K_UNPACKLO _mm512_unpacklo_ps
#define K_UNPACKHI _mm512_unpackhi_ps
#define K_SHUFFLE _mm512_shuffle_ps
#else
typedef __m256 KV;
constexpr int KTOK = 2;
constexpr int KG = 2;  // 8 accumulators + 4 weights + 1 input of 16 registers
static inline KV k_zero() { return _mm256_setzero_ps(); }
static inline KV k_load(const float* p) { return _mm256_loadu_ps(p); }
static inline void k_store(float* p, KV v) { _mm256_storeu_ps(p, v); }
static inline KV k_bcast4(const float* p) { return _mm256_broadcast_ps((const __m128*)p); }
static inline KV k_set1(float s) { return _mm256_set1_ps(s); }
static inline KV k_fma(KV a, KV b, KV c) { return _mm256_fmadd_ps(a, b, c); }
static inline KV k_add(KV a, KV b) { return _mm256_add_ps(a, b); }
static inline KV k_rows(const float* const* p, int64_t off) {
  return _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_loadu_ps(p[0] + off)), _mm_loadu_ps(p[1] + off), 1);
}
static inline void k_store_rows(float* o, int64_t ld, KV v) {
  _mm_storeu_ps(o, _mm256_castps256_ps128(v));
  _mm_storeu_ps(o + ld, _mm256_extractf128_ps(v, 1));
}
#define K_UNPACKLO _mm256_unpacklo_ps
#define K_UNPACKHI _mm256_unpackhi_ps
#define K_SHUFFLE _mm256_shuffle_ps
#endif
constexpr int KL = 4 * KTOK;

// KTOK rows of 4 floats, ld apart, into one vector
static inline KV k_strided(const float* p, int64_t ld) {
  const float* rows[KTOK];
  for (int u = 0; u < KTOK; ++u) rows[u] = p + u * ld;
  return k_rows(rows, 0);
}

// a0..a3 have lanes (u, c); returns lanes (u, r) = sum_c a_r(u, c). All shuffles stay inside
// 128-bit lanes, so the same sequence serves 256- and 512-bit vectors.
static inline KV reduce4(KV a0, KV a1, KV a2, KV a3) {
  KV s01 = k_add(K_UNPACKLO(a0, a1), K_UNPACKHI(a0, a1));
  KV s23 = k_add(K_UNPACKLO(a2, a3), K_UNPACKHI(a2, a3));
  return k_add(K_SHUFFLE(s01, s23, 0x44), K_SHUFFLE(s01, s23, 0xEE));
}

// out[t, br*4 + r] = sum_{k in row br} sum_c in[t, col[k]*4 + c] * B_k[r][c]
// (B = W for the forward product; B = block-transposed W in transposed order for dx).
// `packed` holds the KTOK*G-token tile of `in` pre-gathered as (block column q, group g) ->
// KL lanes (u, c) = in[KTOK*g + u, 4q + c], so the inner loop does plain contiguous loads.
template <int G>
static inline void k44_tokens(const float* __restrict packed, const float* __restrict B,
                              const int64_t* __restrict row_ptr, const int64_t* __restrict col_idx, int64_t nbr,
                              const float* __restrict bias, float* __restrict out, int64_t ldo) {
  for (int64_t br = 0; br < nbr; ++br) {
    KV acc[G][4];
#pragma GCC unroll 8
    for (int g = 0; g < G; ++g)
#pragma GCC unroll 4
      for (int r = 0; r < 4; ++r) acc[g][r] = k_zero();
    const int64_t k1 = row_ptr[br + 1];
    for (int64_t k = row_ptr[br]; k < k1; ++k) {
      const float* b = B + k * 16;
      const KV w0 = k_bcast4(b), w1 = k_bcast4(b + 4), w2 = k_bcast4(b + 8), w3 = k_bcast4(b + 12);
      const float* xb = packed + col_idx[k] * (KL * G);
#pragma GCC unroll 8
      for (int g = 0; g < G; ++g) {
        const KV X = k_load(xb + KL * g);
        acc[g][0] = k_fma(X, w0, acc[g][0]);
        acc[g][1] = k_fma(X, w1, acc[g][1]);
        acc[g][2] = k_fma(X, w2, acc[g][2]);
        acc[g][3] = k_fma(X, w3, acc[g][3]);
      }
    }
    const KV b0 = bias ? k_bcast4(bias + br * 4) : k_zero();
#pragma GCC unroll 8
    for (int g = 0; g < G; ++g)
      k_store_rows(out + KTOK * g * ldo + br * 4, ldo,
                   k_add(b0, reduce4(acc[g][0], acc[g][1], acc[g][2], acc[g][3])));
  }
}

template <int G>
static inline void k44_pack(const float* __restrict in, int64_t ldi, int64_t ncb, float* __restrict packed) {
  for (int64_t q = 0; q < ncb; ++q)
#pragma GCC unroll 8
    for (int g = 0; g < G; ++g) k_store(packed + (q * G + g) * KL, k_strided(in + KTOK * g * ldi + 4 * q, ldi));
}

static inline void k44_one_token(const float* __restrict in, const float* __restrict B,
                                 const int64_t* __restrict row_ptr, const int64_t* __restrict col_idx, int64_t nbr,
                                 const float* __restrict bias, float* __restrict out) {
  for (int64_t br = 0; br < nbr; ++br) {
    __m128 acc = bias ? _mm_loadu_ps(bias + br * 4) : _mm_setzero_ps();
    for (int64_t k = row_ptr[br]; k < row_ptr[br + 1]; ++k) {
      const float* b = B + k * 16;
      const __m128 X = _mm_loadu_ps(in + col_idx[k] * 4);
      // lanes r: sum_c X[c] * b[r][c]
      __m128 p0 = _mm_mul_ps(X, _mm_loadu_ps(b)), p1 = _mm_mul_ps(X, _mm_loadu_ps(b + 4));
      __m128 p2 = _mm_mul_ps(X, _mm_loadu_ps(b + 8)), p3 = _mm_mul_ps(X, _mm_loadu_ps(b + 12));
      __m128 s01 = _mm_add_ps(_mm_unpacklo_ps(p0, p1), _mm_unpackhi_ps(p0, p1));
      __m128 s23 = _mm_add_ps(_mm_unpacklo_ps(p2, p3), _mm_unpackhi_ps(p2, p3));
      acc = _mm_add_ps(acc, _mm_add_ps(_mm_movelh_ps(s01, s23), _mm_movehl_ps(s23, s01)));
    }
    _mm_storeu_ps(out + br * 4, acc);
  }
}

static void k44_apply(const float* in, int64_t n, int64_t ldi, int64_t ncb, const float* B, const int64_t* row_ptr,
                      const int64_t* col_idx, int64_t nbr, const float* bias, float* out, int64_t ldo) {
  constexpr int T = KTOK * KG;
  const int64_t ntiles = (n + T - 1) / T;
  par_chunks(ntiles, 1, [&](int64_t b, int64_t e) {
    static thread_local std::vector<float> buf;
    if (buf.size() < (size_t)ncb * KL * KG + 16) buf.resize((size_t)ncb * KL * KG + 16);
    float* packed = buf.data();
    for (int64_t tile = b; tile < e; ++tile) {
      const int64_t t0 = tile * T;
      if (t0 + T <= n) {
        k44_pack<KG>(in + t0 * ldi, ldi, ncb, packed);
        k44_tokens<KG>(packed, B, row_ptr, col_idx, nbr, bias, out + t0 * ldo, ldo);
      } else {
        int64_t t = t0;
        for (; t + KTOK <= n; t += KTOK) {
          k44_pack<1>(in + t * ldi, ldi, ncb, packed);
          k44_tokens<1>(packed, B, row_ptr, col_idx, nbr, bias, out + t * ldo, ldo);
        }
        for (; t < n; ++t) k44_one_token(in + t * ldi, B, row_ptr, col_idx, nbr, bias, out + t * ldo);
      }
    }
  });
}

// weight grad, 4x4: lanes (j, c) = KTOK kept blocks j of one block row x 4 columns c.
// groups: per block row, kept blocks taken KTOK at a time (the last group padded by repeating its
// last block; padded lanes are discarded). scratch: (ngroups, 4 r, KL lanes).
static void wgrad44(const float* dy, int64_t lddy, const float* x, int64_t ldx, int64_t n, const int64_t* row_ptr,
                    const int64_t* col_idx, int64_t nbr, int64_t nnzb, float* g) {
  std::vector<int64_t> grp_ptr(nbr + 1, 0);
  for (int64_t br = 0; br < nbr; ++br)
    grp_ptr[br + 1] = grp_ptr[br] + (row_ptr[br + 1] - row_ptr[br] + KTOK - 1) / KTOK;
  const int64_t ngroups = grp_ptr[nbr];
  std::vector<float> scratch((size_t)ngroups * 4 * KL);
  const int64_t TT = 32;
  // split block rows into contiguous ranges of ~equal kept-block count
  const int64_t nthr = std::max(1, at::get_num_threads());
  const int64_t nchunks = std::max<int64_t>(1, std::min<int64_t>(nbr, 8 * nthr));
  std::vector<int64_t> bounds(nchunks + 1, nbr);
  {
    bounds[0] = 0;
    int64_t c = 1;
    for (int64_t br = 0; br < nbr && c < nchunks; ++br)
      if (row_ptr[br + 1] * nchunks >= c * nnzb) bounds[c++] = br + 1;
    for (; c < nchunks; ++c) bounds[c] = nbr;
  }
  float* sc = scratch.data();
  par_chunks(nchunks, 1, [&](int64_t cb, int64_t ce) {
    const int64_t b0 = bounds[cb], b1 = bounds[ce];
    for (int64_t t0 = 0; t0 < n; t0 += TT) {
      const int64_t t1 = std::min(n, t0 + TT);
      for (int64_t br = b0; br < b1; ++br) {
        const int64_t k0 = row_ptr[br], k1 = row_ptr[br + 1];
        const float* d = dy + br * 4;
        int64_t gi = grp_ptr[br];
        for (int64_t k = k0; k < k1; k += 2 * KTOK, gi += 2) {
          const int64_t last = k1 - 1;
          const float* xa[KTOK];
          const float* xb[KTOK];
          for (int j = 0; j < KTOK; ++j) {
            xa[j] = x + col_idx[std::min(k + j, last)] * 4;
            xb[j] = x + col_idx[std::min(k + KTOK + j, last)] * 4;
          }
          const bool two = k + KTOK < k1;
          float* s0 = sc + gi * 4 * KL;
          KV a[4], bacc[4];
          for (int r = 0; r < 4; ++r) {
            a[r] = t0 == 0 ? k_zero() : k_load(s0 + KL * r);
            bacc[r] = (t0 == 0 || !two) ? k_zero() : k_load(s0 + 4 * KL + KL * r);
          }
          if (two) {
            for (int64_t t = t0; t < t1; ++t) {
              const KV XA = k_rows(xa, t * ldx), XB = k_rows(xb, t * ldx);
              const float* dr = d + t * lddy;
#pragma GCC unroll 4
              for (int r = 0; r < 4; ++r) {
                const KV s = k_set1(dr[r]);
                a[r] = k_fma(s, XA, a[r]);
                bacc[r] = k_fma(s, XB, bacc[r]);
              }
            }
          } else {
            int64_t t = t0;
            for (; t + 2 <= t1; t += 2) {
              const KV XA = k_rows(xa, t * ldx), XB = k_rows(xa, (t + 1) * ldx);
              const float* dr = d + t * lddy;
#pragma GCC unroll 4
              for (int r = 0; r < 4; ++r) {
                a[r] = k_fma(k_set1(dr[r]), XA, a[r]);
                bacc[r] = k_fma(k_set1(dr[lddy + r]), XB, bacc[r]);
              }
            }
            for (; t < t1; ++t) {
              const KV XA = k_rows(xa, t * ldx);
              const float* dr = d + t * lddy;
#pragma GCC unroll 4
              for (int r = 0; r < 4; ++r) a[r] = k_fma(k_set1(dr[r]), XA, a[r]);
            }
            for (int r = 0; r < 4; ++r) a[r] = k_add(a[r], bacc[r]);
          }
          for (int r = 0; r < 4; ++r) {
            k_store(s0 + KL * r, a[r]);
            if (two) k_store(s0 + 4 * KL + KL * r, bacc[r]);
          }
        }
      }
    }
    // scatter scratch (group, r, (j, c)) -> g (k, r, c)
    for (int64_t br = b0; br < b1; ++br) {
      const int64_t k0 = row_ptr[br], k1 = row_ptr[br + 1];
      for (int64_t k = k0; k < k1; ++k) {
        const int64_t q = k - k0, gi = grp_ptr[br] + q / KTOK, j = q % KTOK;
        for (int r = 0; r < 4; ++r)
          for (int c = 0; c < 4; ++c) g[k * 16 + r * 4 + c] = sc[gi * 4 * KL + r * KL + j * 4 + c];
      }
    }
  });
}
#endif  // AVX-512 / AVX2 4x4 path

// --------------------------------------------------------------------------------------
// generic fallbacks (any R, C)
static void fwd_generic(const float* x, int64_t n, int64_t ldx, const float* vals, const int64_t* row_ptr,
                        const int64_t* col_idx, int64_t nbr, int64_t R, int64_t C, const float* bias, float* y,
                        int64_t ldy) {
  at::parallel_for(0, n, 16, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      const float* xr = x + t * ldx;
      float* yr = y + t * ldy;
      for (int64_t br = 0; br < nbr; ++br) {
        for (int64_t r = 0; r < R; ++r) {
          float s = bias ? bias[br * R + r] : 0.f;
          for (int64_t k = row_ptr[br]; k < row_ptr[br + 1]; ++k) {
            const float* w = vals + (k * R + r) * C;
            const float* xb = xr + col_idx[k] * C;
#pragma omp simd reduction(+ : s)
            for (int64_t c = 0; c < C; ++c) s += w[c] * xb[c];
          }
          yr[br * R + r] = s;
        }
      }
    }
  });
}

static void igrad_generic(const float* dy, int64_t n, int64_t lddy, const float* vals, const int64_t* t_row_ptr,
                          const int64_t* t_col_idx, const int64_t* perm, int64_t nbc, int64_t R, int64_t C,
                          float* dx, int64_t lddx) {
  at::parallel_for(0, n, 16, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      const float* dr = dy + t * lddy;
      float* xr = dx + t * lddx;
      for (int64_t bc = 0; bc < nbc; ++bc) {
        float* o = xr + bc * C;
        for (int64_t c = 0; c < C; ++c) o[c] = 0.f;
        for (int64_t p = t_row_ptr[bc]; p < t_row_ptr[bc + 1]; ++p) {
          const float* w = vals + perm[p] * R * C;
          const float* d = dr + t_col_idx[p] * R;
          for (int64_t r = 0; r < R; ++r) {
            const float s = d[r];
#pragma omp simd
            for (int64_t c = 0; c < C; ++c) o[c] += s * w[r * C + c];
          }
        }
      }
    }
  });
}

static void wgrad_generic(const float* dy, int64_t lddy, const float* x, int64_t ldx, int64_t n,
                          const int64_t* blk_row, const int64_t* col_idx, int64_t nnzb, int64_t R, int64_t C,
                          float* g) {
  at::parallel_for(0, nnzb, 1, [&](int64_t b, int64_t e) {
    for (int64_t k = b; k < e; ++k) {
      float* gk = g + k * R * C;
      std::memset(gk, 0, sizeof(float) * R * C);
      const float* d = dy + blk_row[k] * R;
      const float* xb = x + col_idx[k] * C;
      for (int64_t t = 0; t < n; ++t) {
        for (int64_t r = 0; r < R; ++r) {
          const float s = d[t * lddy + r];
          const float* xr = xb + t * ldx;
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) gk[r * C + c] += s * xr[c];
        }
      }
    }
  });
}

// --------------------------------------------------------------------------------------
#define SB_DISPATCH(R_, C_, CALL)                                           \
  switch (R_ * 1000 + C_) {                                                 \
    case 4004: CALL(4, 4); break;     case 4008: CALL(4, 8); break;         \
    case 4016: CALL(4, 16); break;    case 4032: CALL(4, 32); break;        \
    case 8004: CALL(8, 4); break;     case 8008: CALL(8, 8); break;         \
    case 8016: CALL(8, 16); break;    case 8032: CALL(8, 32); break;        \
    case 16004: CALL(16, 4); break;   case 16008: CALL(16, 8); break;       \
    case 16016: CALL(16, 16); break;  case 16032: CALL(16, 32); break;      \
    case 32004: CALL(32, 4); break;   case 32008: CALL(32, 8); break;       \
    case 32016: CALL(32, 16); break;  case 32032: CALL(32, 32); break;      \
    default: handled = false;                                               \
  }
// block row of each kept block
static std::vector<int64_t> block_rows(const int64_t* rp, int64_t nbr, int64_t nnzb) {
  std::vector<int64_t> blk_row(nnzb);
  for (int64_t br = 0; br < nbr; ++br)
    for (int64_t k = rp[br]; k < rp[br + 1]; ++k) blk_row[k] = br;
  return blk_row;
}

static torch::Tensor check_values(const torch::Tensor& v) {
  TORCH_CHECK_VALUE(v.device().is_cpu(), "values must be on the CPU, got device ", v.device());
  TORCH_CHECK_VALUE(v.scalar_type() == torch::kFloat, "values must be float32, got ", v.scalar_type());
  TORCH_CHECK_VALUE(v.dim() == 3 && v.size(1) >= 1 && v.size(2) >= 1,
                    "values must have shape (nnzb, R, C) with R, C >= 1, got ", v.sizes());
  return v.contiguous();
}

static int64_t divide(int64_t total, int64_t block, const char* what) {
  TORCH_CHECK_VALUE(total % block == 0, what, "=", total, " is not a multiple of the block size ", block);
  return total / block;
}

torch::Tensor forward_impl(const torch::Tensor& x_in, const torch::Tensor& values_in,
                           const std::optional<torch::Tensor>& bias_in, const torch::Tensor& row_ptr_in,
                           const torch::Tensor& col_idx_in, int64_t out_features) {
  auto values = check_values(values_in);
  const int64_t nnzb = values.size(0), R = values.size(1), C = values.size(2);
  auto x = check_dense("x", x_in);
  const int64_t nbc = divide(x.size(1), C, "x.size(1) (in_features)");
  const int64_t nbr = divide(out_features, R, "out_features");
  auto row_ptr = check_index("row_ptr", row_ptr_in, torch::kLong, nbr + 1);
  auto col_idx = check_index("col_idx", col_idx_in, torch::kLong, nnzb);
  check_compressed<int64_t>("row_ptr", row_ptr, "col_idx", col_idx, nbc);

  torch::Tensor bias;
  if (bias_in.has_value()) {
    bias = bias_in->contiguous();
    TORCH_CHECK_VALUE(bias.device().is_cpu() && bias.scalar_type() == torch::kFloat, "bias must be float32 on the CPU, got ",
                      bias.scalar_type(), " on ", bias.device());
    TORCH_CHECK_VALUE(bias.dim() == 1 && bias.size(0) == out_features, "bias must have shape (", out_features,
                      ",), got ", bias.sizes());
  }
  const float* bp = bias.defined() ? bias.data_ptr<float>() : nullptr;
  const int64_t n = x.size(0);
  auto y = empty_out(n, out_features, x.options());
  if (n == 0) return y;
  const float* xp = x.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  const int64_t* rp = row_ptr.data_ptr<int64_t>();
  const int64_t* ci = col_idx.data_ptr<int64_t>();
  const int64_t ldx = x.stride(0), ldy = out_features;
  bool handled = true;
#if defined(SB_HAVE_K44)
  if (R == 4 && C == 4) {
    k44_apply(xp, n, ldx, nbc, values.data_ptr<float>(), rp, ci, nbr, bp, yp, ldy);
    return y;
  }
#endif
  // block-transposed values (nnzb, C, R): small (kept weights only), rebuilt per call.
  torch::Tensor wt;
  if (R % 4 == 0 && C % 4 == 0 && R <= 32 && C <= 32 && nnzb > 0)
    wt = values.transpose(1, 2).contiguous();
  else
    wt = values;
  const float* wtp = wt.data_ptr<float>();
#define SB_FWD(RR, CC) fwd_fixed<RR, CC>(xp, n, ldx, wtp, rp, ci, nbr, bp, yp, ldy)
  SB_DISPATCH(R, C, SB_FWD)
#undef SB_FWD
  if (!handled) fwd_generic(xp, n, ldx, values.data_ptr<float>(), rp, ci, nbr, R, C, bp, yp, ldy);
  return y;
}

}  // namespace

// y = x @ W^T (+ bias) for BSR W (out_features x in): x (n, in) float32, values (nnzb, R, C), row_ptr
// (out/R + 1) and col_idx (nnzb) int64 as torch's to_sparse_bsr gives them.
torch::Tensor bsr_forward(const torch::Tensor& x, const torch::Tensor& values, const std::optional<torch::Tensor>& bias,
                          const torch::Tensor& row_ptr, const torch::Tensor& col_idx, int64_t out_features) {
  return forward_impl(x, values, bias, row_ptr, col_idx, out_features);
}

// The training op: bsr_forward, taking the block-column structure too so that its backward (in
// Python, torch.library.register_autograd) needs nothing but the op's inputs.
torch::Tensor bsr_linear(const torch::Tensor& x, const torch::Tensor& values, const std::optional<torch::Tensor>& bias,
                         const torch::Tensor& row_ptr, const torch::Tensor& col_idx, const torch::Tensor& t_row_ptr,
                         const torch::Tensor& t_col_idx, const torch::Tensor& perm, int64_t out_features) {
  TORCH_CHECK_VALUE(values.dim() == 3, "values must have shape (nnzb, R, C), got ", values.sizes());
  TORCH_CHECK_VALUE(x.dim() == 2 && values.size(2) > 0, "x must be 2-D, got shape ", x.sizes());
  check_index("t_row_ptr", t_row_ptr, torch::kLong, x.size(1) / values.size(2) + 1);
  check_index("t_col_idx", t_col_idx, torch::kLong, values.size(0));
  check_index("perm", perm, torch::kLong, values.size(0));
  return forward_impl(x, values, bias, row_ptr, col_idx, out_features);
}

// dx = dy @ W over the block-column structure: t_row_ptr (in/C + 1) over block columns, t_col_idx
// the block row of each kept block, perm its index in values.
torch::Tensor bsr_input_grad(const torch::Tensor& dy_in, const torch::Tensor& values_in,
                             const torch::Tensor& t_row_ptr_in, const torch::Tensor& t_col_idx_in,
                             const torch::Tensor& perm_in, int64_t in_features) {
  auto values = check_values(values_in);
  const int64_t nnzb = values.size(0), R = values.size(1), C = values.size(2);
  const int64_t nbc = divide(in_features, C, "in_features");
  auto dy = check_dense("dy", dy_in);
  const int64_t nbr = divide(dy.size(1), R, "dy.size(1) (out_features)");
  auto t_row_ptr = check_index("t_row_ptr", t_row_ptr_in, torch::kLong, nbc + 1);
  auto t_col_idx = check_index("t_col_idx", t_col_idx_in, torch::kLong, nnzb);
  auto perm = check_index("perm", perm_in, torch::kLong, nnzb);
  check_compressed<int64_t>("t_row_ptr", t_row_ptr, "t_col_idx", t_col_idx, nbr);
  check_compressed<int64_t>("t_row_ptr", t_row_ptr, "perm", perm, nnzb);

  const int64_t n = dy.size(0);
  auto dx = empty_out(n, in_features, dy.options());
  if (n == 0) return dx;
  const float* dp = dy.data_ptr<float>();
  const float* vp = values.data_ptr<float>();
  float* xp = dx.data_ptr<float>();
  const int64_t* rp = t_row_ptr.data_ptr<int64_t>();
  const int64_t* ci = t_col_idx.data_ptr<int64_t>();
  const int64_t* pp = perm.data_ptr<int64_t>();
  const int64_t lddy = dy.stride(0), lddx = in_features;
  bool handled = true;
#if defined(SB_HAVE_K44)
  if (R == 4 && C == 4) {
    // B_p = W_{perm[p]}^T, in transposed (block-column) order
    auto bt = values.index_select(0, perm).transpose(1, 2).contiguous();
    k44_apply(dp, n, lddy, nbr, bt.data_ptr<float>(), rp, ci, nbc, nullptr, xp, lddx);
    return dx;
  }
#endif
#define SB_IG(RR, CC) igrad_fixed<RR, CC>(dp, n, lddy, vp, rp, ci, pp, nbc, xp, lddx)
  SB_DISPATCH(R, C, SB_IG)
#undef SB_IG
  if (!handled) igrad_generic(dp, n, lddy, vp, rp, ci, pp, nbc, R, C, xp, lddx);
  return dx;
}

// (dy^T @ x) at the kept blocks, (nnzb, R, C) in the order of values.
torch::Tensor bsr_weight_grad(const torch::Tensor& dy_in, const torch::Tensor& x_in, const torch::Tensor& row_ptr_in,
                              const torch::Tensor& col_idx_in, int64_t R, int64_t C) {
  TORCH_CHECK_VALUE(R >= 1 && C >= 1, "block sizes must be >= 1, got (", R, ", ", C, ")");
  auto dy = check_dense("dy", dy_in);
  auto x = check_dense("x", x_in);
  TORCH_CHECK_VALUE(dy.size(0) == x.size(0), "dy and x must have the same number of rows, got ", dy.size(0), " and ",
                    x.size(0));
  const int64_t nbr = divide(dy.size(1), R, "dy.size(1) (out_features)");
  const int64_t nbc = divide(x.size(1), C, "x.size(1) (in_features)");
  auto row_ptr = check_index("row_ptr", row_ptr_in, torch::kLong, nbr + 1);
  auto col_idx = check_index("col_idx", col_idx_in, torch::kLong);
  check_compressed<int64_t>("row_ptr", row_ptr, "col_idx", col_idx, nbc);

  const int64_t n = dy.size(0), nnzb = col_idx.size(0);
  auto g = torch::empty({nnzb, R, C}, x.options());
  if (nnzb == 0) return g;
  const int64_t* rp = row_ptr.data_ptr<int64_t>();
  std::vector<int64_t> blk_row = block_rows(rp, nbr, nnzb);
  const float* dp = dy.data_ptr<float>();
  const float* xp = x.data_ptr<float>();
  const int64_t* ci = col_idx.data_ptr<int64_t>();
  float* gp = g.data_ptr<float>();
  const int64_t lddy = dy.stride(0), ldx = x.stride(0);
  bool handled = true;
#if defined(SB_HAVE_K44)
  if (R == 4 && C == 4) {
    wgrad44(dp, lddy, xp, ldx, n, rp, ci, nbr, nnzb, gp);
    return g;
  }
#endif
#define SB_WG(RR, CC) wgrad_fixed<RR, CC>(dp, lddy, xp, ldx, n, blk_row.data(), ci, nnzb, gp)
  SB_DISPATCH(R, C, SB_WG)
#undef SB_WG
  if (!handled) wgrad_generic(dp, lddy, xp, ldx, n, blk_row.data(), ci, nnzb, R, C, gp);
  return g;
}

}  // namespace sparsebench
