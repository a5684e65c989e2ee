/*
 * Fused element-wise layers with their analytic gradients (part of addon.c): RMSNorm and SwiGLU.
 * Each replaces 3-9 tfjs kernels (and as many passes over memory) by one pass; on the small models the
 * per-kernel dispatch cost dominated these layers.
 *
 *   RMSNorm (Zhang & Sennrich 2019; llama2.c model.py): r = (mean(x^2) + eps)^-1/2, y = w x r
 *     dx = r (g w - xhat mean(g w xhat)), xhat = x r;  dw = sum_rows(g xhat)
 *   SwiGLU (Shazeer 2020): y = silu(a) b = a s(a) b, s = sigmoid
 *     da = g b s (1 + a (1 - s)),  db = g a s
 */
#include "common.h"

typedef struct {
  const float *x, *w, *r, *g;
  float *y, *rout, *dx, *dwPart; /* dwPart [tasks, D]: per-task partial sums of dw */
  int N, D, rows;                /* rows per task */
  float eps;
} rms_t;

static void rms_fwd_task(void *ctx, int task) {
  rms_t *a = (rms_t *)ctx;
  const int D = a->D, end = (task + 1) * a->rows < a->N ? (task + 1) * a->rows : a->N;
  for (int i = task * a->rows; i < end; i++) {
    const float *x = a->x + (size_t)i * D;
    float *y = a->y + (size_t)i * D;
    double ss = 0;
    for (int d = 0; d < D; d++) ss += (double)x[d] * x[d];
    const float r = (float)(1.0 / sqrt(ss / D + a->eps));
    a->rout[i] = r;
    for (int d = 0; d < D; d++) y[d] = a->w[d] * (x[d] * r);
  }
}

static void rms_bwd_task(void *ctx, int task) {
  rms_t *a = (rms_t *)ctx;
  const int D = a->D, end = (task + 1) * a->rows < a->N ? (task + 1) * a->rows : a->N;
  float *dw = a->dwPart + (size_t)task * D;
  memset(dw, 0, (size_t)D * sizeof(float));
  for (int i = task * a->rows; i < end; i++) {
    const float *x = a->x + (size_t)i * D, *g = a->g + (size_t)i * D;
    float *dx = a->dx + (size_t)i * D;
    const float r = a->r[i];
    double m = 0;
    for (int d = 0; d < D; d++) {
      const float xh = x[d] * r;
      m += (double)(g[d] * a->w[d]) * xh;
      dw[d] += g[d] * xh;
    }
    const float mean = (float)(m / D);
    for (int d = 0; d < D; d++) dx[d] = r * (g[d] * a->w[d] - x[d] * r * mean);
  }
}

/* rows per task: about 16k floats, at most 64 tasks */
static int rms_rows(int N, int D) {
  int rows = D >= 16384 ? 1 : 16384 / D;
  if ((N + rows - 1) / rows > 64) rows = (N + 63) / 64;
  return rows < 1 ? 1 : rows;
}

/* rmsNormFwd(x [N*D], w [D], y [N*D], r [N], N, D, eps, threads) */
static napi_value rmsnorm_fwd(napi_env env, napi_callback_info info) {
  size_t argc = 8;
  napi_value argv[8];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  float *x, *w, *y, *r;
  size_t lx, lw, ly, lr;
  int64_t N, D, threads;
  double eps;
  if (argc < 8 || !get_f32(env, argv[0], &x, &lx) || !get_f32(env, argv[1], &w, &lw) || !get_f32(env, argv[2], &y, &ly) ||
      !get_f32(env, argv[3], &r, &lr) || !get_i(env, argv[4], &N) || !get_i(env, argv[5], &D) || !get_f64(env, argv[6], &eps) ||
      !get_i(env, argv[7], &threads) || N < 0 || D < 1 || lx < (size_t)(N * D) || ly < (size_t)(N * D) || lw < (size_t)D ||
      lr < (size_t)N) {
    napi_throw_type_error(env, "RMSNORM_ARGS", "rmsNormFwd(x [N*D], w [D], y [N*D], r [N]: Float32Array, N, D, eps, threads)");
    return NULL;
  }
  rms_t a = {x, w, NULL, NULL, y, r, NULL, NULL, (int)N, (int)D, rms_rows((int)N, (int)D), (float)eps};
  int tasks = (int)((N + a.rows - 1) / a.rows);
  parallel_for(rms_fwd_task, &a, tasks, mt_threads(4.0 * N * D, threads));
  return NULL;
}

/* rmsNormBwd(g [N*D], x [N*D], w [D], r [N], dx [N*D], dw [D], N, D, threads) */
static napi_value rmsnorm_bwd(napi_env env, napi_callback_info info) {
  size_t argc = 9;
  napi_value argv[9];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  float *g, *x, *w, *r, *dx, *dw;
  size_t lg, lx, lw, lr, ldx, ldw;
  int64_t N, D, threads;
  if (argc < 9 || !get_f32(env, argv[0], &g, &lg) || !get_f32(env, argv[1], &x, &lx) || !get_f32(env, argv[2], &w, &lw) ||
      !get_f32(env, argv[3], &r, &lr) || !get_f32(env, argv[4], &dx, &ldx) || !get_f32(env, argv[5], &dw, &ldw) ||
      !get_i(env, argv[6], &N) || !get_i(env, argv[7], &D) || !get_i(env, argv[8], &threads) || N < 0 || D < 1 ||
      lg < (size_t)(N * D) || lx < (size_t)(N * D) || ldx < (size_t)(N * D) || lw < (size_t)D || ldw < (size_t)D || lr < (size_t)N) {
    napi_throw_type_error(env, "RMSNORM_ARGS", "rmsNormBwd(g, x [N*D], w [D], r [N], dx [N*D], dw [D]: Float32Array, N, D, threads)");
    return NULL;
  }
  rms_t a = {x, w, r, g, NULL, NULL, dx, NULL, (int)N, (int)D, rms_rows((int)N, (int)D), 0.f};
  int tasks = (int)((N + a.rows - 1) / a.rows);
  if (tasks < 1) tasks = 1;
  a.dwPart = malloc((size_t)tasks * D * sizeof(float));
  if (!a.dwPart) {
    napi_throw_error(env, "RMSNORM_OOM", "rmsNormBwd: out of memory");
    return NULL;
  }
  parallel_for(rms_bwd_task, &a, tasks, mt_threads(8.0 * N * D, threads));
  for (int d = 0; d < D; d++) {
    double s = 0;
    for (int t = 0; t < tasks; t++) s += a.dwPart[(size_t)t * D + d];
    dw[d] = (float)s;
  }
  free(a.dwPart);
  return NULL;
}

typedef struct {
  const float *a, *b, *g;
  float *y, *da, *db;
  size_t n, chunk;
} swiglu_t;

/* sigmoid of AW lanes with common.h's vector exp */
static inline va vsigmoid(va a) { return 1.f / (1.f + va_exp(-a)); }

/* lanes [i, i + n) of x as a va (n <= AW; the rest zero) */
static inline va vload_n(const float *x, size_t n) {
  if (n == AW) return *(const vau *)x;
  va v = (va){0};
  for (size_t l = 0; l < n; l++) v[l] = x[l];
  return v;
}

/* store the first n lanes of v at x */
static inline void vstore_n(float *x, va v, size_t n) {
  if (n == AW) {
    *(vau *)x = v;
    return;
  }
  for (size_t l = 0; l < n; l++) x[l] = v[l];
}

static void swiglu_fwd_task(void *ctx, int task) {
  swiglu_t *t = (swiglu_t *)ctx;
  size_t i0 = (size_t)task * t->chunk, i1 = i0 + t->chunk < t->n ? i0 + t->chunk : t->n;
  for (size_t i = i0; i < i1; i += AW) {
    size_t n = i1 - i < AW ? i1 - i : AW;
    va a = vload_n(t->a + i, n), b = vload_n(t->b + i, n);
    va y = a * vsigmoid(a) * b;
    vstore_n(t->y + i, y, n);
  }
}

static void swiglu_bwd_task(void *ctx, int task) {
  swiglu_t *t = (swiglu_t *)ctx;
  size_t i0 = (size_t)task * t->chunk, i1 = i0 + t->chunk < t->n ? i0 + t->chunk : t->n;
  for (size_t i = i0; i < i1; i += AW) {
    size_t n = i1 - i < AW ? i1 - i : AW;
    va a = vload_n(t->a + i, n), b = vload_n(t->b + i, n), g = vload_n(t->g + i, n);
    va s = vsigmoid(a), gs = g * s;
    va da = gs * b * (1.f + a * (1.f - s)), db = gs * a;
    vstore_n(t->da + i, da, n);
    vstore_n(t->db + i, db, n);
  }
}

#define SWIGLU_CHUNK 16384

/* swigluFwd(a, b, y: Float32Array [n], threads) */
static napi_value swiglu_fwd(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  float *a, *b, *y;
  size_t la, lb, ly;
  int64_t threads;
  if (argc < 4 || !get_f32(env, argv[0], &a, &la) || !get_f32(env, argv[1], &b, &lb) || !get_f32(env, argv[2], &y, &ly) ||
      !get_i(env, argv[3], &threads) || lb < la || ly < la) {
    napi_throw_type_error(env, "SWIGLU_ARGS", "swigluFwd(a, b, y: Float32Array of one length, threads)");
    return NULL;
  }
  swiglu_t t = {a, b, NULL, y, NULL, NULL, la, SWIGLU_CHUNK};
  parallel_for(swiglu_fwd_task, &t, (int)((la + SWIGLU_CHUNK - 1) / SWIGLU_CHUNK), mt_threads(10.0 * la, threads));
  return NULL;
}

/* swigluBwd(g, a, b, da, db: Float32Array [n], threads) */
static napi_value swiglu_bwd(napi_env env, napi_callback_info info) {
  size_t argc = 6;
  napi_value argv[6];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  float *g, *a, *b, *da, *db;
  size_t lg, la, lb, lda, ldb;
  int64_t threads;
  if (argc < 6 || !get_f32(env, argv[0], &g, &lg) || !get_f32(env, argv[1], &a, &la) || !get_f32(env, argv[2], &b, &lb) ||
      !get_f32(env, argv[3], &da, &lda) || !get_f32(env, argv[4], &db, &ldb) || !get_i(env, argv[5], &threads) || lg < la ||
      lb < la || lda < la || ldb < la) {
    napi_throw_type_error(env, "SWIGLU_ARGS", "swigluBwd(g, a, b, da, db: Float32Array of one length, threads)");
    return NULL;
  }
  swiglu_t t = {a, b, g, NULL, da, db, la, SWIGLU_CHUNK};
  parallel_for(swiglu_bwd_task, &t, (int)((la + SWIGLU_CHUNK - 1) / SWIGLU_CHUNK), mt_threads(15.0 * la, threads));
  return NULL;
}
