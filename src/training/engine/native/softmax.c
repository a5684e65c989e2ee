/* Row softmax with log-sum-exp, rows split over threads (part of addon.c). */
#include "common.h"

typedef struct {
  const float *X;
  float *P, *L;
  int n, V, rows; /* rows per task */
} smx_t;

static void softmax_row(const float *x, float *p, float *lse, int V) {
  int j = 0;
  va vm = (va){0} - 3.0e38f;
  for (; j + AW <= V; j += AW) {
    const va v = *(const vau *)(x + j);
    vm = va_sel(v > vm, v, vm);
  }
  float m = va_hmax(vm);
  for (; j < V; j++) m = x[j] > m ? x[j] : m;
  va vs0 = (va){0}, vs1 = (va){0};
  const va mv = (va){0} + m;
  for (j = 0; j + 2 * AW <= V; j += 2 * AW) {
    const va e0 = va_exp(*(const vau *)(x + j) - mv), e1 = va_exp(*(const vau *)(x + j + AW) - mv);
    *(vau *)(p + j) = e0;
    *(vau *)(p + j + AW) = e1;
    vs0 += e0;
    vs1 += e1;
  }
  double s = (double)va_hsum(vs0) + (double)va_hsum(vs1);
  for (; j < V; j++) {
    const float e = va_exp((va){0} + (x[j] - m))[0];
    p[j] = e;
    s += e;
  }
  const float invf = (float)(1.0 / s);
  for (j = 0; j + AW <= V; j += AW) *(vau *)(p + j) *= invf;
  for (; j < V; j++) p[j] *= invf;
  *lse = m + (float)__builtin_log(s);
}

static void smx_task(void *ctx, int task) {
  smx_t *t = (smx_t *)ctx;
  int end = (task + 1) * t->rows < t->n ? (task + 1) * t->rows : t->n;
  for (int i = task * t->rows; i < end; i++)
    softmax_row(t->X + (size_t)i * t->V, t->P + (size_t)i * t->V, t->L + i, t->V);
}

/* softmaxLse(X [n*V], P [n*V], L [n], n, V, threads): P = softmax(X) by rows, L = logsumexp(X) by rows. */
static napi_value softmax_lse(napi_env env, napi_callback_info info) {
  size_t argc = 6;
  napi_value argv[6];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  float *X, *P, *L;
  size_t lx, lp, ll;
  int64_t n, V, threads;
  if (argc < 6 || !get_f32(env, argv[0], &X, &lx) || !get_f32(env, argv[1], &P, &lp) || !get_f32(env, argv[2], &L, &ll) ||
      !get_i(env, argv[3], &n) || !get_i(env, argv[4], &V) || !get_i(env, argv[5], &threads) || n < 0 || V < 1 ||
      (size_t)(n * V) > lx || (size_t)(n * V) > lp || (size_t)n > ll) {
    napi_throw_type_error(env, "SOFTMAX_ARGS", "softmaxLse(X, P, L: Float32Array, n, V, threads) with X, P of n*V and L of n");
    return NULL;
  }
  /* tasks of about 64k floats */
  int rows = V >= 65536 ? 1 : (int)(65536 / V);
  smx_t t = {X, P, L, (int)n, (int)V, rows};
  parallel_for(smx_task, &t, (int)((n + rows - 1) / rows), mt_threads(10.0 * n * V, threads));
  return NULL;
}
