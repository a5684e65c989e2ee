/*
 * The general tensor kernels of the native backend (part of addon.c): element-wise binary ops with
 * broadcasting, unary ops, reductions over a contiguous block of axes, transpose, scatter-add of slices
 * (ScatterNd) and strided copies. All float32, in place on the caller's TypedArrays, threaded over
 * contiguous chunks above the pool's work threshold.
 *
 *   binary(op, A, B, C, shape, aStrides, bStrides, threads)   C[i] = A[i.a] op B[i.b] (stride 0 broadcasts)
 *   unary(op, X, Y, alpha, threads)                            Y[i] = f(X[i])
 *   reduce(op, X, Y, outer, n, inner, threads)                 Y[o, j] = reduce_k X[o, k, j]
 *   transpose(X, Y, shape, perm, threads)                      Y = X permuted (row-major)
 *   scatterAdd(idx, upd, out, n, depth, slice, strides)        out[flat(idx[i])..+slice] += upd[i]  (out zeroed)
 */
#include "common.h"

enum { BIN_ADD, BIN_SUB, BIN_MUL, BIN_DIV, BIN_MAX, BIN_MIN, BIN_SQDIFF, BIN_POW };
enum { UN_NEG, UN_EXP, UN_LOG, UN_SQRT, UN_RSQRT, UN_SQUARE, UN_SIGMOID, UN_SOFTPLUS, UN_TANH, UN_ABS, UN_RELU, UN_RECIP, UN_SCALE, UN_LOG1P };
enum { RED_SUM, RED_MAX, RED_MIN, RED_MEAN };

#define MAX_RANK 8
#define CHUNK 32768

static inline float bin1(int op, float a, float b) {
  switch (op) {
    case BIN_ADD: return a + b;
    case BIN_SUB: return a - b;
    case BIN_MUL: return a * b;
    case BIN_DIV: return a / b;
    case BIN_MAX: return a > b || isnan(a) ? a : b;
    case BIN_MIN: return a < b || isnan(a) ? a : b;
    case BIN_SQDIFF: return (a - b) * (a - b);
    default: return powf(a, b);
  }
}

typedef struct {
  int op, rank;
  const float *A, *B;
  float *C;
  int64_t shape[MAX_RANK], sa[MAX_RANK], sb[MAX_RANK];
  int64_t n, inner; /* total elements; elements of the last axis */
} bin_t;

/* one contiguous run of the last axis: C[0:n] = A[0:n*sa] op B[0:n*sb], sa, sb in {0, 1} */
static inline void bin_run(int op, const float *restrict a, int64_t sa, const float *restrict b, int64_t sb, float *restrict c, int64_t n) {
#define RUN(EXPR)                                                          \
  if (sa && sb)                                                            \
    for (int64_t i = 0; i < n; i++) { float x = a[i], y = b[i]; c[i] = EXPR; } \
  else if (sa) {                                                           \
    float y = b[0];                                                        \
    for (int64_t i = 0; i < n; i++) { float x = a[i]; c[i] = EXPR; }      \
  } else if (sb) {                                                         \
    float x = a[0];                                                        \
    for (int64_t i = 0; i < n; i++) { float y = b[i]; c[i] = EXPR; }      \
  } else {                                                                 \
    float x = a[0], y = b[0];                                              \
    for (int64_t i = 0; i < n; i++) c[i] = EXPR;                           \
  }
  switch (op) {
    case BIN_ADD: RUN(x + y) break;
    case BIN_SUB: RUN(x - y) break;
    case BIN_MUL: RUN(x * y) break;
    case BIN_DIV: RUN(x / y) break;
    default:
      for (int64_t i = 0; i < n; i++) c[i] = bin1(op, a[sa ? i : 0], b[sb ? i : 0]);
  }
#undef RUN
}

/* rows [task*rowsPerTask, ...) of the output viewed as [n / inner, inner] */
static void bin_task(void *ctx, int task) {
  bin_t *t = (bin_t *)ctx;
  const int64_t rows = t->n / t->inner;
  const int64_t per = (CHUNK + t->inner - 1) / t->inner;
  int64_t r0 = (int64_t)task * per, r1 = r0 + per < rows ? r0 + per : rows;
  const int R = t->rank;
  int64_t idx[MAX_RANK];
  /* multi-index of row r0 over the leading R - 1 axes */
  int64_t rem = r0;
  for (int d = R - 2; d >= 0; d--) {
    idx[d] = rem % t->shape[d];
    rem /= t->shape[d];
  }
  int64_t offA = 0, offB = 0;
  for (int d = 0; d < R - 1; d++) {
    offA += idx[d] * t->sa[d];
    offB += idx[d] * t->sb[d];
  }
  const int64_t la = t->sa[R - 1], lb = t->sb[R - 1];
  for (int64_t r = r0; r < r1; r++) {
    bin_run(t->op, t->A + offA, la, t->B + offB, lb, t->C + r * t->inner, t->inner);
    for (int d = R - 2; d >= 0; d--) {
      offA += t->sa[d];
      offB += t->sb[d];
      if (++idx[d] < t->shape[d]) break;
      offA -= t->sa[d] * t->shape[d];
      offB -= t->sb[d] * t->shape[d];
      idx[d] = 0;
    }
  }
}

static int get_i64_array(napi_env env, napi_value v, int64_t *out, int max, int *len) {
  uint32_t n;
  if (napi_get_array_length(env, v, &n) != napi_ok || n > (uint32_t)max) return 0;
  for (uint32_t i = 0; i < n; i++) {
    napi_value e;
    if (napi_get_element(env, v, i, &e) != napi_ok || !get_i(env, e, &out[i])) return 0;
  }
  *len = (int)n;
  return 1;
}

/* binary(op, A, B, C, shape[], aStrides[], bStrides[], threads) */
static napi_value tensor_binary(napi_env env, napi_callback_info info) {
  size_t argc = 8;
  napi_value argv[8];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  bin_t t;
  float *A, *B, *C;
  size_t la, lb, lc;
  int64_t op, threads;
  int r1 = 0, r2 = 0, r3 = 0;
  if (argc < 8 || !get_i(env, argv[0], &op) || !get_f32(env, argv[1], &A, &la) || !get_f32(env, argv[2], &B, &lb) ||
      !get_f32(env, argv[3], &C, &lc) || !get_i64_array(env, argv[4], t.shape, MAX_RANK, &r1) ||
      !get_i64_array(env, argv[5], t.sa, MAX_RANK, &r2) || !get_i64_array(env, argv[6], t.sb, MAX_RANK, &r3) ||
      !get_i(env, argv[7], &threads) || r1 != r2 || r1 != r3) {
    napi_throw_type_error(env, "BINARY_ARGS", "binary(op, A, B, C: Float32Array, shape, aStrides, bStrides: number[] of one rank <= 8, threads)");
    return NULL;
  }
  if (r1 == 0) {
    t.shape[0] = 1;
    t.sa[0] = t.sb[0] = 0;
    r1 = 1;
  }
  t.op = (int)op;
  t.rank = r1;
  t.A = A;
  t.B = B;
  t.C = C;
  t.n = 1;
  int64_t maxA = 0, maxB = 0;
  for (int d = 0; d < r1; d++) {
    t.n *= t.shape[d];
    if (t.shape[d] > 0) {
      maxA += (t.shape[d] - 1) * t.sa[d];
      maxB += (t.shape[d] - 1) * t.sb[d];
    }
  }
  if (t.n == 0) return NULL;
  if ((size_t)t.n > lc || (size_t)maxA >= la || (size_t)maxB >= lb || (t.sa[r1 - 1] != 0 && t.sa[r1 - 1] != 1) ||
      (t.sb[r1 - 1] != 0 && t.sb[r1 - 1] != 1)) {
    napi_throw_range_error(env, "BINARY_BOUNDS", "binary: arrays too short for the shape and strides, or last-axis stride not 0/1");
    return NULL;
  }
  t.inner = t.shape[r1 - 1];
  const int64_t rows = t.n / t.inner, per = (CHUNK + t.inner - 1) / t.inner;
  parallel_for(bin_task, &t, (int)((rows + per - 1) / per), mt_threads(8.0 * t.n, threads));
  return NULL;
}

typedef struct {
  int op;
  const float *X;
  float *Y;
  int64_t n;
  float alpha;
} un_t;

static void un_task(void *ctx, int task) {
  un_t *t = (un_t *)ctx;
  int64_t i0 = (int64_t)task * CHUNK, i1 = i0 + CHUNK < t->n ? i0 + CHUNK : t->n;
  const float *restrict x = t->X;
  float *restrict y = t->Y;
  const float al = t->alpha;
  switch (t->op) {
    case UN_NEG: for (int64_t i = i0; i < i1; i++) y[i] = -x[i]; break;
    case UN_EXP:
      for (int64_t i = i0; i < i1; i += AW) {
        int64_t m = i1 - i < AW ? i1 - i : AW;
        va v = (va){0};
        memcpy(&v, x + i, (size_t)m * sizeof(float));
        v = va_exp(v);
        memcpy(y + i, &v, (size_t)m * sizeof(float));
      }
      break;
    case UN_LOG: for (int64_t i = i0; i < i1; i++) y[i] = logf(x[i]); break;
    case UN_SQRT: for (int64_t i = i0; i < i1; i++) y[i] = sqrtf(x[i]); break;
    case UN_RSQRT: for (int64_t i = i0; i < i1; i++) y[i] = 1.f / sqrtf(x[i]); break;
    case UN_SQUARE: for (int64_t i = i0; i < i1; i++) y[i] = x[i] * x[i]; break;
    case UN_SIGMOID: for (int64_t i = i0; i < i1; i++) y[i] = 1.f / (1.f + expf(-x[i])); break;
    case UN_SOFTPLUS:
      /* tfjs's softplus: log(1 + exp(x)), stable form max(x, 0) + log1p(exp(-|x|)) */
      for (int64_t i = i0; i < i1; i++) y[i] = (x[i] > 0 ? x[i] : 0.f) + log1pf(expf(-fabsf(x[i])));
      break;
    case UN_TANH: for (int64_t i = i0; i < i1; i++) y[i] = tanhf(x[i]); break;
    case UN_ABS: for (int64_t i = i0; i < i1; i++) y[i] = fabsf(x[i]); break;
    case UN_RELU: for (int64_t i = i0; i < i1; i++) y[i] = x[i] > 0 ? x[i] : 0.f; break;
    case UN_RECIP: for (int64_t i = i0; i < i1; i++) y[i] = 1.f / x[i]; break;
    case UN_SCALE: for (int64_t i = i0; i < i1; i++) y[i] = al * x[i]; break;
    case UN_LOG1P: for (int64_t i = i0; i < i1; i++) y[i] = log1pf(x[i]); break;
    default: break;
  }
}

/* unary(op, X, Y, alpha, threads) */
static napi_value tensor_unary(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  float *X, *Y;
  size_t lx, ly;
  int64_t op, threads;
  double alpha;
  if (argc < 5 || !get_i(env, argv[0], &op) || !get_f32(env, argv[1], &X, &lx) || !get_f32(env, argv[2], &Y, &ly) ||
      !get_f64(env, argv[3], &alpha) || !get_i(env, argv[4], &threads) || ly < lx) {
    napi_throw_type_error(env, "UNARY_ARGS", "unary(op, X, Y: Float32Array (Y at least X's length), alpha, threads)");
    return NULL;
  }
  un_t t = {(int)op, X, Y, (int64_t)lx, (float)alpha};
  parallel_for(un_task, &t, (int)((lx + CHUNK - 1) / CHUNK), mt_threads(op == UN_NEG || op == UN_SQUARE || op == UN_SCALE ? 2.0 * lx : 20.0 * lx, threads));
  return NULL;
}

typedef struct {
  int op;
  const float *X;
  float *Y;
  int64_t outer, n, inner, per;
} red_t;

/* tasks over outer rows (inner == 1: rows of n contiguous values) or over inner columns blocks */
static void red_task(void *ctx, int task) {
  red_t *t = (red_t *)ctx;
  const int64_t n = t->n, inner = t->inner;
  if (inner == 1) {
    int64_t o0 = (int64_t)task * t->per, o1 = o0 + t->per < t->outer ? o0 + t->per : t->outer;
    for (int64_t o = o0; o < o1; o++) {
      const float *x = t->X + o * n;
      if (t->op == RED_SUM || t->op == RED_MEAN) {
        double s = 0;
        int64_t k = 0;
        v16 acc = (v16){0};
        for (; k + 16 <= n; k += 16) {
          v16 v;
          memcpy(&v, x + k, sizeof v);
          acc += v;
        }
        s = hsum16(acc);
        for (; k < n; k++) s += x[k];
        t->Y[o] = (float)(t->op == RED_MEAN ? s / (double)n : s);
      } else {
        float m = n > 0 ? x[0] : (t->op == RED_MAX ? -INFINITY : INFINITY);
        for (int64_t k = 1; k < n; k++) m = t->op == RED_MAX ? (x[k] > m || isnan(x[k]) ? x[k] : m) : (x[k] < m || isnan(x[k]) ? x[k] : m);
        t->Y[o] = m;
      }
    }
    return;
  }
  /* inner > 1: task = (o, block of inner columns) */
  const int64_t blocks = (inner + t->per - 1) / t->per;
  const int64_t o = task / blocks, j0 = (task % blocks) * t->per, j1 = j0 + t->per < inner ? j0 + t->per : inner;
  float *y = t->Y + o * inner;
  const float *x = t->X + o * n * inner;
  for (int64_t j = j0; j < j1; j++) y[j] = n > 0 ? x[j] : (t->op == RED_MAX ? -INFINITY : t->op == RED_MIN ? INFINITY : 0.f);
  for (int64_t k = 1; k < n; k++) {
    const float *xr = x + k * inner;
    if (t->op == RED_SUM || t->op == RED_MEAN)
      for (int64_t j = j0; j < j1; j++) y[j] += xr[j];
    else if (t->op == RED_MAX)
      for (int64_t j = j0; j < j1; j++) y[j] = xr[j] > y[j] || isnan(xr[j]) ? xr[j] : y[j];
    else
      for (int64_t j = j0; j < j1; j++) y[j] = xr[j] < y[j] || isnan(xr[j]) ? xr[j] : y[j];
  }
  if (t->op == RED_MEAN && n > 0)
    for (int64_t j = j0; j < j1; j++) y[j] /= (float)n;
}

/* reduce(op, X, Y, outer, n, inner, threads): X [outer, n, inner] -> Y [outer, inner] */
static napi_value tensor_reduce(napi_env env, napi_callback_info info) {
  size_t argc = 7;
  napi_value argv[7];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  float *X, *Y;
  size_t lx, ly;
  int64_t op, outer, n, inner, threads;
  if (argc < 7 || !get_i(env, argv[0], &op) || !get_f32(env, argv[1], &X, &lx) || !get_f32(env, argv[2], &Y, &ly) ||
      !get_i(env, argv[3], &outer) || !get_i(env, argv[4], &n) || !get_i(env, argv[5], &inner) || !get_i(env, argv[6], &threads) ||
      outer < 0 || n < 0 || inner < 1 || (size_t)(outer * n * inner) > lx || (size_t)(outer * inner) > ly) {
    napi_throw_type_error(env, "REDUCE_ARGS", "reduce(op, X [outer*n*inner], Y [outer*inner]: Float32Array, outer, n, inner, threads)");
    return NULL;
  }
  red_t t = {(int)op, X, Y, outer, n, inner, 0};
  int tasks;
  if (inner == 1) {
    t.per = n >= CHUNK ? 1 : CHUNK / (n > 0 ? n : 1);
    tasks = (int)((outer + t.per - 1) / t.per);
  } else {
    t.per = inner < 4096 ? inner : 4096;
    tasks = (int)(outer * ((inner + t.per - 1) / t.per));
  }
  if (tasks > 0) parallel_for(red_task, &t, tasks, mt_threads(2.0 * outer * n * inner, threads));
  return NULL;
}

typedef struct {
  const float *X;
  float *Y;
  int rank;
  int64_t oshape[MAX_RANK], istride[MAX_RANK]; /* output shape; input stride of each output axis */
  int64_t n, inner;
} tr_t;

static void tr_task(void *ctx, int task) {
  tr_t *t = (tr_t *)ctx;
  const int R = t->rank;
  const int64_t rows = t->n / t->inner, per = (CHUNK + t->inner - 1) / t->inner;
  int64_t r0 = (int64_t)task * per, r1 = r0 + per < rows ? r0 + per : rows;
  int64_t idx[MAX_RANK], rem = r0, off = 0;
  for (int d = R - 2; d >= 0; d--) {
    idx[d] = rem % t->oshape[d];
    rem /= t->oshape[d];
  }
  for (int d = 0; d < R - 1; d++) off += idx[d] * t->istride[d];
  const int64_t s = t->istride[R - 1], m = t->inner;
  for (int64_t r = r0; r < r1; r++) {
    float *y = t->Y + r * m;
    const float *x = t->X + off;
    if (s == 1) memcpy(y, x, (size_t)m * sizeof(float));
    else for (int64_t j = 0; j < m; j++) y[j] = x[j * s];
    for (int d = R - 2; d >= 0; d--) {
      off += t->istride[d];
      if (++idx[d] < t->oshape[d]) break;
      off -= t->istride[d] * t->oshape[d];
      idx[d] = 0;
    }
  }
}

/* transpose(X, Y, shape[], perm[], threads): Y[i_perm] = X[i], output axis d = input axis perm[d] */
static napi_value tensor_transpose(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  float *X, *Y;
  size_t lx, ly;
  int64_t shape[MAX_RANK], perm[MAX_RANK], threads;
  int r1 = 0, r2 = 0;
  if (argc < 5 || !get_f32(env, argv[0], &X, &lx) || !get_f32(env, argv[1], &Y, &ly) || !get_i64_array(env, argv[2], shape, MAX_RANK, &r1) ||
      !get_i64_array(env, argv[3], perm, MAX_RANK, &r2) || !get_i(env, argv[4], &threads) || r1 != r2 || r1 < 1) {
    napi_throw_type_error(env, "TRANSPOSE_ARGS", "transpose(X, Y: Float32Array, shape, perm: number[] of one rank 1..8, threads)");
    return NULL;
  }
  tr_t t;
  t.X = X;
  t.Y = Y;
  t.rank = r1;
  int64_t stride[MAX_RANK];
  stride[r1 - 1] = 1;
  for (int d = r1 - 2; d >= 0; d--) stride[d] = stride[d + 1] * shape[d + 1];
  t.n = 1;
  for (int d = 0; d < r1; d++) {
    if (perm[d] < 0 || perm[d] >= r1) {
      napi_throw_range_error(env, "TRANSPOSE_ARGS", "transpose: perm out of range");
      return NULL;
    }
    t.oshape[d] = shape[perm[d]];
    t.istride[d] = stride[perm[d]];
    t.n *= shape[d];
  }
  if (t.n == 0) return NULL;
  if ((size_t)t.n > lx || (size_t)t.n > ly) {
    napi_throw_range_error(env, "TRANSPOSE_BOUNDS", "transpose: arrays too short for the shape");
    return NULL;
  }
  t.inner = t.oshape[r1 - 1];
  const int64_t rows = t.n / t.inner, per = (CHUNK + t.inner - 1) / t.inner;
  parallel_for(tr_task, &t, (int)((rows + per - 1) / per), mt_threads(4.0 * t.n, threads));
  return NULL;
}

/*
 * scatterAdd(idx Int32Array [n*depth], upd Float32Array [n*slice], out Float32Array, n, depth, slice, strides[])
 * out is zeroed, then out[sum_d idx[i, d] strides[d] + s] += upd[i, s] (ScatterNd: duplicates sum).
 * Serial: rows of the same index would race.
 */
static napi_value tensor_scatter_add(napi_env env, napi_callback_info info) {
  size_t argc = 7;
  napi_value argv[7];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  napi_typedarray_type type;
  size_t li, lu, lo, off;
  void *ip;
  napi_value ab;
  float *U, *O;
  int64_t n, depth, slice, strides[MAX_RANK];
  int rs = 0;
  if (argc < 7 || napi_get_typedarray_info(env, argv[0], &type, &li, &ip, &ab, &off) != napi_ok || type != napi_int32_array ||
      !get_f32(env, argv[1], &U, &lu) || !get_f32(env, argv[2], &O, &lo) || !get_i(env, argv[3], &n) || !get_i(env, argv[4], &depth) ||
      !get_i(env, argv[5], &slice) || !get_i64_array(env, argv[6], strides, MAX_RANK, &rs) || rs != depth || n < 0 || slice < 0 ||
      (size_t)(n * depth) > li || (size_t)(n * slice) > lu) {
    napi_throw_type_error(env, "SCATTER_ARGS", "scatterAdd(idx: Int32Array, upd, out: Float32Array, n, depth, slice, strides[depth])");
    return NULL;
  }
  const int32_t *I = (const int32_t *)ip;
  memset(O, 0, lo * sizeof(float));
  for (int64_t i = 0; i < n; i++) {
    int64_t o = 0;
    for (int d = 0; d < depth; d++) o += (int64_t)I[i * depth + d] * strides[d];
    if (o < 0 || (size_t)(o + slice) > lo) {
      napi_throw_range_error(env, "SCATTER_BOUNDS", "scatterAdd: an index is outside the output");
      return NULL;
    }
    float *restrict dst = O + o;
    const float *restrict src = U + i * slice;
    for (int64_t s = 0; s < slice; s++) dst[s] += src[s];
  }
  return NULL;
}
