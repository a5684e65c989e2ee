/*
 * Single-precision GEMM for the training engine, as a Node-API addon (compiled on first use by native.ts
 * with the system C compiler, -O3 -march=native; optional: without a compiler the engine stays on XNNPACK).
 *
 *   C[M,N] = op(A) @ op(B)    op(X) = X or X^T (row-major storage, leading dimension = stored row length)
 *
 * Structure (Goto & van de Geijn 2008, "Anatomy of high-performance matrix multiplication"; the BLIS
 * loop order): blocks of KC x NC of op(B) and MC x KC of op(A) are packed into contiguous micro-panels
 * (NR columns / MR rows), and an MR x NR register-blocked micro-kernel accumulates with fused
 * multiply-adds (GCC vector extensions: AVX-512 or AVX2 code from -march=native). Transposed operands are
 * handled by the packing, so no transpose is ever materialised. Work is split over up to `threads`
 * pthreads along the larger of M and N (each thread packs its own panels).
 *
 * JS API: sgemm(A, B, C, M, K, N, transA, transB, threads, batch, strideA, strideB, strideC)
 *   A, B, C: Float32Array (may be views of a wasm heap, shared or not); batch >= 1 independent products
 *   with element strides between them. Returns undefined; throws on bad arguments.
 */
#include "common.h"

/*
 * Micro-kernel shape per vector width: with AVX-512 (32 registers of 16 floats) an 8 x 32 block in 16
 * accumulators; otherwise the 6 x 16 block of 8-lane vectors, 12 accumulators (BLIS's Haswell kernel shape):
 * on AVX2 (16 registers of 8 floats) an 8 x 32 block of 16-lane vectors would need 32 registers, and GCC then
 * spills every accumulator to the stack (measured 2.4 GFLOP/s instead of ~60 per core); on arm64 NEON
 * (32 registers of 4 floats) the 6 x 16 block takes 24 accumulator registers where 8 x 32 would take 64.
 */
#if defined(__AVX512F__)
#define MR 8
#define NR 32
typedef v16 vnr;
typedef v16u vnru;
#define KC 256
#else
#define MR 6
#define NR 16
typedef float vnr __attribute__((vector_size(32), aligned(32)));
typedef float vnru __attribute__((vector_size(32), aligned(4)));
#define KC 320
#endif
#define VW (NR / 2)
#define MC 128
#define NC 2048


/*
 * B may also be a frozen weight in a low-precision format, widened to float32 while its panels are packed
 * (the micro-kernel and the packed panels are unchanged, so the compute stays float32):
 *   B_BF16: the upper 16 bits of each float32 (bfloat16; widening is a shift);
 *   B_INT8: int8 with one float32 scale per stored column (weight-only int8: w = q * scale[column]).
 */
enum { B_F32 = 0, B_BF16 = 1, B_INT8 = 2 };

typedef struct {
  const float *A;
  const float *B;
  float *C;
  int M, K, N;
  int transA, transB;
  int lda, ldb, ldc;
  int btype;
  const uint16_t *Bh;
  const int8_t *Bq;
  const float *bscale;
} gemm_args;

static inline float bf16_to_f32(uint16_t h) {
  uint32_t u = (uint32_t)h << 16;
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}

/* stored B[r][c] (row-major, leading dimension ldb) as float32 */
static inline float b_stored(const gemm_args *g, size_t r, size_t c) {
  size_t i = r * g->ldb + c;
  if (g->btype == B_F32) return g->B[i];
  if (g->btype == B_BF16) return bf16_to_f32(g->Bh[i]);
  return (float)g->Bq[i] * g->bscale[c];
}

/* op(B)[k][j] */
static inline float b_at(const gemm_args *g, int k, int j) {
  return g->transB ? b_stored(g, (size_t)j, (size_t)k) : b_stored(g, (size_t)k, (size_t)j);
}

/* op(A)[i][k] */
static inline float a_at(const gemm_args *g, int i, int k) {
  return g->transA ? g->A[(size_t)k * g->lda + i] : g->A[(size_t)i * g->lda + k];
}

/* Pack op(A)[i0:i0+mc, k0:k0+kc] into MR-row panels: panel p, element (k, r) at p*kc*MR + k*MR + r. */
static void pack_a(const gemm_args *g, int i0, int mc, int k0, int kc, float *Ap) {
  for (int p = 0; p < mc; p += MR) {
    int mr = mc - p < MR ? mc - p : MR;
    float *dst = Ap + (size_t)(p / MR) * kc * MR;
    if (!g->transA && mr == MR) {
      /* MR source rows read side by side, the panel written in order (k-major): one pass of sequential
         stores instead of MR passes of stores MR floats apart */
      const float *src[MR];
      for (int r = 0; r < MR; r++) src[r] = g->A + (size_t)(i0 + p + r) * g->lda + k0;
      for (int k = 0; k < kc; k++) {
#pragma GCC unroll 8
        for (int r = 0; r < MR; r++) dst[k * MR + r] = src[r][k];
      }
    } else if (!g->transA) {
      for (int r = 0; r < MR; r++) {
        if (r < mr) {
          const float *src = g->A + (size_t)(i0 + p + r) * g->lda + k0;
          for (int k = 0; k < kc; k++) dst[k * MR + r] = src[k];
        } else {
          for (int k = 0; k < kc; k++) dst[k * MR + r] = 0.f;
        }
      }
    } else {
      for (int k = 0; k < kc; k++) {
        const float *src = g->A + (size_t)(k0 + k) * g->lda + i0 + p;
        int r = 0;
        for (; r < mr; r++) dst[k * MR + r] = src[r];
        for (; r < MR; r++) dst[k * MR + r] = 0.f;
      }
    }
  }
}

/* Pack op(B)[k0:k0+kc, j0:j0+nc] into NR-column panels: panel q, element (k, c) at q*kc*NR + k*NR + c. */
static void pack_b(const gemm_args *g, int k0, int kc, int j0, int nc, float *Bp) {
  for (int q = 0; q < nc; q += NR) {
    int nr = nc - q < NR ? nc - q : NR;
    float *dst = Bp + (size_t)(q / NR) * kc * NR;
    if (g->btype != B_F32) {
      if (!g->transB) {
        for (int k = 0; k < kc; k++) {
          int c = 0;
          if (g->btype == B_BF16) {
            const uint16_t *src = g->Bh + (size_t)(k0 + k) * g->ldb + j0 + q;
            uint32_t *d = (uint32_t *)(dst + k * NR);
            for (; c < nr; c++) d[c] = (uint32_t)src[c] << 16;
          } else {
            const int8_t *src = g->Bq + (size_t)(k0 + k) * g->ldb + j0 + q;
            const float *sc = g->bscale + j0 + q;
            for (; c < nr; c++) dst[k * NR + c] = (float)src[c] * sc[c];
          }
          for (; c < NR; c++) dst[k * NR + c] = 0.f;
        }
      } else {
        /* op(B) = B^T (a frozen linear layer's forward, y = x W^T): column c of the panel is stored row j0+q+c,
           read contiguously and widened in one pass */
        for (int c = 0; c < NR; c++) {
          if (c >= nr) {
            for (int k = 0; k < kc; k++) dst[k * NR + c] = 0.f;
          } else if (g->btype == B_BF16) {
            const uint16_t *src = g->Bh + (size_t)(j0 + q + c) * g->ldb + k0;
            uint32_t *d = (uint32_t *)dst;
            for (int k = 0; k < kc; k++) d[k * NR + c] = (uint32_t)src[k] << 16;
          } else {
            const int8_t *src = g->Bq + (size_t)(j0 + q + c) * g->ldb + k0;
            const float *sc = g->bscale + k0;
            for (int k = 0; k < kc; k++) dst[k * NR + c] = (float)src[k] * sc[k];
          }
        }
      }
      continue;
    }
    if (!g->transB) {
      for (int k = 0; k < kc; k++) {
        const float *src = g->B + (size_t)(k0 + k) * g->ldb + j0 + q;
        int c = 0;
        if (nr == NR) {
          memcpy(dst + k * NR, src, NR * sizeof(float));
        } else {
          for (; c < nr; c++) dst[k * NR + c] = src[c];
          for (; c < NR; c++) dst[k * NR + c] = 0.f;
        }
      }
    } else {
      for (int c = 0; c < NR; c++) {
        if (c < nr) {
          const float *src = g->B + (size_t)(j0 + q + c) * g->ldb + k0;
          for (int k = 0; k < kc; k++) dst[k * NR + c] = src[k];
        } else {
          for (int k = 0; k < kc; k++) dst[k * NR + c] = 0.f;
        }
      }
    }
  }
}

/* C[0:mr, 0:nr] (+)= Ap (MR x kc panel) @ Bp (kc x NR panel). */
static void micro(int kc, const float *Ap, const float *Bp, float *C, int ldc, int mr, int nr, int first) {
  vnr c0[MR], c1[MR];
  for (int r = 0; r < MR; r++) {
    c0[r] = (vnr){0};
    c1[r] = (vnr){0};
  }
  for (int k = 0; k < kc; k++) {
    vnr b0 = *(const vnr *)(Bp + k * NR);
    vnr b1 = *(const vnr *)(Bp + k * NR + VW);
    const float *a = Ap + k * MR;
#pragma GCC unroll 8
    for (int r = 0; r < MR; r++) {
      vnr av = a[r] - (vnr){0}; /* x - 0 == x for every x (also -0): a plain broadcast, where 0 + x costs an add */
      c0[r] += av * b0;
      c1[r] += av * b1;
    }
  }
  if (mr == MR && nr == NR) {
    for (int r = 0; r < MR; r++) {
      vnru *d0 = (vnru *)(C + (size_t)r * ldc);
      vnru *d1 = (vnru *)(C + (size_t)r * ldc + VW);
      if (first) {
        *d0 = c0[r];
        *d1 = c1[r];
      } else {
        *d0 += c0[r];
        *d1 += c1[r];
      }
    }
  } else {
    float tmp[NR] __attribute__((aligned(64)));
    for (int r = 0; r < mr; r++) {
      *(vnr *)tmp = c0[r];
      *(vnr *)(tmp + VW) = c1[r];
      float *d = C + (size_t)r * ldc;
      if (first)
        for (int c = 0; c < nr; c++) d[c] = tmp[c];
      else
        for (int c = 0; c < nr; c++) d[c] += tmp[c];
    }
  }
}

/*
 * Threads: for each KC x NC block of op(B), the block is packed (by the caller, or as one pool job of NR-column
 * panels when it is large), then one pool job computes it in units of MU rows of op(A) x a range of B panels,
 * claimed dynamically; each unit packs its own A panels. Units are independent (pool tasks never wait for
 * each other), so the caller starts at once and a worker that is slow to wake only takes fewer units: with
 * the threads meeting at barriers instead, every product waited for the other thread to arrive (measured on
 * the stories260K epoch: the second thread brought the in-step products from 544-594 ms to 510-548 ms).
 * When op(A) has few row units (weight gradients, M = hidden size) the B panels are split into column
 * ranges too, so there are enough units for the threads.
 */
/* rows of op(A) per unit: a whole number of MR-row panels */
#define MU (MR * 8)

typedef struct {
  const gemm_args *g;
  float *Bp;
  int jc, nc, pc, kc;
  int colChunks, chunkPanels; /* B panels per unit: chunkPanels (the last chunk fewer) */
  atomic_int failed;
} gemm_job_t;

static void gemm_packb_task(void *ctx, int q) {
  gemm_job_t *j = (gemm_job_t *)ctx;
  const int jr = q * NR;
  pack_b(j->g, j->pc, j->kc, j->jc + jr, j->nc - jr < NR ? j->nc - jr : NR, j->Bp + (size_t)q * j->kc * NR);
}

static void gemm_unit_task(void *ctx, int u) {
  gemm_job_t *j = (gemm_job_t *)ctx;
  const gemm_args *g = j->g;
  float *Ap = scratch(SCRATCH_GEMM_A, (size_t)MU * KC * sizeof(float));
  if (!Ap) {
    atomic_store(&j->failed, 1);
    return;
  }
  const int ic = (u / j->colChunks) * MU, mc = g->M - ic < MU ? g->M - ic : MU;
  const int j0 = (u % j->colChunks) * j->chunkPanels * NR;
  const int j1 = j0 + j->chunkPanels * NR < j->nc ? j0 + j->chunkPanels * NR : j->nc;
  pack_a(g, ic, mc, j->pc, j->kc, Ap);
  for (int jr = j0; jr < j1; jr += NR) {
    const int nr = j->nc - jr < NR ? j->nc - jr : NR;
    for (int ir = 0; ir < mc; ir += MR) {
      const int mr = mc - ir < MR ? mc - ir : MR;
      micro(j->kc, Ap + (size_t)(ir / MR) * j->kc * MR, j->Bp + (size_t)(jr / NR) * j->kc * NR,
            g->C + (size_t)(ic + ir) * g->ldc + j->jc + jr, g->ldc, mr, nr, j->pc == 0);
    }
  }
}

/* The blocked product on up to `threads` threads; 0 when out of memory. */
static int gemm_blocked(const gemm_args *g, int threads) {
  const size_t kcMax = g->K < KC ? g->K : KC, ncMax = g->N < NC ? g->N : NC;
  float *Bp = scratch(SCRATCH_GEMM_B, kcMax * ((ncMax + NR - 1) / NR * NR) * sizeof(float));
  if (!Bp) return 0;
  gemm_job_t j;
  j.g = g;
  j.Bp = Bp;
  atomic_store(&j.failed, 0);
  const int rowUnits = (g->M + MU - 1) / MU;
  for (int jc = 0; jc < g->N; jc += NC) {
    const int nc = g->N - jc < NC ? g->N - jc : NC, nPanels = (nc + NR - 1) / NR;
    /* at least 4 units per thread when the rows alone give fewer (a dynamic split balances then) */
    int chunks = 1;
    if (threads > 1 && rowUnits < 4 * threads) chunks = (4 * threads + rowUnits - 1) / rowUnits;
    if (chunks > nPanels) chunks = nPanels;
    j.chunkPanels = (nPanels + chunks - 1) / chunks;
    j.colChunks = (nPanels + j.chunkPanels - 1) / j.chunkPanels;
    j.jc = jc;
    j.nc = nc;
    /* K in equal blocks of at most KC (K = 288 as one block, not 256 + 32: each block re-reads and
       re-writes C, so a short tail block costs nearly as much C traffic as a full one) */
    const int kblk = (g->K + KC - 1) / KC, kcb = (g->K + kblk - 1) / kblk;
    for (int pc = 0; pc < g->K; pc += kcb) {
      j.pc = pc;
      j.kc = g->K - pc < kcb ? g->K - pc : kcb;
      /* a large block of B packed by the threads (a job of its own), a small one by the caller */
      if (threads > 1 && (size_t)j.kc * nc >= 131072) parallel_for(gemm_packb_task, &j, nPanels, threads);
      else for (int q = 0; q < nPanels; q++) gemm_packb_task(&j, q);
      parallel_for(gemm_unit_task, &j, rowUnits * j.colChunks, threads);
      if (atomic_load(&j.failed)) return 0;
    }
  }
  return 1;
}

/*
 * Products with a long reduction and a small C (weight gradients: dW = X^T dY, K = tokens, M x N = a weight):
 * the reduction is split into S slices, one pool task each (slice s packs its own panels of op(A) and op(B)
 * for k in its range and writes C itself for s = 0, else a partial product), and the caller adds the partials.
 * The blocked split instead had 2 row units for M = 64 (stories260K), and ran 5 jobs of K blocks, repacking
 * op(A) for every range of columns.
 */
#define KS_MAX 16
typedef struct {
  const gemm_args *g;
  float *part; /* S - 1 partial products [M, N] */
  int kper;
  atomic_int failed;
} ksplit_t;

static void ksplit_task(void *ctx, int s) {
  ksplit_t *j = (ksplit_t *)ctx;
  gemm_args gs = *j->g;
  const int M = gs.M, N = gs.N, nPanels = (N + NR - 1) / NR;
  const int k0 = s * j->kper, k1 = gs.K - k0 < j->kper ? gs.K : k0 + j->kper;
  if (s > 0) {
    gs.C = j->part + (size_t)(s - 1) * M * N;
    gs.ldc = N;
  }
  float *Ap = scratch(SCRATCH_GEMM_A, (size_t)MU * KC * sizeof(float));
  float *Bp = scratch(SCRATCH_GEMM_B, (size_t)KC * nPanels * NR * sizeof(float));
  if (!Ap || !Bp) {
    atomic_store(&j->failed, 1);
    return;
  }
  const int kblk = (k1 - k0 + KC - 1) / KC, kcb = (k1 - k0 + kblk - 1) / kblk;
  for (int pc = k0; pc < k1; pc += kcb) {
    const int kc = k1 - pc < kcb ? k1 - pc : kcb;
    for (int q = 0; q < nPanels; q++) pack_b(&gs, pc, kc, q * NR, N - q * NR < NR ? N - q * NR : NR, Bp + (size_t)q * kc * NR);
    for (int ic = 0; ic < M; ic += MU) {
      const int mc = M - ic < MU ? M - ic : MU;
      pack_a(&gs, ic, mc, pc, kc, Ap);
      for (int jr = 0; jr < N; jr += NR) {
        const int nr = N - jr < NR ? N - jr : NR;
        for (int ir = 0; ir < mc; ir += MR) {
          const int mr = mc - ir < MR ? mc - ir : MR;
          micro(kc, Ap + (size_t)(ir / MR) * kc * MR, Bp + (size_t)(jr / NR) * kc * NR, gs.C + (size_t)(ic + ir) * gs.ldc + jr, gs.ldc,
                mr, nr, pc == k0);
        }
      }
    }
  }
}

/* The split product when it applies (threads > 1, K long against M and N, C small); 1 done, 0 not applicable, -1 out of memory. */
static int gemm_ksplit(const gemm_args *g, int threads) {
  const int M = g->M, K = g->K, N = g->N, mn = M > N ? M : N;
  if (threads < 2 || N > NC || K < 512 || K < 2 * mn || (size_t)M * N > 262144 || g->ldc != N) return 0;
  int S = (K + KC - 1) / KC; /* slices of at most KC: one packed block each */
  if (S < 2 * threads) S = 2 * threads;
  if (S > KS_MAX) S = KS_MAX;
  ksplit_t j;
  j.g = g;
  j.kper = (K + S - 1) / S;
  S = (K + j.kper - 1) / j.kper;
  j.part = scratch(SCRATCH_GEMM_PART, (size_t)(S - 1) * M * N * sizeof(float));
  if (!j.part) return -1;
  atomic_store(&j.failed, 0);
  parallel_for(ksplit_task, &j, S, threads);
  if (atomic_load(&j.failed)) return -1;
  const size_t n = (size_t)M * N;
  for (int s = 1; s < S; s++) {
    const float *restrict p = j.part + (size_t)(s - 1) * n;
    float *restrict c = g->C;
    for (size_t i = 0; i < n; i++) c[i] += p[i];
  }
  return 1;
}

/*
 * Small products with a short reduction (K <= 32, N >= 32), e.g. attention's per-head
 * q k^T (K = head dim): the 8x32 panel kernel loads and stores its C block for only
 * a few k steps there (for few columns, N < 32, this loop measured slower than the panels). Instead op(B) is packed once into a contiguous
 * K x N block and each row of C is accumulated as sum_k op(A)[i][k] B[k][:] (contiguous, vectorised by
 * the compiler).
 */
static int gemm_small(const gemm_args *g) {
  int M = g->M, K = g->K, N = g->N;
  float *Bt = scratch(SCRATCH_SMALL_B, (size_t)K * N * sizeof(float));
  float *acc = scratch(SCRATCH_SMALL_ACC, (size_t)N * sizeof(float));
  if (!Bt || !acc) return 0;
  for (int k = 0; k < K; k++)
    for (int j = 0; j < N; j++)
      Bt[(size_t)k * N + j] = b_at(g, k, j);
  for (int i = 0; i < M; i++) {
    for (int j = 0; j < N; j++) acc[j] = 0.f;
    for (int k = 0; k < K; k++) {
      const float a = a_at(g, i, k);
      const float *restrict b = Bt + (size_t)k * N;
      float *restrict c = acc;
      for (int j = 0; j < N; j++) c[j] += a * b[j];
    }
    memcpy(g->C + (size_t)i * g->ldc, acc, (size_t)N * sizeof(float));
  }
  return 1;
}

/*
 * Narrow products (N <= 16 columns, e.g. attention's P v, dS k, dS^T q with N = head dim): op(B) is packed
 * into K rows of 16 lanes (zero-padded) and 8 rows of C are accumulated in registers at once, one fused
 * multiply-add per row and k (the 8x32 panel kernel would waste at least half its columns).
 */
static int gemm_narrow(const gemm_args *g) {
  int M = g->M, K = g->K, N = g->N;
  v16 *Bt = scratch(SCRATCH_SMALL_B, (size_t)K * sizeof(v16));
  if (!Bt) return 0;
  for (int k = 0; k < K; k++) {
    float *row = (float *)&Bt[k];
    for (int j = 0; j < 16; j++)
      row[j] = j >= N ? 0.f : b_at(g, k, j);
  }
  for (int i0 = 0; i0 < M; i0 += 8) {
    int mr = M - i0 < 8 ? M - i0 : 8;
    v16 acc[8];
    for (int r = 0; r < 8; r++) acc[r] = (v16){0};
    if (mr == 8) {
      for (int k = 0; k < K; k++) {
        v16 b = Bt[k];
        for (int r = 0; r < 8; r++) acc[r] += a_at(g, i0 + r, k) * b;
      }
    } else {
      for (int k = 0; k < K; k++) {
        v16 b = Bt[k];
        for (int r = 0; r < mr; r++) acc[r] += a_at(g, i0 + r, k) * b;
      }
    }
    for (int r = 0; r < mr; r++) memcpy(g->C + (size_t)(i0 + r) * g->ldc, &acc[r], (size_t)N * sizeof(float));
  }
  return 1;
}

/* C = op(A) op(B); 0 when out of memory. */
static int gemm(const gemm_args *g, int threads) {
  if (g->M == 0 || g->N == 0) return 1;
  if (g->K == 0) {
    for (int i = 0; i < g->M; i++) memset(g->C + (size_t)i * g->ldc, 0, (size_t)g->N * sizeof(float));
    return 1;
  }
  double flops = 2.0 * g->M * (double)g->K * g->N;
  if (g->K <= 32 && g->N >= 32 && flops < 4e6 && gemm_small(g)) return 1;
  if (g->N <= 16 && flops < 4e6 && gemm_narrow(g)) return 1;
  if (threads > 8) threads = 8;
  threads = mt_threads(flops, threads);
  const int ks = gemm_ksplit(g, threads);
  if (ks != 0) return ks > 0;
  return gemm_blocked(g, threads);
}

typedef struct {
  const gemm_args *g0;
  int batch;
  int64_t sA, sB, sC;
  atomic_int failed;
} batch_t;

static void batch_task(void *ctx, int b) {
  batch_t *bt = (batch_t *)ctx;
  gemm_args g = *bt->g0;
  g.A += b * bt->sA;
  g.B += b * bt->sB;
  g.C += b * bt->sC;
  if (!gemm(&g, 1)) atomic_store(&bt->failed, 1);
}

static napi_value sgemm(napi_env env, napi_callback_info info) {
  size_t argc = 13;
  napi_value argv[13];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 13) {
    napi_throw_type_error(env, "GEMM_ARGS", "sgemm(A, B, C, M, K, N, transA, transB, threads, batch, strideA, strideB, strideC)");
    return NULL;
  }
  float *A, *B, *C;
  size_t la, lb, lc;
  int64_t M, K, N, tA, tB, threads, batch, sA, sB, sC;
  if (!get_f32(env, argv[0], &A, &la) || !get_f32(env, argv[1], &B, &lb) || !get_f32(env, argv[2], &C, &lc) ||
      !get_i(env, argv[3], &M) || !get_i(env, argv[4], &K) || !get_i(env, argv[5], &N) || !get_i(env, argv[6], &tA) ||
      !get_i(env, argv[7], &tB) || !get_i(env, argv[8], &threads) || !get_i(env, argv[9], &batch) ||
      !get_i(env, argv[10], &sA) || !get_i(env, argv[11], &sB) || !get_i(env, argv[12], &sC)) {
    napi_throw_type_error(env, "GEMM_ARGS", "sgemm: A, B, C must be Float32Array and the rest integers");
    return NULL;
  }
  if (M < 0 || K < 0 || N < 0 || batch < 1 ||
      (size_t)((batch - 1) * sA + M * K) > la || (size_t)((batch - 1) * sB + K * N) > lb ||
      (size_t)((batch - 1) * sC + M * N) > lc) {
    napi_throw_range_error(env, "GEMM_BOUNDS", "sgemm: array too short for the given shapes");
    return NULL;
  }
  gemm_args g0 = {A, B, C, (int)M, (int)K, (int)N, (int)tA, (int)tB, (int)(tA ? M : K), (int)(tB ? K : N), (int)N, B_F32, NULL, NULL, NULL};
  if (batch > 1 && 2.0 * M * K * N < 4e6 && mt_threads(2.0 * M * K * N * batch, threads) > 1) {
    /* many small products: spread the batch over the threads, one single-threaded product at a time */
    batch_t bt = {&g0, (int)batch, sA, sB, sC, 0};
    parallel_for(batch_task, &bt, (int)batch, (int)threads);
    if (atomic_load(&bt.failed)) napi_throw_error(env, "GEMM_OOM", "sgemm: out of memory");
    return NULL;
  }
  for (int64_t b = 0; b < batch; b++) {
    gemm_args g = g0;
    g.A = A + b * sA;
    g.B = B + b * sB;
    g.C = C + b * sC;
    if (!gemm(&g, (int)threads)) {
      napi_throw_error(env, "GEMM_OOM", "sgemm: out of memory");
      return NULL;
    }
  }
  return NULL;
}

/*
 * sgemmLowp(A, B, scale, C, M, K, N, transA, transB, threads, btype): one product C = op(A) op(B) with B a
 * frozen low-precision weight (btype 1: B Uint16Array of bfloat16; 2: B Int8Array with scale Float32Array
 * of one entry per stored column). Throws on bad arguments.
 */
static napi_value sgemm_lowp(napi_env env, napi_callback_info info) {
  size_t argc = 11;
  napi_value argv[11];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  float *A, *C, *S = NULL;
  size_t la, lc, lb = 0, ls = 0, off;
  int64_t M, K, N, tA, tB, threads, btype;
  napi_typedarray_type type;
  void *bp = NULL;
  napi_value ab;
  if (argc < 11 || !get_f32(env, argv[0], &A, &la) || napi_get_typedarray_info(env, argv[1], &type, &lb, &bp, &ab, &off) != napi_ok ||
      !get_f32(env, argv[3], &C, &lc) || !get_i(env, argv[4], &M) || !get_i(env, argv[5], &K) || !get_i(env, argv[6], &N) ||
      !get_i(env, argv[7], &tA) || !get_i(env, argv[8], &tB) || !get_i(env, argv[9], &threads) || !get_i(env, argv[10], &btype) ||
      !(btype == B_BF16 ? type == napi_uint16_array : btype == B_INT8 && type == napi_int8_array) ||
      (btype == B_INT8 && !get_f32(env, argv[2], &S, &ls))) {
    napi_throw_type_error(env, "GEMM_ARGS", "sgemmLowp(A: Float32Array, B: Uint16Array (btype 1) | Int8Array (btype 2), scale: Float32Array, C, M, K, N, transA, transB, threads, btype)");
    return NULL;
  }
  if (M < 0 || K < 0 || N < 0 || (size_t)(M * K) > la || (size_t)(K * N) > lb || (size_t)(M * N) > lc ||
      (btype == B_INT8 && ls < (size_t)(tB ? K : N))) {
    napi_throw_range_error(env, "GEMM_BOUNDS", "sgemmLowp: array too short for the given shapes");
    return NULL;
  }
  gemm_args g = {A, NULL, C, (int)M, (int)K, (int)N, (int)tA, (int)tB, (int)(tA ? M : K), (int)(tB ? K : N), (int)N, (int)btype,
                 btype == B_BF16 ? (const uint16_t *)bp : NULL, btype == B_INT8 ? (const int8_t *)bp : NULL, S};
  if (!gemm(&g, (int)threads)) napi_throw_error(env, "GEMM_OOM", "sgemmLowp: out of memory");
  return NULL;
}
