/* Fused optimizer updates (part of addon.c). */
#include "common.h"

/*
 * adamw(p, g, m, v, pOut, mOut, vOut, lr, beta1, beta2, eps, weightDecay, step): one AdamW update
 * (torch.optim.AdamW; Loshchilov & Hutter 2019, Algorithm 2), fused, out of place:
 *   p' = p (1 - lr wd);  m' = b1 m + (1 - b1) g;  v' = b2 v + (1 - b2) g^2
 *   p' -= (lr / (1 - b1^t)) m' / (sqrt(v') / sqrt(1 - b2^t) + eps)
 */
static napi_value adamw(napi_env env, napi_callback_info info) {
  size_t argc = 13;
  napi_value argv[13];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  float *p, *g, *m, *v, *po, *mo, *vo;
  size_t n, n2;
  double lr, b1, b2, eps, wd;
  int64_t t;
  if (argc < 13 || !get_f32(env, argv[0], &p, &n) || !get_f32(env, argv[1], &g, &n2) || n2 != n ||
      !get_f32(env, argv[2], &m, &n2) || n2 != n || !get_f32(env, argv[3], &v, &n2) || n2 != n ||
      !get_f32(env, argv[4], &po, &n2) || n2 != n || !get_f32(env, argv[5], &mo, &n2) || n2 != n ||
      !get_f32(env, argv[6], &vo, &n2) || n2 != n || napi_get_value_double(env, argv[7], &lr) != napi_ok ||
      napi_get_value_double(env, argv[8], &b1) != napi_ok || napi_get_value_double(env, argv[9], &b2) != napi_ok ||
      napi_get_value_double(env, argv[10], &eps) != napi_ok || napi_get_value_double(env, argv[11], &wd) != napi_ok ||
      !get_i(env, argv[12], &t)) {
    napi_throw_type_error(env, "ADAMW_ARGS", "adamw(p, g, m, v, pOut, mOut, vOut: Float32Array of one length, lr, beta1, beta2, eps, weightDecay, step)");
    return NULL;
  }
  double bc1 = 1.0, bc2 = 1.0;
  for (int64_t i = 0; i < t; i++) { bc1 *= b1; bc2 *= b2; }
  bc1 = 1.0 - bc1;
  bc2 = 1.0 - bc2;
  const float decay = (float)(1.0 - lr * wd), fb1 = (float)b1, fb2 = (float)b2, c1 = (float)(1.0 - b1), c2 = (float)(1.0 - b2);
  const float step = (float)(lr / bc1), isb2 = (float)(1.0 / __builtin_sqrt(bc2)), feps = (float)eps;
  for (size_t i = 0; i < n; i++) {
    float gi = g[i];
    float mi = fb1 * m[i] + c1 * gi;
    float vi = fb2 * v[i] + c2 * gi * gi;
    float denom = __builtin_sqrtf(vi) * isb2 + feps;
    po[i] = p[i] * decay - step * (mi / denom);
    mo[i] = mi;
    vo[i] = vi;
  }
  return NULL;
}
