/*
 * Fused causal self-attention with rotary embeddings, forward and backward (part of addon.c).
 *
 * One call per layer replaces the ~30 tfjs kernels of RoPE + head transposes + scores + mask + softmax +
 * P V (and ~40 in the backward pass): on the small models the service trains by default (stories260K,
 * head dim 8) those kernels cost more in dispatch than in arithmetic. It works on the projections' own
 * row layout, so no head transpose is ever materialised:
 *
 *   Q [B*T, H*hd], K and V [B*T, KV*hd]  (row b*T + t; head h at columns h*hd .. h*hd + hd - 1)
 *   query head h reads key/value head h / (H / KV)  (grouped-query attention)
 *   Qr = scale * rope(Q), Kr = rope(K)   (rope: the Hugging Face rotate_half convention; optional)
 *   S = Qr Kr^T (causal: key j <= query i), P = softmax(S), O = P V,  L = logsumexp(S) by row
 *
 * Backward (FlashAttention-2, Dao 2023, Algorithm 2, with P recomputed from L rather than stored, so the
 * [B, H, T, T] probabilities are never held): D_i = dO_i . O_i, dP = dO V^T, dS = P (dP - D),
 * dQr = dS Kr, dKr = dS^T Qr, dV = P^T dO; dQ = scale rope^T(dQr), dK = rope^T(dKr), where
 * rope^T(g) = g cos + rotate_half^T(g sin), rotate_half^T([u1, u2]) = [u2, -u1].
 *
 * Work is split over (batch, key/value head) pairs, so the rep = H / KV query heads that share a key/value
 * head accumulate dK and dV in one task without atomics. Inner loops run over 16 key positions at a time
 * (v16), with the task's keys and values held transposed ([hd, T], rows padded to 16) in its own buffers.
 */
#include "common.h"

typedef struct {
  const float *Q, *K, *V, *cosT, *sinT; /* cos/sin [T, hd] or NULL (no rotary embedding) */
  float *O, *Qr, *Kr, *L;
  const float *dO;
  float *dQ, *dK, *dV;
  int B, T, H, KV, hd, Tp, hdp; /* Tp: T rounded up to 16; hdp: hd rounded up to 16 */
  float scale;
  /* Optional segment mask (packed sequences), per query row r = b*T + i: key j is visible iff
     c[r] <= j <= i or a[r] <= j < bnd[r] (0 <= a <= bnd <= c <= i). NULL: plain causal (j <= i). */
  const int32_t *ma, *mb, *mc;
  int rope_rows; /* 1: cos/sin are [B*T, hd], row b*T + t (per-token positions); 0: [T, hd], row t */
  atomic_int failed;
} attn_t;

/* cos/sin rows of position (b, t): row t of a [T, hd] table, or row b*T + t of a per-token [B*T, hd] one */
#define ROPE_ROW(a, b, t) ((size_t)((a)->rope_rows ? (size_t)(b) * (a)->T + (t) : (size_t)(t)) * (a)->hd)
#define ROPE_C(a, b, t) ((a)->cosT ? (a)->cosT + ROPE_ROW(a, b, t) : NULL)
#define ROPE_S(a, b, t) ((a)->sinT ? (a)->sinT + ROPE_ROW(a, b, t) : NULL)

/* y = s (x cos + rotate_half(x) sin), rotate_half([x1, x2]) = [-x2, x1]; y must not alias x. */
static inline void rope_row(const float *x, float *y, const float *c, const float *sn, int hd, float s) {
  if (!c) {
    for (int d = 0; d < hd; d++) y[d] = x[d] * s;
    return;
  }
  int h2 = hd / 2;
  for (int i = 0; i < h2; i++) {
    y[i] = (x[i] * c[i] - x[i + h2] * sn[i]) * s;
    y[i + h2] = (x[i + h2] * c[i + h2] + x[i] * sn[i + h2]) * s;
  }
}

/* The transpose of rope_row: dx = s (g cos + rotate_half^T(g sin)); dx must not alias g. */
static inline void rope_row_t(const float *g, float *dx, const float *c, const float *sn, int hd, float s) {
  if (!c) {
    for (int d = 0; d < hd; d++) dx[d] = g[d] * s;
    return;
  }
  int h2 = hd / 2;
  for (int i = 0; i < h2; i++) {
    dx[i] = (g[i] * c[i] + g[i + h2] * sn[i + h2]) * s;
    dx[i + h2] = (g[i + h2] * c[i + h2] - g[i] * sn[i]) * s;
  }
}


/* lanes j0 .. j0 + 15 that are valid keys for query i (j <= i) */
static inline v16i causal_lanes(int j0, int i) {
  const v16i iota = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
  return (iota + j0) <= ((v16i){0} + i);
}

/*
 * This task's keys (rotated; written to Kr as well when Ksrc is the raw K) and values, in the layouts the
 * loops want: transposed KrT, VT [hd, Tp] (score and dP rows as vectors over 16 keys) and row-major Krow,
 * Vrow [T, hdp] (O and dQ rows as sums over keys of 16-lane rows; no horizontal sums). NULL skips one.
 */
static void load_kv(const attn_t *a, int b, int g, const float *Ksrc, int rope, float *KrT, float *VT, float *Krow, float *Vrow) {
  const int T = a->T, hd = a->hd, Tp = a->Tp, hdp = a->hdp, ld = a->KV * hd;
  float kr[hd];
  if (KrT) memset(KrT, 0, (size_t)hd * Tp * sizeof(float));
  if (VT) memset(VT, 0, (size_t)hd * Tp * sizeof(float));
  if (Krow) memset(Krow, 0, (size_t)T * hdp * sizeof(float));
  if (Vrow) memset(Vrow, 0, (size_t)T * hdp * sizeof(float));
  for (int t = 0; t < T; t++) {
    size_t off = ((size_t)b * T + t) * ld + (size_t)g * hd;
    const float *k = Ksrc + off;
    if (rope) {
      rope_row(k, kr, ROPE_C(a, b, t), ROPE_S(a, b, t), hd, 1.f);
      memcpy(a->Kr + off, kr, (size_t)hd * sizeof(float));
      k = kr;
    }
    const float *v = a->V + off;
    for (int d = 0; d < hd; d++) {
      if (KrT) KrT[(size_t)d * Tp + t] = k[d];
      if (VT) VT[(size_t)d * Tp + t] = v[d];
    }
    if (Krow) memcpy(Krow + (size_t)t * hdp, k, (size_t)hd * sizeof(float));
    if (Vrow) memcpy(Vrow + (size_t)t * hdp, v, (size_t)hd * sizeof(float));
  }
}

/* acc[0 .. hdp) = sum_{j <= i} w[j] rows[j][0 .. hdp)  (rows [T, hdp], hdp a multiple of 16). Four
   independent partial sums over j, so the fused multiply-adds do not wait on each other's latency. */
static inline void weighted_rows(const float *w, const float *rows, int i, int hdp, v16 *acc) {
  const int nh = hdp / 16;
  for (int c = 0; c < nh; c++) {
    v16 a0 = (v16){0}, a1 = (v16){0}, a2 = (v16){0}, a3 = (v16){0};
    const float *r = rows + (size_t)c * 16;
    int j = 0;
    for (; j + 3 <= i; j += 4) {
      a0 += w[j] * *(const v16 *)(r + (size_t)j * hdp);
      a1 += w[j + 1] * *(const v16 *)(r + (size_t)(j + 1) * hdp);
      a2 += w[j + 2] * *(const v16 *)(r + (size_t)(j + 2) * hdp);
      a3 += w[j + 3] * *(const v16 *)(r + (size_t)(j + 3) * hdp);
    }
    for (; j <= i; j++) a0 += w[j] * *(const v16 *)(r + (size_t)j * hdp);
    acc[c] = (a0 + a1) + (a2 + a3);
  }
}

/* scores (or dP) for 16 keys: sum_d x[d] colsT[d][v], two partial sums over d */
static inline v16 col_dot(const float *x, const v16 *colsT, int v, int nvT, int hd) {
  v16 s0 = (v16){0}, s1 = (v16){0};
  int d = 0;
  for (; d + 1 < hd; d += 2) {
    s0 += x[d] * colsT[(size_t)d * nvT + v];
    s1 += x[d + 1] * colsT[(size_t)(d + 1) * nvT + v];
  }
  if (d < hd) s0 += x[d] * colsT[(size_t)d * nvT + v];
  return s0 + s1;
}

/* lanes j0 .. j0 + 15 that are valid keys for query i under a segment mask (see attn_t: ma, mb, mc) */
static inline v16i segment_lanes(int j0, int i, int ka, int kb, int kc) {
  const v16i iota = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
  const v16i j = iota + j0, z = {0};
  return ((j >= (z + kc)) & (j <= (z + i))) | ((j >= (z + ka)) & (j < (z + kb)));
}

/* acc[0 .. hdp) += sum_{j0 <= j <= j1} w[j] rows[j][0 .. hdp)  (nothing when j1 < j0) */
static inline void weighted_rows_range(const float *w, const float *rows, int j0, int j1, int hdp, v16 *acc) {
  const int nh = hdp / 16;
  for (int c = 0; c < nh; c++) {
    v16 a0 = (v16){0}, a1 = (v16){0};
    const float *r = rows + (size_t)c * 16;
    int j = j0;
    for (; j + 1 <= j1; j += 2) {
      a0 += w[j] * *(const v16 *)(r + (size_t)j * hdp);
      a1 += w[j + 1] * *(const v16 *)(r + (size_t)(j + 1) * hdp);
    }
    for (; j <= j1; j++) a0 += w[j] * *(const v16 *)(r + (size_t)j * hdp);
    acc[c] += a0 + a1;
  }
}

/* The first 16-key vector a masked query reads, and the gap [gap0, gap1) of vectors it skips. */
static inline void segment_vectors(int ka, int kb, int kc, int *first, int *gap0, int *gap1) {
  if (ka < kb) {
    *first = ka / 16;
    *gap0 = (kb + 15) / 16;
  } else {
    *first = kc / 16;
    *gap0 = *first;
  }
  *gap1 = kc / 16;
}

static void attn_fwd_task(void *ctx, int task) {
  attn_t *a = (attn_t *)ctx;
  const int T = a->T, H = a->H, KV = a->KV, hd = a->hd, Tp = a->Tp, hdp = a->hdp, rep = H / KV, nvT = Tp / 16;
  const int b = task / KV, g = task % KV, ldq = H * hd;
  float *buf = scratch(SCRATCH_ATTENTION, ((size_t)hd * Tp + (size_t)T * hdp + Tp + hdp) * sizeof(float));
  if (!buf) {
    atomic_store(&a->failed, 1);
    return;
  }
  float *KrT = buf, *Vrow = buf + (size_t)hd * Tp, *p = Vrow + (size_t)T * hdp;
  v16 *acc = (v16 *)(p + Tp);
  load_kv(a, b, g, a->K, 1, KrT, NULL, NULL, Vrow);
  const v16 *kt = (const v16 *)KrT;
  for (int r = 0; r < rep; r++) {
    const int h = g * rep + r;
    for (int i = 0; i < T; i++) {
      size_t off = ((size_t)b * T + i) * ldq + (size_t)h * hd;
      float *q = a->Qr + off;
      rope_row(a->Q + off, q, ROPE_C(a, b, i), ROPE_S(a, b, i), hd, a->scale);
      if (a->ma) {
        const size_t row = (size_t)b * T + i;
        const int ka = a->ma[row], kb = a->mb[row], kc = a->mc[row], nv = i / 16 + 1;
        int first, gap0, gap1;
        segment_vectors(ka, kb, kc, &first, &gap0, &gap1);
        v16 vmax = (v16){0} - 3.0e38f;
        for (int v = first; v < nv; v++) {
          if (v >= gap0 && v < gap1) continue;
          v16 s = vsel(segment_lanes(v * 16, i, ka, kb, kc), col_dot(q, kt, v, nvT, hd), (v16){0} - 3.0e38f);
          ((v16 *)p)[v] = s;
          vmax = vsel(s > vmax, s, vmax);
        }
        float m = hmax16(vmax);
        v16 vs = (v16){0}, mv = (v16){0} + m;
        for (int v = first; v < nv; v++) {
          if (v >= gap0 && v < gap1) continue;
          v16 e = vsel(segment_lanes(v * 16, i, ka, kb, kc), vexp(((v16 *)p)[v] - mv), (v16){0});
          ((v16 *)p)[v] = e;
          vs += e;
        }
        float sum = hsum16(vs), inv = 1.f / sum;
        a->L[((size_t)b * H + h) * T + i] = m + logf(sum);
        for (int c = 0; c < hdp / 16; c++) acc[c] = (v16){0};
        weighted_rows_range(p, Vrow, ka, kb - 1, hdp, acc);
        weighted_rows_range(p, Vrow, kc, i, hdp, acc);
        const float *av = (const float *)acc;
        float *o = a->O + off;
        for (int d = 0; d < hd; d++) o[d] = av[d] * inv;
        continue;
      }
      const int nv = (i + 16) / 16; /* vectors covering keys 0..i */
      v16 vmax = (v16){0} - 3.0e38f;
      for (int v = 0; v < nv; v++) {
        v16 s = col_dot(q, kt, v, nvT, hd);
        if (v == nv - 1) s = vsel(causal_lanes(v * 16, i), s, (v16){0} - 3.0e38f);
        ((v16 *)p)[v] = s;
        vmax = vsel(s > vmax, s, vmax);
      }
      float m = hmax16(vmax);
      v16 vs = (v16){0}, mv = (v16){0} + m;
      for (int v = 0; v < nv; v++) {
        v16 e = vexp(((v16 *)p)[v] - mv);
        if (v == nv - 1) e = vsel(causal_lanes(v * 16, i), e, (v16){0});
        ((v16 *)p)[v] = e;
        vs += e;
      }
      float sum = hsum16(vs), inv = 1.f / sum;
      a->L[((size_t)b * H + h) * T + i] = m + logf(sum);
      weighted_rows(p, Vrow, i, hdp, acc);
      const float *av = (const float *)acc;
      float *o = a->O + off;
      for (int d = 0; d < hd; d++) o[d] = av[d] * inv;
    }
  }
}

static void attn_bwd_task(void *ctx, int task) {
  attn_t *a = (attn_t *)ctx;
  const int T = a->T, H = a->H, KV = a->KV, hd = a->hd, Tp = a->Tp, hdp = a->hdp, rep = H / KV, nvT = Tp / 16;
  const int b = task / KV, g = task % KV, ldq = H * hd, ldk = KV * hd;
  float *buf = scratch(SCRATCH_ATTENTION, ((size_t)4 * hd * Tp + (size_t)T * hdp + Tp + hdp) * sizeof(float));
  if (!buf) {
    atomic_store(&a->failed, 1);
    return;
  }
  float *KrT = buf, *VT = buf + (size_t)hd * Tp, *dKT = buf + (size_t)2 * hd * Tp, *dVT = buf + (size_t)3 * hd * Tp;
  float *Krow = buf + (size_t)4 * hd * Tp, *ds = Krow + (size_t)T * hdp;
  v16 *acc = (v16 *)(ds + Tp);
  load_kv(a, b, g, a->Kr, 0, KrT, VT, Krow, NULL);
  memset(dKT, 0, (size_t)2 * hd * Tp * sizeof(float));
  const v16 *kt = (const v16 *)KrT, *vt = (const v16 *)VT;
  v16 *dkt = (v16 *)dKT, *dvt = (v16 *)dVT;
  float tmp[hd];
  for (int r = 0; r < rep; r++) {
    const int h = g * rep + r;
    for (int i = 0; i < T; i++) {
      size_t off = ((size_t)b * T + i) * ldq + (size_t)h * hd;
      const float *q = a->Qr + off, *go = a->dO + off, *o = a->O + off;
      float Di = 0.f;
      for (int d = 0; d < hd; d++) Di += go[d] * o[d];
      const v16 lse = (v16){0} + a->L[((size_t)b * H + h) * T + i], Dv = (v16){0} + Di;
      if (a->ma) {
        const size_t row = (size_t)b * T + i;
        const int ka = a->ma[row], kb = a->mb[row], kc = a->mc[row], nv = i / 16 + 1;
        int first, gap0, gap1;
        segment_vectors(ka, kb, kc, &first, &gap0, &gap1);
        for (int v = first; v < nv; v++) {
          if (v >= gap0 && v < gap1) continue;
          v16 s = col_dot(q, kt, v, nvT, hd), dp = col_dot(go, vt, v, nvT, hd);
          v16 p = vsel(segment_lanes(v * 16, i, ka, kb, kc), vexp(s - lse), (v16){0});
          v16 dsv = p * (dp - Dv);
          ((v16 *)ds)[v] = dsv;
          for (int d = 0; d < hd; d++) {
            dkt[(size_t)d * nvT + v] += dsv * q[d];
            dvt[(size_t)d * nvT + v] += p * go[d];
          }
        }
        for (int c = 0; c < hdp / 16; c++) acc[c] = (v16){0};
        weighted_rows_range(ds, Krow, ka, kb - 1, hdp, acc);
        weighted_rows_range(ds, Krow, kc, i, hdp, acc);
        rope_row_t((const float *)acc, a->dQ + off, ROPE_C(a, b, i), ROPE_S(a, b, i), hd, a->scale);
        continue;
      }
      const int nv = (i + 16) / 16;
      for (int v = 0; v < nv; v++) {
        v16 s = col_dot(q, kt, v, nvT, hd), dp = col_dot(go, vt, v, nvT, hd);
        v16 p = vexp(s - lse);
        if (v == nv - 1) p = vsel(causal_lanes(v * 16, i), p, (v16){0});
        v16 dsv = p * (dp - Dv);
        ((v16 *)ds)[v] = dsv;
        for (int d = 0; d < hd; d++) {
          dkt[(size_t)d * nvT + v] += dsv * q[d];
          dvt[(size_t)d * nvT + v] += p * go[d];
        }
      }
      weighted_rows(ds, Krow, i, hdp, acc);
      rope_row_t((const float *)acc, a->dQ + off, ROPE_C(a, b, i), ROPE_S(a, b, i), hd, a->scale);
    }
  }
  for (int t = 0; t < T; t++) {
    size_t off = ((size_t)b * T + t) * ldk + (size_t)g * hd;
    for (int d = 0; d < hd; d++) {
      tmp[d] = dKT[(size_t)d * Tp + t];
      a->dV[off + d] = dVT[(size_t)d * Tp + t];
    }
    rope_row_t(tmp, a->dK + off, ROPE_C(a, b, t), ROPE_S(a, b, t), hd, 1.f);
  }
}

/* Reads B, T, H, KV, hd, scale, threads from argv[first..first+6] and checks the layout. */
static int attn_dims(napi_env env, napi_value *argv, attn_t *a, int64_t *threads) {
  int64_t B, T, H, KV, hd;
  double scale;
  if (!get_i(env, argv[0], &B) || !get_i(env, argv[1], &T) || !get_i(env, argv[2], &H) || !get_i(env, argv[3], &KV) ||
      !get_i(env, argv[4], &hd) || !get_f64(env, argv[5], &scale) || !get_i(env, argv[6], threads))
    return 0;
  if (B < 1 || T < 1 || H < 1 || KV < 1 || hd < 1 || H % KV != 0) return 0;
  a->B = (int)B;
  a->T = (int)T;
  a->H = (int)H;
  a->KV = (int)KV;
  a->hd = (int)hd;
  a->Tp = (int)((T + 15) / 16 * 16);
  a->hdp = (int)((hd + 15) / 16 * 16);
  a->scale = (float)scale;
  return 1;
}

static int get_i32(napi_env env, napi_value v, int32_t **data, size_t *len) {
  napi_typedarray_type type;
  size_t length, offset;
  void *ptr;
  napi_value ab;
  if (napi_get_typedarray_info(env, v, &type, &length, &ptr, &ab, &offset) != napi_ok) return 0;
  if (type != napi_int32_array) return 0;
  *data = (int32_t *)ptr;
  *len = length;
  return 1;
}

/*
 * The optional trailing arguments (packed sequences): mask, an Int32Array [3, B*T] of rows a, bnd, c (see
 * attn_t) or of length 0 (plain causal), and ropeRows (1: cos/sin are per token, [B*T, hd]). Checks every
 * row's ranges (0 <= a <= bnd <= c <= t) so the kernel never reads outside the sequence.
 */
static int attn_extras(napi_env env, napi_value *argv, size_t argc, size_t first, attn_t *a) {
  a->ma = a->mb = a->mc = NULL;
  a->rope_rows = 0;
  if (argc <= first) return 1;
  int32_t *m;
  size_t lm;
  if (!get_i32(env, argv[first], &m, &lm)) return 0;
  if (argc > first + 1) {
    int64_t rr;
    if (!get_i(env, argv[first + 1], &rr)) return 0;
    a->rope_rows = rr != 0;
  }
  if (lm == 0) return 1;
  const size_t N = (size_t)a->B * a->T;
  if (lm < 3 * N) return 0;
  for (size_t r = 0; r < N; r++) {
    const int t = (int)(r % (size_t)a->T), ka = m[r], kb = m[N + r], kc = m[2 * N + r];
    if (ka < 0 || ka > kb || kb > kc || kc > t) return 0;
  }
  a->ma = m;
  a->mb = m + N;
  a->mc = m + 2 * N;
  return 1;
}

/* cos, sin: Float32Array [T*hd] each, or of length 0 (no rotary embedding; then hd may be odd). */
static int attn_rope(napi_env env, napi_value c, napi_value s, attn_t *a) {
  float *cp, *sp;
  size_t lc, ls;
  if (!get_f32(env, c, &cp, &lc) || !get_f32(env, s, &sp, &ls) || lc != ls) return 0;
  if (lc == 0) {
    a->cosT = a->sinT = NULL;
    return 1;
  }
  if (lc < (size_t)(a->rope_rows ? a->B : 1) * a->T * a->hd || a->hd % 2 != 0) return 0;
  a->cosT = cp;
  a->sinT = sp;
  return 1;
}

/*
 * attentionFwd(Q, K, V, cos, sin, O, Qr, Kr, L, B, T, H, KV, hd, scale, threads)
 *   Q, O, Qr: [B*T*H*hd]; K, V, Kr: [B*T*KV*hd]; L: [B*H*T]; cos, sin: [T*hd] or empty.
 */
static napi_value attention_fwd(napi_env env, napi_callback_info info) {
  size_t argc = 18;
  napi_value argv[18];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  attn_t a;
  memset(&a, 0, sizeof a);
  float *Q, *K, *V, *O, *Qr, *Kr, *L;
  size_t lq, lk, lv, lo, lqr, lkr, ll;
  int64_t threads;
  if (argc < 16 || !get_f32(env, argv[0], &Q, &lq) || !get_f32(env, argv[1], &K, &lk) || !get_f32(env, argv[2], &V, &lv) ||
      !get_f32(env, argv[5], &O, &lo) || !get_f32(env, argv[6], &Qr, &lqr) || !get_f32(env, argv[7], &Kr, &lkr) ||
      !get_f32(env, argv[8], &L, &ll) || !attn_dims(env, argv + 9, &a, &threads) || !attn_extras(env, argv, argc, 16, &a) ||
      !attn_rope(env, argv[3], argv[4], &a)) {
    napi_throw_type_error(env, "ATTENTION_ARGS",
                          "attentionFwd(Q, K, V, cos, sin, O, Qr, Kr, L: Float32Array, B, T, H, KV, hd, scale, threads[, mask: Int32Array, ropeRows]) "
                          "with H % KV == 0 and mask rows 0 <= a <= b <= c <= t");
    return NULL;
  }
  size_t nq = (size_t)a.B * a.T * a.H * a.hd, nk = (size_t)a.B * a.T * a.KV * a.hd;
  if (lq < nq || lo < nq || lqr < nq || lk < nk || lv < nk || lkr < nk || ll < (size_t)a.B * a.H * a.T) {
    napi_throw_range_error(env, "ATTENTION_BOUNDS", "attentionFwd: an array is too short for B, T, H, KV, hd");
    return NULL;
  }
  a.Q = Q; a.K = K; a.V = V; a.O = O; a.Qr = Qr; a.Kr = Kr; a.L = L;
  parallel_for(attn_fwd_task, &a, a.B * a.KV, mt_threads(2.0 * a.B * a.H * a.T * a.T * a.hd, threads));
  if (atomic_load(&a.failed)) napi_throw_error(env, "ATTENTION_OOM", "attentionFwd: out of memory");
  return NULL;
}

/*
 * attentionBwd(dO, Qr, Kr, V, O, L, cos, sin, dQ, dK, dV, B, T, H, KV, hd, scale, threads)
 *   dO, Qr, O, dQ: [B*T*H*hd]; Kr, V, dK, dV: [B*T*KV*hd]; L: [B*H*T]; cos, sin: [T*hd] or empty.
 */
static napi_value attention_bwd(napi_env env, napi_callback_info info) {
  size_t argc = 20;
  napi_value argv[20];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  attn_t a;
  memset(&a, 0, sizeof a);
  float *dO, *Qr, *Kr, *V, *O, *L, *dQ, *dK, *dV;
  size_t l0, l1, l2, l3, l4, l5, l8, l9, l10;
  int64_t threads;
  if (argc < 18 || !get_f32(env, argv[0], &dO, &l0) || !get_f32(env, argv[1], &Qr, &l1) || !get_f32(env, argv[2], &Kr, &l2) ||
      !get_f32(env, argv[3], &V, &l3) || !get_f32(env, argv[4], &O, &l4) || !get_f32(env, argv[5], &L, &l5) ||
      !get_f32(env, argv[8], &dQ, &l8) || !get_f32(env, argv[9], &dK, &l9) || !get_f32(env, argv[10], &dV, &l10) ||
      !attn_dims(env, argv + 11, &a, &threads) || !attn_extras(env, argv, argc, 18, &a) || !attn_rope(env, argv[6], argv[7], &a)) {
    napi_throw_type_error(env, "ATTENTION_ARGS",
                          "attentionBwd(dO, Qr, Kr, V, O, L, cos, sin, dQ, dK, dV: Float32Array, B, T, H, KV, hd, scale, threads[, mask, ropeRows])");
    return NULL;
  }
  size_t nq = (size_t)a.B * a.T * a.H * a.hd, nk = (size_t)a.B * a.T * a.KV * a.hd;
  if (l0 < nq || l1 < nq || l4 < nq || l8 < nq || l2 < nk || l3 < nk || l9 < nk || l10 < nk || l5 < (size_t)a.B * a.H * a.T) {
    napi_throw_range_error(env, "ATTENTION_BOUNDS", "attentionBwd: an array is too short for B, T, H, KV, hd");
    return NULL;
  }
  a.dO = dO; a.Qr = Qr; a.Kr = Kr; a.V = V; a.O = O; a.L = L; a.dQ = dQ; a.dK = dK; a.dV = dV;
  parallel_for(attn_bwd_task, &a, a.B * a.KV, mt_threads(5.0 * a.B * a.H * a.T * a.T * a.hd, threads));
  if (atomic_load(&a.failed)) napi_throw_error(env, "ATTENTION_OOM", "attentionBwd: out of memory");
  return NULL;
}
