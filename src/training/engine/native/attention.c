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
 * head accumulate dK and dV in one task without atomics. Within a task, queries go in blocks of QB = 8 and
 * keys in vectors of AW (the machine's vector width): a block's scores are an [8, AW] tile of 8 accumulators
 * (each key load feeds 8 multiply-adds), its outputs [8, AW] tiles over the head dimension, and dK, dV get a
 * rank-8 update per key vector (one load and store per 8 multiply-adds, where query-at-a-time loops did one
 * per multiply-add). Key vectors no query of the block sees (causal or segment mask) are skipped, and the mask
 * is applied only to the few vectors some query of the block sees in part (a block's diagonal vector, segment
 * edges); every other vector is visible whole, with no per-lane test. The task's
 * keys and values are held transposed ([hd, Tp]) and row-major ([Tp, hdp]) in its own zero-padded buffers.
 */
#include "common.h"

typedef struct {
  const float *Q, *K, *V, *cosT, *sinT; /* cos/sin [T, hd] or NULL (no rotary embedding) */
  float *O, *Qr, *Kr, *L;
  const float *dO;
  float *dQ, *dK, *dV;
  int B, T, H, KV, hd, Tp, hdp; /* Tp: T rounded up to the vector width AW; hdp: hd rounded up to AW */
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


/* queries per block: 8 accumulators of AW keys (scores) or AW dimensions (outputs) share each load */
#define QB 8

/* A block of up to QB consecutive queries of one sequence and the key ranges they see. */
typedef struct {
  int n;                            /* queries in the block; rows n .. QB - 1 are padding (see nothing) */
  int i[QB], ka[QB], kb[QB], kc[QB]; /* query position; visible keys j: kc <= j <= i, or ka <= j < kb */
} qblock_t;

/* lanes j0 .. j0 + AW - 1 that query q of the block sees */
static inline vai visible_lanes(const qblock_t *blk, int q, int j0) {
  vai j, z = {0};
  for (int l = 0; l < AW; l++) j[l] = l; /* a constant: j0 is added as a vector (per lane it was AW inserts) */
  j += j0;
  return (j <= z + blk->i[q]) & ((j >= z + blk->kc[q]) | ((j >= z + blk->ka[q]) & (j < z + blk->kb[q])));
}

/*
 * e^x for the softmax of the attention (x = score - row max or - row log-sum-exp, so x <= 0 up to rounding on
 * every visible lane): va_exp's polynomial, with the round-to-nearest of x log2(e) by the 1.5 * 2^23 shifter
 * (its low bits are the integer, so no conversions) and, instead of clamping, exactly 0 wherever x < -87.3
 * (masked scores, -3e38, and underflow); lanes above 88 are not clamped (never visible ones).
 */
static inline va att_exp(va x) {
  const vai keep = x > ((va){0} - 87.3f);
  const va shifter = (va){0} + 12582912.0f; /* 1.5 * 2^23 */
  const va tk = x * 1.44269504088896341f + shifter;
  const va kf = tk - shifter;
  const va r = x - kf * 0.693359375f + kf * 2.12194440e-4f;
  va p = (va){0} + 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  vai bits;
  memcpy(&bits, &tk, sizeof bits);
  bits = (bits + 127) << 23; /* tk's bits are those of 1.5 * 2^23 plus k; the shift drops all but k + 127 */
  va scale;
  memcpy(&scale, &bits, sizeof scale);
  const va e = p * scale;
  vai eb;
  memcpy(&eb, &e, sizeof eb);
  eb &= keep;
  va out;
  memcpy(&out, &eb, sizeof out);
  return out;
}

/*
 * Fills the block of queries i0 .. i0 + n - 1 of sequence b and lists in vl the key vectors (AW keys each)
 * that any of them sees, in increasing order; returns how many. part[t] is 1 when some lane of vector vl[t]
 * is hidden from some query of the block (the mask is applied there), 0 when all n queries see all AW keys
 * (no mask: most vectors of a long sequence). Without a segment mask the keys are 0 .. i.
 */
static int block_setup(const attn_t *a, int b, int i0, qblock_t *blk, int *vl, unsigned char *part) {
  const int T = a->T, n = T - i0 < QB ? T - i0 : QB;
  int lo = i0;
  blk->n = n;
  for (int q = 0; q < QB; q++) {
    if (q >= n) {
      blk->i[q] = -1; /* no lane satisfies j <= -1 */
      blk->ka[q] = blk->kb[q] = blk->kc[q] = 0;
      continue;
    }
    const size_t row = (size_t)b * T + i0 + q;
    blk->i[q] = i0 + q;
    if (a->ma) {
      blk->ka[q] = a->ma[row];
      blk->kb[q] = a->mb[row];
      blk->kc[q] = a->mc[row];
    } else {
      blk->ka[q] = blk->kb[q] = blk->kc[q] = 0;
    }
    const int first = blk->ka[q] < blk->kb[q] ? blk->ka[q] : blk->kc[q];
    if (first < lo) lo = first;
  }
  int nv = 0;
  int uniform = 1; /* every query of the block has the same ranges (inside one segment): O(1) per vector */
  for (int q = 1; q < n; q++) uniform &= blk->ka[q] == blk->ka[0] && blk->kb[q] == blk->kb[0] && blk->kc[q] == blk->kc[0];
  if (uniform) {
    /* seen by some query iff by the last (largest i); seen whole by all iff by the first (smallest i) */
    const int ka = blk->ka[0], kb = blk->kb[0], kc = blk->kc[0], iF = i0, iL = i0 + n - 1;
    for (int v = lo / AW; v <= iL / AW; v++) {
      const int j0 = v * AW, j1 = j0 + AW - 1;
      if (!((j0 <= iL && j1 >= kc) || (ka < kb && j0 < kb && j1 >= ka))) continue;
      const int all = (j0 >= kc && j1 <= iF) || (j0 >= ka && j1 < kb) || (ka < kb && kb >= kc && j0 >= ka && j1 <= iF);
      part[nv] = (unsigned char)!all;
      vl[nv++] = v;
    }
    return nv;
  }
  for (int v = lo / AW; v <= (i0 + n - 1) / AW; v++) {
    const int j0 = v * AW, j1 = j0 + AW - 1;
    int seen = 0, all = 1;
    for (int q = 0; q < n; q++) {
      const int i = blk->i[q], ka = blk->ka[q], kb = blk->kb[q], kc = blk->kc[q];
      seen |= (j0 <= i && j1 >= kc) || (ka < kb && j0 < kb && j1 >= ka);
      /* every lane in [kc, i], in [ka, kb), or in their union when it is one range (kb >= kc) */
      all &= (j0 >= kc && j1 <= i) || (j0 >= ka && j1 < kb) || (ka < kb && kb >= kc && j0 >= ka && j1 <= i);
    }
    if (seen) {
      part[nv] = (unsigned char)!all;
      vl[nv++] = v;
    }
  }
  return nv;
}

/* out[q] (AW lanes) = sum_d x[q * hd + d] colT[d * ld + lane] for the QB rows of x [QB, hd] */
static inline void block_dots(const float *x, int hd, const float *colT, int ld, va *out) {
  va s0 = {0}, s1 = {0}, s2 = {0}, s3 = {0}, s4 = {0}, s5 = {0}, s6 = {0}, s7 = {0};
  for (int d = 0; d < hd; d++) {
    const va k = *(const va *)(colT + (size_t)d * ld);
    const float *xd = x + d;
    s0 += xd[0] * k;
    s1 += xd[hd] * k;
    s2 += xd[2 * hd] * k;
    s3 += xd[3 * hd] * k;
    s4 += xd[4 * hd] * k;
    s5 += xd[5 * hd] * k;
    s6 += xd[6 * hd] * k;
    s7 += xd[7 * hd] * k;
  }
  out[0] = s0, out[1] = s1, out[2] = s2, out[3] = s3, out[4] = s4, out[5] = s5, out[6] = s6, out[7] = s7;
}

/* colT[d * ld + lane] += sum_q W[q * ldw + v * AW + lane] x[q * hd + d]: the rank-QB update of AW columns */
static inline void block_outer(float *colT, int ld, int hd, const float *W, int ldw, int v, const float *x) {
  const va w0 = ((const va *)W)[v], w1 = ((const va *)(W + ldw))[v], w2 = ((const va *)(W + 2 * ldw))[v],
           w3 = ((const va *)(W + 3 * ldw))[v], w4 = ((const va *)(W + 4 * ldw))[v], w5 = ((const va *)(W + 5 * ldw))[v],
           w6 = ((const va *)(W + 6 * ldw))[v], w7 = ((const va *)(W + 7 * ldw))[v];
  for (int d = 0; d < hd; d++) {
    va *c = (va *)(colT + (size_t)d * ld);
    const float *xd = x + d;
    const va u0 = w0 * xd[0] + w2 * xd[2 * hd] + w4 * xd[4 * hd] + w6 * xd[6 * hd];
    const va u1 = w1 * xd[hd] + w3 * xd[3 * hd] + w5 * xd[5 * hd] + w7 * xd[7 * hd];
    *c += u0 + u1;
  }
}

/* acc[q * hdp + e] = sum over the listed key vectors' keys j of W[q * ldw + j] rows[j * hdp + e] (rows [Tp, hdp]) */
static inline void block_rows(const float *W, int ldw, const int *vl, int nv, const float *rows, int hdp, float *acc) {
  for (int c = 0; c < hdp; c += AW) {
    va o0 = {0}, o1 = {0}, o2 = {0}, o3 = {0}, o4 = {0}, o5 = {0}, o6 = {0}, o7 = {0};
    for (int t = 0; t < nv; t++) {
      const int jend = vl[t] * AW + AW;
      for (int j = vl[t] * AW; j < jend; j++) {
        const va r = *(const va *)(rows + (size_t)j * hdp + c);
        const float *w = W + j;
        o0 += w[0] * r;
        o1 += w[ldw] * r;
        o2 += w[2 * ldw] * r;
        o3 += w[3 * ldw] * r;
        o4 += w[4 * ldw] * r;
        o5 += w[5 * ldw] * r;
        o6 += w[6 * ldw] * r;
        o7 += w[7 * ldw] * r;
      }
    }
    *(va *)(acc + c) = o0, *(va *)(acc + hdp + c) = o1, *(va *)(acc + 2 * hdp + c) = o2, *(va *)(acc + 3 * hdp + c) = o3;
    *(va *)(acc + 4 * hdp + c) = o4, *(va *)(acc + 5 * hdp + c) = o5, *(va *)(acc + 6 * hdp + c) = o6, *(va *)(acc + 7 * hdp + c) = o7;
  }
}

/*
 * Copy / clear a few floats (a head's row) inline, a vector at a time: as libc calls of 32 bytes they cost more
 * than the copy. The empty asm on the counter keeps GCC from turning the loops back into memcpy / memset calls.
 */
static inline void copy_f(float *restrict dst, const float *restrict src, int n) {
  int d = 0;
  for (; d + AW <= n; d += AW) {
    *(vau *)(dst + d) = *(const vau *)(src + d);
    __asm__("" : "+r"(d));
  }
  for (; d < n; d++) {
    dst[d] = src[d];
    __asm__("" : "+r"(d));
  }
}
static inline void zero_f(float *dst, int n) {
  int d = 0;
  for (; d + AW <= n; d += AW) {
    *(vau *)(dst + d) = (vau){0};
    __asm__("" : "+r"(d));
  }
  for (; d < n; d++) {
    dst[d] = 0.f;
    __asm__("" : "+r"(d));
  }
}

/*
 * This task's keys (rotated; written to Kr as well when Ksrc is the raw K and write_kr) and values, in the layouts the
 * loops want: transposed KrT, VT [hd, Tp] (score and dP blocks as vectors over AW keys) and row-major Krow,
 * Vrow [Tp, hdp] (O and dQ blocks as sums over keys of AW-lane rows). Padding is zero. NULL skips one.
 */
static void load_kv(const attn_t *a, int b, int g, const float *Ksrc, int rope, int write_kr, float *KrT, float *VT, float *Krow, float *Vrow) {
  const int T = a->T, hd = a->hd, Tp = a->Tp, hdp = a->hdp, ld = a->KV * hd;
  float kr[hd];
  if (KrT) memset(KrT, 0, (size_t)hd * Tp * sizeof(float));
  if (VT) memset(VT, 0, (size_t)hd * Tp * sizeof(float));
  if (Krow) memset(Krow, 0, (size_t)Tp * hdp * sizeof(float));
  if (Vrow) memset(Vrow, 0, (size_t)Tp * hdp * sizeof(float));
  for (int t = 0; t < T; t++) {
    size_t off = ((size_t)b * T + t) * ld + (size_t)g * hd;
    const float *k = Ksrc + off;
    if (rope) {
      rope_row(k, kr, ROPE_C(a, b, t), ROPE_S(a, b, t), hd, 1.f);
      if (write_kr) copy_f(a->Kr + off, kr, hd);
      k = kr;
    }
    const float *v = a->V + off;
    for (int d = 0; d < hd; d++) {
      if (KrT) KrT[(size_t)d * Tp + t] = k[d];
      if (VT) VT[(size_t)d * Tp + t] = v[d];
    }
    if (Krow) copy_f(Krow + (size_t)t * hdp, k, hd);
    if (Vrow) copy_f(Vrow + (size_t)t * hdp, v, hd);
  }
}

/* floats rounded up to whole vectors, so every part of a task's scratch stays aligned */
static inline size_t vround(size_t n) { return (n + AW - 1) / AW * AW; }

/* One task per (sequence, query head): tasks of one key/value group each load its keys (the first of them
   writes the rotated keys Kr), so the threads balance over B*H tasks rather than B*KV. */
static void attn_fwd_task(void *ctx, int task) {
  attn_t *a = (attn_t *)ctx;
  const int T = a->T, H = a->H, KV = a->KV, hd = a->hd, Tp = a->Tp, hdp = a->hdp, rep = H / KV;
  const int b = task / H, h = task % H, g = h / rep, ldq = H * hd;
  const size_t nKT = (size_t)hd * Tp, nV = (size_t)Tp * hdp, nP = (size_t)QB * Tp, nX = vround((size_t)QB * hd), nA = (size_t)QB * hdp;
  const size_t nVl = Tp / AW + 1;
  float *buf = scratch(SCRATCH_ATTENTION, (nKT + nV + nP + nX + nA + 2 * nVl) * sizeof(float));
  if (!buf) {
    atomic_store(&a->failed, 1);
    return;
  }
  float *KrT = buf, *Vrow = KrT + nKT, *P = Vrow + nV, *qx = P + nP, *acc = qx + nX;
  int *vl = (int *)(acc + nA);
  unsigned char *part = (unsigned char *)(vl + nVl);
  load_kv(a, b, g, a->K, 1, h % rep == 0, KrT, NULL, NULL, Vrow);
  const va neg = (va){0} - 3.0e38f;
  float inv[QB];
  for (int i0 = 0; i0 < T; i0 += QB) {
    qblock_t blk;
    const int nv = block_setup(a, b, i0, &blk, vl, part);
    zero_f(qx, QB * hd);
    for (int q = 0; q < blk.n; q++) {
      const int i = i0 + q;
      const size_t off = ((size_t)b * T + i) * ldq + (size_t)h * hd;
      rope_row(a->Q + off, a->Qr + off, ROPE_C(a, b, i), ROPE_S(a, b, i), hd, a->scale);
      copy_f(qx + (size_t)q * hd, a->Qr + off, hd);
    }
    /* scores, masked (-3e38) only in the vectors some query does not fully see */
    for (int t = 0; t < nv; t++) {
      va s[QB];
      block_dots(qx, hd, KrT + (size_t)vl[t] * AW, Tp, s);
      if (part[t])
        for (int q = 0; q < QB; q++) s[q] = va_sel(visible_lanes(&blk, q, vl[t] * AW), s[q], neg);
      for (int q = 0; q < QB; q++) ((va *)(P + (size_t)q * Tp))[vl[t]] = s[q];
    }
    for (int q = 0; q < QB; q++) {
      va *pq = (va *)(P + (size_t)q * Tp);
      if (q >= blk.n) {
        for (int t = 0; t < nv; t++) pq[vl[t]] = (va){0};
        continue;
      }
      va vmax = neg;
      for (int t = 0; t < nv; t++) vmax = va_sel(pq[vl[t]] > vmax, pq[vl[t]], vmax);
      const float m = va_hmax(vmax);
      va vs = {0};
      for (int t = 0; t < nv; t++) {
        const va e = att_exp(pq[vl[t]] - m); /* 0 on masked lanes */
        pq[vl[t]] = e;
        vs += e;
      }
      const float sum = va_hsum(vs);
      inv[q] = 1.f / sum;
      a->L[((size_t)b * H + h) * T + i0 + q] = m + logf(sum);
    }
    block_rows(P, Tp, vl, nv, Vrow, hdp, acc);
    for (int q = 0; q < blk.n; q++) {
      float *o = a->O + ((size_t)b * T + i0 + q) * ldq + (size_t)h * hd;
      const float *aq = acc + (size_t)q * hdp;
      for (int d = 0; d < hd; d++) o[d] = aq[d] * inv[q];
    }
  }
}

static void attn_bwd_task(void *ctx, int task) {
  attn_t *a = (attn_t *)ctx;
  const int T = a->T, H = a->H, KV = a->KV, hd = a->hd, Tp = a->Tp, hdp = a->hdp, rep = H / KV;
  const int b = task / KV, g = task % KV, ldq = H * hd, ldk = KV * hd;
  const size_t nKT = (size_t)hd * Tp, nV = (size_t)Tp * hdp, nP = (size_t)QB * Tp, nX = vround((size_t)QB * hd), nA = (size_t)QB * hdp;
  const size_t nVl = Tp / AW + 1;
  float *buf = scratch(SCRATCH_ATTENTION, (4 * nKT + nV + 2 * nP + 2 * nX + nA + 2 * nVl) * sizeof(float));
  if (!buf) {
    atomic_store(&a->failed, 1);
    return;
  }
  float *KrT = buf, *VT = KrT + nKT, *dKT = VT + nKT, *dVT = dKT + nKT, *Krow = dVT + nKT;
  float *Pb = Krow + nV, *dSb = Pb + nP, *qx = dSb + nP, *gx = qx + nX, *acc = gx + nX;
  int *vl = (int *)(acc + nA);
  unsigned char *part = (unsigned char *)(vl + nVl);
  load_kv(a, b, g, a->Kr, 0, 0, KrT, VT, Krow, NULL);
  memset(dKT, 0, 2 * nKT * sizeof(float));
  float tmp[hd], Dq[QB], lse[QB];
  for (int i0 = 0; i0 < T; i0 += QB) {
    qblock_t blk;
    const int nv = block_setup(a, b, i0, &blk, vl, part); /* the same for the rep heads of the group */
    for (int r = 0; r < rep; r++) {
      const int h = g * rep + r;
      zero_f(qx, 2 * (int)nX); /* qx and gx */
      for (int q = 0; q < QB; q++) {
        Dq[q] = lse[q] = 0.f;
        if (q >= blk.n) continue;
        const size_t off = ((size_t)b * T + i0 + q) * ldq + (size_t)h * hd;
        const float *go = a->dO + off, *o = a->O + off;
        float D = 0.f;
        for (int d = 0; d < hd; d++) D += go[d] * o[d];
        Dq[q] = D;
        lse[q] = a->L[((size_t)b * H + h) * T + i0 + q];
        copy_f(qx + (size_t)q * hd, a->Qr + off, hd);
        copy_f(gx + (size_t)q * hd, go, hd);
      }
      for (int t = 0; t < nv; t++) {
        const int v = vl[t];
        va s[QB], dp[QB];
        block_dots(qx, hd, KrT + (size_t)v * AW, Tp, s);
        block_dots(gx, hd, VT + (size_t)v * AW, Tp, dp);
        /* P from the row log-sum-exp (masked only in the vectors some query does not fully see) */
        for (int q = 0; q < QB; q++) {
          va p = att_exp(s[q] - lse[q]);
          if (part[t]) p = va_sel(visible_lanes(&blk, q, v * AW), p, (va){0});
          ((va *)(Pb + (size_t)q * Tp))[v] = p;
          ((va *)(dSb + (size_t)q * Tp))[v] = p * (dp[q] - Dq[q]);
        }
        block_outer(dKT + (size_t)v * AW, Tp, hd, dSb, Tp, v, qx);
        block_outer(dVT + (size_t)v * AW, Tp, hd, Pb, Tp, v, gx);
      }
      block_rows(dSb, Tp, vl, nv, Krow, hdp, acc);
      for (int q = 0; q < blk.n; q++) {
        const int i = i0 + q;
        const size_t off = ((size_t)b * T + i) * ldq + (size_t)h * hd;
        rope_row_t(acc + (size_t)q * hdp, a->dQ + off, ROPE_C(a, b, i), ROPE_S(a, b, i), hd, a->scale);
      }
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
  a->Tp = (int)((T + AW - 1) / AW * AW);
  a->hdp = (int)((hd + AW - 1) / AW * AW);
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
  parallel_for(attn_fwd_task, &a, a.B * a.H, mt_threads(2.0 * a.B * a.H * a.T * a.T * a.hd, threads));
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
