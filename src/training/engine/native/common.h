/*
 * Shared by the native kernels (compiled as one translation unit, addon.c): headers, the 16-lane float
 * vector types (GCC vector extensions: AVX-512 or 2 x AVX2 from -march=native), a vector exp, the Node-API
 * argument readers, and a task pool over pthreads.
 */
#ifndef DPO_NATIVE_COMMON_H
#define DPO_NATIVE_COMMON_H
#include <node_api.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#include <stdatomic.h>
#include <sched.h>
#include <math.h>

typedef float v16 __attribute__((vector_size(64), aligned(64)));
typedef float v16u __attribute__((vector_size(64), aligned(4)));
/* exp(x) for 16 floats: 2^k * e^r, r = x - k ln2 in [-ln2/2, ln2/2], degree-6 polynomial (|rel err| < 2e-7),
   inputs clamped to [-87.3, 88.7] (e^-87.3 ~ 1.2e-38, the smallest normal float). */
typedef int v16i __attribute__((vector_size(64)));
/* m ? a : b lane-wise (m from a vector comparison: all ones or zero) */
static inline v16 vsel(v16i m, v16 a, v16 b) { return (v16)(((v16i)a & m) | ((v16i)b & ~m)); }
static inline v16 vexp(v16 x) {
  const v16 hi = (v16){0} + 88.7f, lo = (v16){0} - 87.3f;
  x = vsel(x > hi, hi, x);
  x = vsel(x < lo, lo, x);
  v16 t = x * 1.44269504088896341f;
  v16 half = vsel(t >= 0, (v16){0} + 0.5f, (v16){0} - 0.5f);
  v16 kf = __builtin_convertvector(__builtin_convertvector(t + half, v16i), v16);
  v16 r = x - kf * 0.693359375f + kf * 2.12194440e-4f;
  v16 p = (v16){0} + 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  v16i k = __builtin_convertvector(kf, v16i);
  v16i bits = (k + 127) << 23;
  v16 scale;
  memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

static int get_f32(napi_env env, napi_value v, float **data, size_t *len) {
  napi_typedarray_type type;
  size_t length, offset;
  void *ptr;
  napi_value ab;
  if (napi_get_typedarray_info(env, v, &type, &length, &ptr, &ab, &offset) != napi_ok) return 0;
  if (type != napi_float32_array) return 0;
  *data = (float *)ptr;
  *len = length;
  return 1;
}

static int get_i(napi_env env, napi_value v, int64_t *out) {
  return napi_get_value_int64(env, v, out) == napi_ok;
}

static int get_f64(napi_env env, napi_value v, double *out) {
  return napi_get_value_double(env, v, out) == napi_ok;
}

/* Run fn(ctx, task) for task in [0, n) on up to `threads` threads (the caller is one of them); tasks are
   taken dynamically from an atomic counter so a busy core does not hold the others back. */
typedef void (*task_fn)(void *ctx, int task);
typedef struct {
  task_fn fn;
  void *ctx;
  int n;
  atomic_int next;
} pool_t;

static void *pool_worker(void *arg) {
  pool_t *p = (pool_t *)arg;
  for (int t; (t = atomic_fetch_add(&p->next, 1)) < p->n;) p->fn(p->ctx, t);
  return NULL;
}

static void parallel_for(task_fn fn, void *ctx, int n, int threads) {
  pool_t p = {fn, ctx, n, 0};
  if (threads > 8) threads = 8;
  if (threads > n) threads = n;
  pthread_t th[8];
  int started = 0;
  for (int i = 1; i < threads; i++)
    if (pthread_create(&th[started], NULL, pool_worker, &p) == 0) started++;
  pool_worker(&p);
  for (int i = 0; i < started; i++) pthread_join(th[i], NULL);
}
#endif
