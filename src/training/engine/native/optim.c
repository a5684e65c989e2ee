/* Fused optimizer updates (part of addon.c). */
#include "common.h"

typedef struct {
  const float *p, *g, *m, *v;
  float *po, *mo, *vo;
  size_t n, chunk;
  float decay, b1, b2, c1, c2, step, isb2, eps;
} adamw_t;

/* vectorised only with -fno-math-errno (addon.ts builds with it): else GCC keeps sqrtf's errno branch inside the
   loop and runs it one element at a time */
static void adamw_task(void *ctx, int task) {
  const adamw_t *a = (const adamw_t *)ctx;
  const size_t i0 = (size_t)task * a->chunk, i1 = i0 + a->chunk < a->n ? i0 + a->chunk : a->n;
  const float *p = a->p, *g = a->g, *m = a->m, *v = a->v;
  float *po = a->po, *mo = a->mo, *vo = a->vo;
  /* ivdep: no element depends on another's output (GCC did not vectorise this loop with restrict pointers) */
#pragma GCC ivdep
  for (size_t i = i0; i < i1; i++) {
    float gi = g[i];
    float mi = a->b1 * m[i] + a->c1 * gi;
    float vi = a->b2 * v[i] + a->c2 * gi * gi;
    float denom = __builtin_sqrtf(vi) * a->isb2 + a->eps;
    po[i] = p[i] * a->decay - a->step * (mi / denom);
    mo[i] = mi;
    vo[i] = vi;
  }
}

#define ADAMW_CHUNK 65536

/*
 * adamw(p, g, m, v, pOut, mOut, vOut, lr, beta1, beta2, eps, weightDecay, step[, threads]): one AdamW update
 * (torch.optim.AdamW; Loshchilov & Hutter 2019, Algorithm 2), fused, out of place, in chunks over the pool:
 *   p' = p (1 - lr wd);  m' = b1 m + (1 - b1) g;  v' = b2 v + (1 - b2) g^2
 *   p' -= (lr / (1 - b1^t)) m' / (sqrt(v') / sqrt(1 - b2^t) + eps)
 * Every element's arithmetic is the same whatever the thread count.
 */
static napi_value adamw(napi_env env, napi_callback_info info) {
  size_t argc = 14;
  napi_value argv[14];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  float *p, *g, *m, *v, *po, *mo, *vo;
  size_t n, n2;
  double lr, b1, b2, eps, wd;
  int64_t t, threads = 1;
  if (argc < 13 || !get_f32(env, argv[0], &p, &n) || !get_f32(env, argv[1], &g, &n2) || n2 != n ||
      !get_f32(env, argv[2], &m, &n2) || n2 != n || !get_f32(env, argv[3], &v, &n2) || n2 != n ||
      !get_f32(env, argv[4], &po, &n2) || n2 != n || !get_f32(env, argv[5], &mo, &n2) || n2 != n ||
      !get_f32(env, argv[6], &vo, &n2) || n2 != n || napi_get_value_double(env, argv[7], &lr) != napi_ok ||
      napi_get_value_double(env, argv[8], &b1) != napi_ok || napi_get_value_double(env, argv[9], &b2) != napi_ok ||
      napi_get_value_double(env, argv[10], &eps) != napi_ok || napi_get_value_double(env, argv[11], &wd) != napi_ok ||
      !get_i(env, argv[12], &t) || (argc > 13 && !get_i(env, argv[13], &threads))) {
    napi_throw_type_error(env, "ADAMW_ARGS",
                          "adamw(p, g, m, v, pOut, mOut, vOut: Float32Array of one length, lr, beta1, beta2, eps, weightDecay, step[, threads])");
    return NULL;
  }
  double bc1 = 1.0, bc2 = 1.0;
  for (int64_t i = 0; i < t; i++) { bc1 *= b1; bc2 *= b2; }
  bc1 = 1.0 - bc1;
  bc2 = 1.0 - bc2;
  adamw_t a = {p, g, m, v, po, mo, vo, n, ADAMW_CHUNK, (float)(1.0 - lr * wd), (float)b1, (float)b2, (float)(1.0 - b1), (float)(1.0 - b2),
               (float)(lr / bc1), (float)(1.0 / __builtin_sqrt(bc2)), (float)eps};
  parallel_for(adamw_task, &a, (int)((n + ADAMW_CHUNK - 1) / ADAMW_CHUNK), mt_threads(10.0 * n, threads));
  return NULL;
}
