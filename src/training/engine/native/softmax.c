/* Row softmax with log-sum-exp, rows split over threads (part of addon.c). */
#include "common.h"

typedef struct {
  const float *X;
  float *P, *L;
  int n, V, rows; /* rows per task */
} smx_t;

static void softmax_row(const float *x, float *p, float *lse, int V) {
  int j = 0;
  v16 vm = (v16){0} - 3.0e38f;
  for (; j + 16 <= V; j += 16) {
    v16 v;
    memcpy(&v, x + j, sizeof v);
    vm = vsel(v > vm, v, vm);
  }
  float m = -3.0e38f;
  for (int q = 0; q < 16; q++) m = vm[q] > m ? vm[q] : m;
  for (; j < V; j++) m = x[j] > m ? x[j] : m;
  v16 vs = (v16){0};
  v16 mv = (v16){0} + m;
  for (j = 0; j + 16 <= V; j += 16) {
    v16 v;
    memcpy(&v, x + j, sizeof v);
    v16 e = vexp(v - mv);
    memcpy(p + j, &e, sizeof e);
    vs += e;
  }
  double s = 0;
  for (int q = 0; q < 16; q++) s += vs[q];
  for (; j < V; j++) {
    v16 v = (v16){0} + (x[j] - m);
    float e = vexp(v)[0];
    p[j] = e;
    s += e;
  }
  v16 inv = (v16){0} + (float)(1.0 / s);
  for (j = 0; j + 16 <= V; j += 16) {
    v16 v;
    memcpy(&v, p + j, sizeof v);
    v *= inv;
    memcpy(p + j, &v, sizeof v);
  }
  for (; j < V; j++) p[j] *= (float)(1.0 / s);
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
