/**
 * The differentiable building blocks every model calls. This file fixes their contracts (shapes, layouts,
 * semantics); the implementations are the fast ones (custom gradients, fused kernels); the values and
 * gradients equal the plain tfjs computation in ops-reference.ts (see tests/unit/engine-ops.test.ts).
 *
 * Layout conventions:
 * - activations are 2-D `[N, D]` with N = batch * seq (row-major over batch then time) wherever possible;
 * - linear weights are stored `[in, out]` (so y = x @ W is the fast, non-transposed matmul);
 *   Hugging Face stores them `[out, in]`: weight IO transposes at load and save;
 * - embedding tables are `[vocab, dim]`.
 *
 * Why custom gradients: on tfjs-wasm only the plain 2-D `matMul(a, b)` runs on XNNPACK's fast path
 * (~25-40 GFLOP/s per core); `transposeA/B` and batched products run at ~1-3 GFLOP/s, and tfjs's autodiff
 * of `matMul` uses exactly those forms. Every backward pass here is written as plain 2-D products of
 * explicitly transposed operands (a transpose is cheap next to the product), and attention runs as one
 * 2-D product per (batch, head). Formulas are the textbook derivatives, cited per op.
 */
import * as tf from '@tensorflow/tfjs-core';
import { ATTENTION_BWD, ATTENTION_FWD, RMSNORM_BWD, RMSNORM_FWD, SOFTMAX_LSE, SWIGLU_BWD, SWIGLU_FWD, fusedKernelsActive } from './kernels.js';
import { nativeMatmulActive } from './matmul.js';
import * as ref from './ops-reference.js';
import { engineSettings } from './settings.js';

/**
 * `DPO_ENGINE_OPS=reference` routes every op below to ops-reference.ts (plain tfjs ops and autodiff, no
 * custom gradients, no fused kernels): the engine as it was before any speed work, for checking a suspected
 * fast-path bug on a real run and for measuring what the fast paths buy (bench/README.md).
 */
let referenceMode: boolean | null = null;
function referenceOpsOn(): boolean {
  referenceMode ??= engineSettings().ops === 'reference';
  return referenceMode;
}

/**
 * op(a) @ op(b). With the native GEMM (native.ts) every form is fast and transposes are folded into its
 * packing; on XNNPACK only the plain form is, so a transposed operand is materialised first.
 */
function mm(a: tf.Tensor2D, b: tf.Tensor2D, transA = false, transB = false): tf.Tensor2D {
  if (nativeMatmulActive()) return tf.matMul(a, b, transA, transB);
  return tf.matMul(transA ? tf.transpose(a) : a, transB ? tf.transpose(b) : b);
}

type Saver = (tensors: tf.Tensor[]) => void;
type GradResult = { value: tf.Tensor; gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => tf.Tensor | tf.Tensor[] };
/** tf.customGrad with loose typings (its declared types do not allow a variable number of tensors + save). */
function custom<A extends tf.Tensor[]>(f: (...args: [...A, Saver]) => GradResult): (...args: A) => tf.Tensor {
  return tf.customGrad(f as unknown as Parameters<typeof tf.customGrad>[0]) as unknown as (...args: A) => tf.Tensor;
}

// ---------------------------------------------------------------------------------------------------------
// linear

const matMulNN = custom<[tf.Tensor2D, tf.Tensor2D]>((x, w, save) => {
  save([x, w]);
  return {
    value: tf.matMul(x, w),
    // dX = dY W^T, dW = X^T dY, each as a plain product of an explicitly transposed operand.
    gradFunc: (dy, [xs, ws]) => [mm(dy as tf.Tensor2D, ws as tf.Tensor2D, false, true), mm(xs as tf.Tensor2D, dy as tf.Tensor2D, true, false)],
  };
});

/**
 * x @ w for a frozen w (a non-trainable variable: the LoRA base, a reference): only dX = dY W^T in the
 * backward pass (w is not an input of the op, so no [in, out] weight gradient is computed and thrown away).
 */
function frozenMatMul(x: tf.Tensor2D, w: tf.Tensor2D): tf.Tensor {
  const f = custom<[tf.Tensor2D]>((xi, save) => {
    save([]);
    return { value: tf.matMul(xi, w), gradFunc: (dy) => [mm(dy as tf.Tensor2D, w, false, true)] };
  });
  return f(x);
}

/**
 * y = x @ w (+ b).
 * @param x `[N, in]` float32
 * @param w `[in, out]` float32
 * @param b optional `[out]`
 * @returns `[N, out]`
 */
export function linear(x: tf.Tensor2D, w: tf.Tensor2D, b?: tf.Tensor1D): tf.Tensor2D {
  if (referenceOpsOn()) return ref.linear(x, w, b);
  const y = (w instanceof tf.Variable && !w.trainable ? frozenMatMul(x, w) : matMulNN(x, w)) as tf.Tensor2D;
  if (!b) return y;
  const out = tf.add(y, b) as tf.Tensor2D;
  y.dispose();
  return out;
}

// ---------------------------------------------------------------------------------------------------------
// embedding

/**
 * Embedding lookup `table[ids]` whose gradient is a scatter-add of the output gradient rows into a
 * `[vocab, dim]` table (ScatterNd, which sums duplicate ids), the same as gather's own gradient
 * (UnsortedSegmentSum), which the wasm backend lacks.
 * @param ids `[N]` int32 token ids in [0, vocab)
 * @param table `[vocab, dim]` float32
 * @returns `[N, dim]`
 */
export function embedding(ids: tf.Tensor1D, table: tf.Tensor2D): tf.Tensor2D {
  if (referenceOpsOn()) return ref.embedding(ids, table);
  const [vocab, dim] = table.shape;
  const f = custom<[tf.Tensor2D]>((t, save) => {
    save([ids]);
    return {
      value: tf.gather(t, ids),
      gradFunc: (dy, [idsSaved]) => tf.scatterND(tf.reshape(idsSaved!, [-1, 1]), dy as tf.Tensor2D, [vocab, dim]),
    };
  });
  return f(table) as tf.Tensor2D;
}

/**
 * Rows of `x` by index, `x[rows]`, with a scatter-add gradient (ScatterNd sums repeated rows; the packed
 * shared-prompt batch scores two labels from one hidden row).
 * @param x `[N, D]` float32
 * @param rows `[M]` row indices in [0, N)
 * @returns `[M, D]`
 */
export function gatherRows(x: tf.Tensor2D, rows: Int32Array): tf.Tensor2D {
  const [N, D] = x.shape;
  const f = custom<[tf.Tensor2D]>((xi, save) => {
    const idx = tf.tensor1d(rows, 'int32');
    save([idx]);
    return {
      value: tf.gather(xi, idx),
      gradFunc: (dy, [ids]) => tf.scatterND(tf.reshape(ids!, [-1, 1]), dy as tf.Tensor2D, [N, D]),
    };
  });
  return f(x) as tf.Tensor2D;
}

// ---------------------------------------------------------------------------------------------------------
// norms and activations

/** true when the native fused kernels (RMSNorm, SwiGLU, softmax, attention) run on the current backend. */
function nativeFused(): boolean {
  return nativeMatmulActive() && fusedKernelsActive();
}

/**
 * Row softmax and log-sum-exp of logits `[n, V]`: one native kernel (native/softmax.c) when the fused
 * kernels are active, else tfjs ops (softmax, and lse = max - log(max p); max(p) = exp(max - lse) >= 1/V
 * never underflows). Not differentiable (callers write their own gradients).
 * @returns p `[n, V]` and lse `[n, 1]`
 */
export function softmaxWithLse(logits: tf.Tensor2D): { p: tf.Tensor2D; lse: tf.Tensor2D } {
  const [n] = logits.shape;
  if (nativeFused()) {
    const [p, l] = SOFTMAX_LSE.run({ x: logits }, {});
    return { p: p as tf.Tensor2D, lse: tf.reshape(l!, [n, 1]) as tf.Tensor2D };
  }
  const p = tf.softmax(logits, -1) as tf.Tensor2D;
  const lse = tf.sub(tf.max(logits, -1, true), tf.log(tf.max(p, -1, true))) as tf.Tensor2D;
  return { p, lse };
}

const rmsNormNative = (eps: number) =>
  custom<[tf.Tensor2D, tf.Tensor1D]>((x, w, save) => {
    const [y, r] = RMSNORM_FWD.run({ x, w }, { eps });
    save([x, w, r!]);
    return {
      value: y!,
      gradFunc: (dy, [xs, ws, rs]) => RMSNORM_BWD.run({ dy, x: xs!, w: ws!, r: rs! }, {}),
    };
  });

const rmsNormGrad = (eps: number) =>
  custom<[tf.Tensor2D, tf.Tensor1D]>((x, w, save) => {
    const r = tf.rsqrt(tf.add(tf.mean(tf.square(x), -1, true), eps));
    const xhat = tf.mul(x, r);
    save([xhat, w, r]);
    return {
      value: tf.mul(xhat, w),
      // y = w * x * r, r = (mean(x^2) + eps)^-1/2:
      // dx = r * (g*w - xhat * mean(g*w*xhat)), dw = sum_rows(g * xhat).
      gradFunc: (dy, [xh, ws, rs]) => {
        const gw = tf.mul(dy, ws!);
        const dx = tf.mul(rs!, tf.sub(gw, tf.mul(xh!, tf.mean(tf.mul(gw, xh!), -1, true))));
        const dw = tf.sum(tf.mul(dy, xh!), 0);
        return [dx, dw];
      },
    };
  });

/**
 * Root-mean-square layer norm: x / sqrt(mean(x^2) + eps) * weight (Zhang & Sennrich 2019; llama2.c model.py),
 * fused with its analytic gradient (one native kernel each way on wasm with the native addon,
 * native/elementwise.c).
 * @param x `[N, D]`
 * @param weight `[D]`
 */
export function rmsNorm(x: tf.Tensor2D, weight: tf.Tensor1D, eps: number): tf.Tensor2D {
  if (referenceOpsOn()) return ref.rmsNorm(x, weight, eps);
  return (nativeFused() ? rmsNormNative(eps) : rmsNormGrad(eps))(x, weight) as tf.Tensor2D;
}

const layerNormGrad = (eps: number) =>
  custom<[tf.Tensor2D, tf.Tensor1D, tf.Tensor1D]>((x, gamma, beta, save) => {
    const xc = tf.sub(x, tf.mean(x, -1, true));
    const r = tf.rsqrt(tf.add(tf.mean(tf.square(xc), -1, true), eps));
    const xhat = tf.mul(xc, r);
    save([xhat, gamma, r]);
    return {
      value: tf.add(tf.mul(xhat, gamma), beta),
      // Ba et al. 2016: dxhat = g*gamma; dx = r * (dxhat - mean(dxhat) - xhat * mean(dxhat*xhat)).
      gradFunc: (dy, [xh, gm, rs]) => {
        const dxh = tf.mul(dy, gm!);
        const inner = tf.sub(tf.sub(dxh, tf.mean(dxh, -1, true)), tf.mul(xh!, tf.mean(tf.mul(dxh, xh!), -1, true)));
        return [tf.mul(rs!, inner), tf.sum(tf.mul(dy, xh!), 0), tf.sum(dy, 0)];
      },
    };
  });

/**
 * LayerNorm with affine parameters (GPT-2), fused with its analytic gradient.
 * @param x `[N, D]`; gamma, beta `[D]`
 */
export function layerNorm(x: tf.Tensor2D, gamma: tf.Tensor1D, beta: tf.Tensor1D, eps: number): tf.Tensor2D {
  if (referenceOpsOn()) return ref.layerNorm(x, gamma, beta, eps);
  return layerNormGrad(eps)(x, gamma, beta) as tf.Tensor2D;
}

const swigluGrad = custom<[tf.Tensor2D, tf.Tensor2D]>((a, b, save) => {
  const s = tf.sigmoid(a);
  save([a, b, s]);
  return {
    value: tf.mul(tf.mul(a, s), b),
    // y = a s(a) b: da = g b s (1 + a (1 - s)), db = g a s.
    gradFunc: (dy, [as, bs, ss]) => {
      const gs = tf.mul(dy, ss!);
      const da = tf.mul(tf.mul(gs, bs!), tf.add(1, tf.mul(as!, tf.sub(1, ss!))));
      const db = tf.mul(gs, as!);
      return [da, db];
    },
  };
});

const swigluNative = custom<[tf.Tensor2D, tf.Tensor2D]>((a, b, save) => {
  save([a, b]);
  return {
    value: SWIGLU_FWD.run({ a, b }, {})[0]!,
    gradFunc: (dy, [as, bs]) => SWIGLU_BWD.run({ dy, a: as!, b: bs! }, {}),
  };
});

/**
 * SwiGLU gate: silu(gate) * up (Shazeer 2020), fused with its analytic gradient (one native kernel each way
 * on wasm with the native addon, native/elementwise.c). Shapes `[N, H]` each.
 */
export function swiglu(gate: tf.Tensor2D, up: tf.Tensor2D): tf.Tensor2D {
  if (referenceOpsOn()) return ref.swiglu(gate, up);
  return (nativeFused() ? swigluNative : swigluGrad)(gate, up) as tf.Tensor2D;
}

const GELU_C = Math.sqrt(2 / Math.PI);
const geluGrad = custom<[tf.Tensor]>((x, save) => {
  const x2 = tf.square(x);
  const t = tf.tanh(tf.mul(tf.mul(x, GELU_C), tf.add(1, tf.mul(0.044715, x2))));
  save([x, x2, t]);
  return {
    value: tf.mul(tf.mul(0.5, x), tf.add(1, t)),
    // d/dx 0.5 x (1 + t) = 0.5 (1 + t) + 0.5 x (1 - t^2) c (1 + 3 * 0.044715 x^2)
    gradFunc: (dy, [xs, x2s, ts]) => {
      const a = tf.mul(0.5, tf.add(1, ts!));
      const b = tf.mul(tf.mul(tf.mul(0.5 * GELU_C, xs!), tf.sub(1, tf.square(ts!))), tf.add(1, tf.mul(3 * 0.044715, x2s!)));
      return [tf.mul(dy, tf.add(a, b))];
    },
  };
});

/** GELU, tanh approximation (GPT-2's `gelu_new`): 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))). */
export function geluTanh(x: tf.Tensor): tf.Tensor {
  if (referenceOpsOn()) return ref.geluTanh(x);
  return geluGrad(x);
}

// ---------------------------------------------------------------------------------------------------------
// rotary embedding

const rotCache = new Map<string, tf.Tensor2D>();
/**
 * The `[hd, hd]` matrix R with x R = rotate_half(x) = [-x2, x1] (transposed: x R^T = [x2, -x1]), cached.
 * A product with R is a plain 2-D matmul (fast on wasm, where Reverse/Concat over the last axis are slow).
 */
function rotMatrix(hd: number, transposed: boolean): tf.Tensor2D {
  const key = `${hd}${transposed ? 'T' : ''}`;
  let r = rotCache.get(key);
  if (!r || r.isDisposed) {
    const half = hd / 2;
    const m = new Float32Array(hd * hd);
    for (let j = 0; j < half; j++) {
      // out[j] = -x[j + half]; out[j + half] = x[j]  (row = input index, column = output index)
      m[(j + half) * hd + j] = -1;
      m[j * hd + j + half] = 1;
    }
    r = tf.keep(transposed ? tf.transpose(tf.tensor2d(m, [hd, hd])) : tf.tensor2d(m, [hd, hd]));
    rotCache.set(key, r);
  }
  return r;
}

/**
 * Rotary position embedding, Hugging Face convention (`rotate_half`: the two halves of the head dim are
 * the real and imaginary parts). llama2.c checkpoints use interleaved pairs; their q/k weights are permuted
 * at load so that this single convention serves both (transformers' convert_llama_weights_to_hf.py).
 * y = x cos + rotate_half(x) sin; gradient dx = g cos + rotate_half^T(g sin), rotate_half^T(u) = [u2, -u1].
 * rotate_half is applied as a product with a constant `[hd, hd]` matrix.
 * @param x `[B, T, H, hd]`
 * @param cos `[T, hd]` and sin `[T, hd]` for the absolute positions of the T rows (halves duplicated)
 */
export function applyRope(x: tf.Tensor4D, cos: tf.Tensor2D, sin: tf.Tensor2D): tf.Tensor4D {
  if (referenceOpsOn()) return ref.applyRope(x, cos, sin);
  const [B, T, H, hd] = x.shape;
  const shape = x.shape.slice();
  const rows = B * T * H;
  const rot = (t: tf.Tensor, transposed: boolean): tf.Tensor =>
    tf.reshape(tf.matMul(tf.reshape(t, [rows, hd]) as tf.Tensor2D, rotMatrix(hd, transposed)), shape);
  const f = custom<[tf.Tensor4D]>((xi, save) => {
    const c = tf.reshape(cos, [1, T, 1, hd]);
    const s = tf.reshape(sin, [1, T, 1, hd]);
    save([c, s]);
    return {
      value: tf.add(tf.mul(xi, c), tf.mul(rot(xi, false), s)),
      gradFunc: (dy, [cs, ss]) => [tf.add(tf.mul(dy, cs!), rot(tf.mul(dy, ss!), true))],
    };
  });
  return f(x) as tf.Tensor4D;
}

// ---------------------------------------------------------------------------------------------------------
// attention

const maskCache = new Map<string, tf.Tensor2D>();
/** Additive causal mask `[T, S]`: 0 where key j <= offset + i, else -1e9 (as the reference). Cached. */
function causalMask(T: number, S: number, offset: number): tf.Tensor2D {
  const key = `${T}x${S}@${offset}`;
  let m = maskCache.get(key);
  if (!m || m.isDisposed) {
    const data = new Float32Array(T * S);
    for (let i = 0; i < T; i++) for (let j = 0; j < S; j++) data[i * S + j] = j <= offset + i ? 0 : -1e9;
    m = tf.keep(tf.tensor2d(data, [T, S]));
    maskCache.set(key, m);
  }
  return m;
}

/** Unstack `[n, r, c]` into n 2-D tensors `[r, c]`. */
function pieces(x: tf.Tensor, n: number, r: number, c: number): tf.Tensor2D[] {
  return tf.unstack(tf.reshape(x, [n, r, c])) as tf.Tensor2D[];
}

/**
 * Causal scaled dot-product attention with grouped-query heads, with an analytic gradient, computed as
 * one plain 2-D product per (batch, head) (softmax and masking batched over all heads at once).
 * Query row i (absolute position queryOffset + i) attends to key positions j <= queryOffset + i.
 * Query head h reads key/value head floor(h / (H / KV)).
 * Backward (P = softmax(S), S = scale q k^T + mask): dV = P^T dO, dP = dO V^T,
 * dS = P * (dP - rowsum(dP * P)), dQ = scale dS K, dK = scale dS^T Q (summed over a KV group's heads).
 * @param q `[B, H, T, hd]`
 * @param k `[B, KV, S, hd]` with S = queryOffset + T (a KV cache holds the first queryOffset rows)
 * @param v `[B, KV, S, hd]`
 * @param opts.scale defaults to 1/sqrt(hd)
 * @returns `[B, H, T, hd]`
 */
export function causalAttention(q: tf.Tensor4D, k: tf.Tensor4D, v: tf.Tensor4D, opts: { scale?: number; queryOffset?: number } = {}): tf.Tensor4D {
  if (referenceOpsOn()) return ref.causalAttention(q, k, v, opts);
  const [B, H, T, hd] = q.shape;
  const KV = k.shape[1];
  const S = k.shape[2];
  const offset = opts.queryOffset ?? S - T;
  const scale = opts.scale ?? 1 / Math.sqrt(hd);
  const rep = H / KV;
  const BH = B * H;
  const BKV = B * KV;
  // query piece i = b*H + h reads kv piece b*KV + floor(h / rep)
  const kvOf = (i: number): number => Math.floor(i / H) * KV + Math.floor((i % H) / rep);
  const mask = causalMask(T, S, offset);

  if (nativeMatmulActive()) return attentionBatched(q, k, v, scale, mask);
  const f = custom<[tf.Tensor4D, tf.Tensor4D, tf.Tensor4D]>((qi, ki, vi, save) => {
    const qs = pieces(qi, BH, T, hd);
    const kTs = tf.unstack(tf.transpose(tf.reshape(ki, [BKV, S, hd]), [0, 2, 1])) as tf.Tensor2D[];
    const vs = pieces(vi, BKV, S, hd);
    const scores = tf.stack(qs.map((qq, i) => tf.matMul(qq, kTs[kvOf(i)]!)));
    const p = tf.softmax(tf.add(tf.mul(scores, scale), mask), -1); // [BH, T, S]
    const ps = tf.unstack(p) as tf.Tensor2D[];
    const out = tf.reshape(tf.stack(ps.map((pp, i) => tf.matMul(pp, vs[kvOf(i)]!))), [B, H, T, hd]);
    save([qi, ki, vi, p]);
    return {
      value: out,
      gradFunc: (dy, [qsv, ksv, vsv, pv]) => {
        const dOs = pieces(dy, BH, T, hd);
        const vTs = tf.unstack(tf.transpose(tf.reshape(vsv!, [BKV, S, hd]), [0, 2, 1])) as tf.Tensor2D[];
        const pTs = tf.unstack(tf.transpose(pv!, [0, 2, 1])) as tf.Tensor2D[];
        const dP = tf.stack(dOs.map((d, i) => tf.matMul(d, vTs[kvOf(i)]!))); // [BH, T, S]
        const dS = tf.mul(tf.mul(pv!, tf.sub(dP, tf.sum(tf.mul(dP, pv!), -1, true))), scale);
        const dSs = tf.unstack(dS) as tf.Tensor2D[];
        const dSTs = tf.unstack(tf.transpose(dS, [0, 2, 1])) as tf.Tensor2D[];
        const ks2 = pieces(ksv!, BKV, S, hd);
        const qs2 = pieces(qsv!, BH, T, hd);
        const dQ = tf.stack(dSs.map((d, i) => tf.matMul(d, ks2[kvOf(i)]!)));
        const dKparts: tf.Tensor2D[][] = Array.from({ length: BKV }, () => []);
        const dVparts: tf.Tensor2D[][] = Array.from({ length: BKV }, () => []);
        for (let i = 0; i < BH; i++) {
          dKparts[kvOf(i)]!.push(tf.matMul(dSTs[i]!, qs2[i]!));
          dVparts[kvOf(i)]!.push(tf.matMul(pTs[i]!, dOs[i]!));
        }
        const sumAll = (xs: tf.Tensor2D[]): tf.Tensor2D => (xs.length === 1 ? xs[0]! : (tf.addN(xs) as tf.Tensor2D));
        const dK = tf.stack(dKparts.map(sumAll));
        const dV = tf.stack(dVparts.map(sumAll));
        return [tf.reshape(dQ, [B, H, T, hd]), tf.reshape(dK, [B, KV, S, hd]), tf.reshape(dV, [B, KV, S, hd])];
      },
    };
  });
  return f(q, k, v) as tf.Tensor4D;
}

/**
 * causalAttention with batched products `[B*H, T, hd] x [B*H, hd, S]` (one kernel call per product; the
 * native GEMM handles the batch and the transposes). GQA: k/v heads are repeated for the products and their
 * gradients summed back over each group.
 */
function attentionBatched(q: tf.Tensor4D, k: tf.Tensor4D, v: tf.Tensor4D, scale: number, mask: tf.Tensor2D): tf.Tensor4D {
  const [B, H, T, hd] = q.shape;
  const KV = k.shape[1];
  const S = k.shape[2];
  const rep = H / KV;
  const BH = B * H;
  // head h reads kv head floor(h / rep): repeat each kv head rep times (a concat: on wasm gather and tile of
  // [16, 4, 128, 8] take 3.9 and 9.8 ms, the concat 0.4 ms)
  const expand = (x: tf.Tensor4D): tf.Tensor3D => {
    if (rep === 1) return tf.reshape(x, [BH, S, hd]) as tf.Tensor3D;
    const x5 = tf.reshape(x, [B, KV, 1, S, hd]);
    return tf.reshape(tf.concat(new Array<tf.Tensor>(rep).fill(x5), 2), [BH, S, hd]) as tf.Tensor3D;
  };
  const f = custom<[tf.Tensor4D, tf.Tensor4D, tf.Tensor4D]>((qi, ki, vi, save) => {
    const q3 = tf.reshape(qi, [BH, T, hd]) as tf.Tensor3D;
    const k3 = expand(ki);
    const v3 = expand(vi);
    // (scale q) k^T: the scale on the [BH, T, hd] queries, not on the S/hd times larger scores
    const logits = tf.add(tf.matMul(tf.mul(q3, scale), k3, false, true), mask); // [BH, T, S]
    // the native row softmax (tfjs-wasm's Softmax took ~2.4 ms for [128, 128, 128])
    const p = tf.reshape(softmaxWithLse(tf.reshape(logits, [BH * T, S]) as tf.Tensor2D).p, [BH, T, S]) as tf.Tensor3D;
    save([q3, k3, v3, p]);
    return {
      value: tf.reshape(tf.matMul(p, v3), [B, H, T, hd]),
      gradFunc: (dy, [qs, ks, vs, ps]) => {
        const d3 = tf.reshape(dy, [BH, T, hd]) as tf.Tensor3D;
        const dP = tf.matMul(d3, vs as tf.Tensor3D, false, true); // [BH, T, S]
        const dS = tf.mul(tf.mul(ps!, tf.sub(dP, tf.sum(tf.mul(dP, ps!), -1, true))), scale) as tf.Tensor3D;
        const dQ = tf.matMul(dS, ks as tf.Tensor3D); // [BH, T, hd]
        const dK = tf.matMul(dS, qs as tf.Tensor3D, true, false); // [BH, S, hd]
        const dV = tf.matMul(ps as tf.Tensor3D, d3, true, false); // [BH, S, hd]
        const fold = (x: tf.Tensor): tf.Tensor => (rep > 1 ? tf.sum(tf.reshape(x, [B, KV, rep, S, hd]), 2) : tf.reshape(x, [B, KV, S, hd]));
        return [tf.reshape(dQ, [B, H, T, hd]), fold(dK), fold(dV)];
      },
    };
  });
  return f(q, k, v) as tf.Tensor4D;
}

let fusedAttentionOn: boolean | null = null;
/**
 * Turn the native fused attention of {@link selfAttention} on or off (A/B measurements and tests; env
 * `DPO_FUSED_ATTENTION=0` starts with it off). When off, or without the native addon, selfAttention runs
 * as applyRope + head transposes + causalAttention.
 */
export function useFusedAttention(on: boolean): void {
  fusedAttentionOn = on;
}

/** Whether {@link selfAttention} runs the native fused kernel now. */
export function fusedAttentionActive(): boolean {
  fusedAttentionOn ??= engineSettings().fusedAttention;
  return !referenceOpsOn() && fusedAttentionOn && nativeFused();
}

/** Shapes of {@link selfAttention}: batch, sequence, query heads, key/value heads, head dim. */
export interface AttentionDims {
  B: number;
  T: number;
  H: number;
  KV: number;
  hd: number;
}

/**
 * Causal self-attention over whole sequences (training and scoring; no KV cache), from the q/k/v
 * projections' row layout to the output projection's input, with rotary embeddings on q and k when `rope`
 * is given: the same computation as `applyRope` on q and k, the head transposes and {@link causalAttention}
 * (Vaswani et al. 2017, eq. 1; RoPE: Su et al. 2021, Hugging Face rotate_half convention), with its
 * analytic gradient. With the native addon it is one fused kernel forward and one backward
 * (native/attention.c: rotation, scores, causal softmax and both products, probabilities recomputed in the
 * backward pass from the row log-sum-exp as in FlashAttention-2), instead of ~30 and ~40 tfjs kernels.
 * @param q `[B*T, H*hd]` (row b*T + t, head h at columns h*hd..), before RoPE
 * @param k `[B*T, KV*hd]` before RoPE; v `[B*T, KV*hd]`
 * @param dims B, T, H, KV (H a multiple of KV: query head h reads key/value head floor(h / (H / KV))), hd
 * @param rope cos, sin `[T, hd]` of positions 0..T-1 (halves duplicated), or `[B*T, hd]` per token (the
 *   position ids of packed sequences), or undefined for none
 * @param scale defaults to 1/sqrt(hd)
 * @param segments optional segment mask of packed rows ({@link AttentionSegments}); default plain causal
 * @returns `[B*T, H*hd]`
 * @throws RangeError when the shapes disagree with dims, or the segment mask with B*T
 */
export function selfAttention(
  q: tf.Tensor2D,
  k: tf.Tensor2D,
  v: tf.Tensor2D,
  dims: AttentionDims,
  rope?: { cos: tf.Tensor2D; sin: tf.Tensor2D },
  scale = 1 / Math.sqrt(dims.hd),
  segments?: AttentionSegments,
): tf.Tensor2D {
  const { B, T, H, KV, hd } = dims;
  const N = B * T;
  if (q.shape[0] !== N || q.shape[1] !== H * hd || k.shape[0] !== N || k.shape[1] !== KV * hd || v.shape[0] !== N || v.shape[1] !== KV * hd || H % KV !== 0)
    throw new RangeError(
      `selfAttention: q ${JSON.stringify(q.shape)}, k ${JSON.stringify(k.shape)}, v ${JSON.stringify(v.shape)} do not fit B=${B} T=${T} H=${H} KV=${KV} hd=${hd}`,
    );
  // per-token rotary tables [B*T, hd] (packed sequences' position ids); [T, hd] otherwise (same rows when B = 1)
  const ropeRows = rope !== undefined && rope.cos.shape[0] === N && N !== T;
  if (segments) checkSegments(segments, B, T);
  if (!fusedAttentionActive()) {
    if (segments || ropeRows) return maskedSelfAttention(q, k, v, dims, rope, scale, segments);
    let q4 = tf.reshape(q, [B, T, H, hd]) as tf.Tensor4D;
    let k4 = tf.reshape(k, [B, T, KV, hd]) as tf.Tensor4D;
    if (rope) {
      q4 = applyRope(q4, rope.cos, rope.sin);
      k4 = applyRope(k4, rope.cos, rope.sin);
    }
    const heads = (x: tf.Tensor4D): tf.Tensor4D => tf.transpose(x, [0, 2, 1, 3]) as tf.Tensor4D;
    const att = causalAttention(heads(q4), heads(k4), heads(tf.reshape(v, [B, T, KV, hd]) as tf.Tensor4D), { scale, queryOffset: 0 });
    return tf.reshape(tf.transpose(att, [0, 2, 1, 3]), [N, H * hd]) as tf.Tensor2D;
  }
  const attrs = ropeRows ? { B, T, H, KV, hd, scale, ropeRows } : { B, T, H, KV, hd, scale };
  const f = custom<[tf.Tensor2D, tf.Tensor2D, tf.Tensor2D]>((qi, ki, vi, save) => {
    const maskT = segments ? tf.tensor1d(segments.mask, 'int32') : undefined;
    const extra = { ...(rope ? { cos: rope.cos, sin: rope.sin } : {}), ...(maskT ? { mask: maskT } : {}) };
    const [o, qr, kr, lse] = ATTENTION_FWD.run({ q: qi, k: ki, v: vi, ...extra }, attrs);
    // saved: qr, kr, v, o, lse, then cos, sin (with rope), then the mask (with segments)
    save([qr!, kr!, vi, o!, lse!, ...(rope ? [rope.cos, rope.sin] : []), ...(maskT ? [maskT] : [])]);
    return {
      value: o!,
      gradFunc: (dy, saved) => {
        const [qs, ks, vs, os, ls] = saved;
        const cs = rope ? saved[5] : undefined;
        const ss = rope ? saved[6] : undefined;
        const ms = segments ? saved[rope ? 7 : 5] : undefined;
        return ATTENTION_BWD.run({ dy, qr: qs!, kr: ks!, v: vs!, o: os!, lse: ls!, ...(cs ? { cos: cs, sin: ss! } : {}), ...(ms ? { mask: ms } : {}) }, attrs);
      },
    };
  });
  return f(q, k, v) as tf.Tensor2D;
}

/**
 * Which keys each query of a packed row sees (padding-free and shared-prompt batches, data/packing.ts): for
 * query row r = b*T + i, key j (same row b) is visible iff `c[r] <= j <= i` (its own causal segment) or
 * `a[r] <= j < b[r]` (a shared prefix, e.g. the pair's prompt for a rejected token). `mask` holds the three
 * `[B*T]` int32 arrays a, b, c one after the other (`[3, B*T]`); 0 <= a <= b <= c <= i. Plain causal
 * attention is a = b = c = 0.
 */
export interface AttentionSegments {
  mask: Int32Array;
}

/** @throws RangeError when a segment mask does not fit B*T rows or breaks 0 <= a <= b <= c <= i */
function checkSegments(s: AttentionSegments, B: number, T: number): void {
  const N = B * T;
  if (s.mask.length !== 3 * N) throw new RangeError(`selfAttention: segments.mask has ${s.mask.length} entries, expected 3 x B*T = ${3 * N}`);
  for (let r = 0; r < N; r++) {
    const i = r % T;
    const a = s.mask[r]!;
    const b = s.mask[N + r]!;
    const c = s.mask[2 * N + r]!;
    if (!(a >= 0 && a <= b && b <= c && c <= i))
      throw new RangeError(`selfAttention: segments.mask row ${r}: need 0 <= a (${a}) <= b (${b}) <= c (${c}) <= t (${i})`);
  }
}

/**
 * The additive mask `[B, T, T]` of {@link AttentionSegments} (0 where visible, -1e9 elsewhere, as the
 * causal reference); plain causal without segments.
 */
export function segmentMaskAdditive(B: number, T: number, segments?: AttentionSegments): Float32Array {
  const N = B * T;
  const out = new Float32Array(B * T * T).fill(-1e9);
  for (let r = 0; r < N; r++) {
    const b = Math.floor(r / T);
    const i = r % T;
    const ka = segments ? segments.mask[r]! : 0;
    const kb = segments ? segments.mask[N + r]! : 0;
    const kc = segments ? segments.mask[2 * N + r]! : 0;
    const base = (b * T + i) * T;
    for (let j = ka; j < kb; j++) out[base + j] = 0;
    for (let j = kc; j <= i; j++) out[base + j] = 0;
  }
  return out;
}

/**
 * {@link selfAttention} as the plain composition with an explicit additive mask (tfjs ops and autodiff):
 * RoPE (per-token tables allowed), softmax(scale q k^T + mask) v per (batch, head). The path without the
 * fused kernel for packed rows, and the oracle of its tests. Same arguments as selfAttention.
 */
export function maskedSelfAttention(
  q: tf.Tensor2D,
  k: tf.Tensor2D,
  v: tf.Tensor2D,
  dims: AttentionDims,
  rope?: { cos: tf.Tensor2D; sin: tf.Tensor2D },
  scale = 1 / Math.sqrt(dims.hd),
  segments?: AttentionSegments,
): tf.Tensor2D {
  const { B, T, H, KV, hd } = dims;
  const N = B * T;
  const rep = H / KV;
  return tf.tidy(() => {
    let q4 = tf.reshape(q, [1, N, H, hd]) as tf.Tensor4D;
    let k4 = tf.reshape(k, [1, N, KV, hd]) as tf.Tensor4D;
    if (rope) {
      const perRow = rope.cos.shape[0] === N;
      const cos = perRow ? rope.cos : (tf.tile(rope.cos, [B, 1]) as tf.Tensor2D);
      const sin = perRow ? rope.sin : (tf.tile(rope.sin, [B, 1]) as tf.Tensor2D);
      q4 = applyRope(q4, cos, sin);
      k4 = applyRope(k4, cos, sin);
    }
    const heads = (x: tf.Tensor, n: number): tf.Tensor4D => tf.transpose(tf.reshape(x, [B, T, n, hd]), [0, 2, 1, 3]) as tf.Tensor4D;
    const expand = (x: tf.Tensor4D): tf.Tensor3D => {
      const x5 = tf.reshape(x, [B, KV, 1, T, hd]);
      return tf.reshape(rep === 1 ? x5 : tf.concat(new Array<tf.Tensor>(rep).fill(x5), 2), [B * H, T, hd]) as tf.Tensor3D;
    };
    const q3 = tf.reshape(heads(q4, H), [B * H, T, hd]) as tf.Tensor3D;
    const k3 = expand(heads(k4, KV));
    const v3 = expand(heads(v, KV));
    const mask = tf.tensor4d(segmentMaskAdditive(B, T, segments), [B, 1, T, T]);
    const scores = tf.add(tf.reshape(tf.mul(tf.matMul(q3, k3, false, true), scale), [B, H, T, T]), mask);
    const p = tf.reshape(tf.softmax(scores, -1), [B * H, T, T]) as tf.Tensor3D;
    const o = tf.matMul(p, v3); // [B*H, T, hd]
    return tf.reshape(tf.transpose(tf.reshape(o, [B, H, T, hd]), [0, 2, 1, 3]), [N, H * hd]) as tf.Tensor2D;
  });
}

// ---------------------------------------------------------------------------------------------------------
// log-probs of the labels

/** Options of {@link tokenLogps}. */
export interface TokenLogpsOptions {
  /**
   * Optional `[N]` row mask (e.g. the shifted completion mask): rows whose mask is 0 are not computed and
   * get log-prob 0 with zero gradient. Saves the vocabulary projection for prompt and padding rows.
   */
  rowMask?: ArrayLike<number>;
  /** Rows per chunk (default: as many as keep a chunk's probabilities at about 2^25 floats, 128 MiB). */
  chunkRows?: number;
  /** Vocabulary columns per block (default: about 8192; long reductions over the vocabulary run 2x slower). */
  vocabBlock?: number;
}

/**
 * Log-probability of each label under softmax(hidden @ W): the per-token log p(label_t | context).
 *
 * Computed in chunks of rows and, within a chunk, blocks of the vocabulary. Per block j: logits_j = h W_j
 * (plain 2-D product), p_j = softmax(logits_j) and the block's logsumexp lse_j = max(logits_j) - log(max(p_j))
 * (max(p_j) = exp(max - lse_j) >= 1/V_j never underflows); lse = logsumexp_j(lse_j); p_j is rescaled by
 * exp(lse_j - lse) to the full softmax; log p(label) = h . W[label] - lse. No one-hot and no log-softmax pass
 * over `[N, vocab]`; only p is kept for the backward pass (the `[N, vocab]` logits are never held twice).
 * Gradient (softmax cross-entropy): d logp / d logits = onehot(label) - p, so with g = upstream `[N]`:
 * dh = g (W_vd[label] - sum_j p_j W_vd,j), dW_dv,j = (-g h)^T p_j (+ g h scattered to the label rows);
 * all plain 2-D products with short reductions.
 * @param hidden `[N, D]` final (normed) hidden states
 * @param weight output projection: `[D, vocab]` when layout is 'DV', `[vocab, D]` (a tied embedding) when 'VD'
 * @param labels `[N]` int32 label ids (any valid id where the row is masked out by the caller)
 * @param opts optional row mask, chunk and block sizes (see {@link TokenLogpsOptions})
 * @returns `[N]` log-probs (nats)
 * @throws RangeError when rowMask's length differs from N
 */
export function tokenLogps(hidden: tf.Tensor2D, weight: tf.Tensor2D, labels: tf.Tensor1D, layout: 'DV' | 'VD', opts: TokenLogpsOptions = {}): tf.Tensor1D {
  if (referenceOpsOn()) {
    const lp = ref.tokenLogps(hidden, weight, labels, layout);
    if (!opts.rowMask) return lp;
    return tf.tidy(() => tf.mul(lp, tf.tensor1d(Array.from(opts.rowMask!), 'float32'))) as tf.Tensor1D;
  }
  const [N, D] = hidden.shape;
  const V = weight.shape[layout === 'VD' ? 0 : 1];
  const labelData = labels.dataSync() as Int32Array;
  let rows: number[] | null = null;
  if (opts.rowMask) {
    if (opts.rowMask.length !== N) throw new RangeError(`tokenLogps: rowMask has ${opts.rowMask.length} entries, hidden has ${N} rows`);
    rows = [];
    for (let i = 0; i < N; i++) if (opts.rowMask[i] !== 0) rows.push(i);
    if (rows.length === N) rows = null;
  }
  const M = rows ? rows.length : N;
  const lab = rows ? Int32Array.from(rows, (r) => labelData[r]!) : labelData;
  const chunk = Math.max(1, Math.floor(opts.chunkRows ?? Math.max(1, Math.floor(2 ** 25 / V))));
  const starts: number[] = [];
  for (let s = 0; s < M; s += chunk) starts.push(s);
  const native = nativeMatmulActive();
  // XNNPACK runs long reductions over the vocabulary 2x slower: blocks of ~8192 there; native: one block
  const nBlocks = Math.max(1, Math.ceil(V / Math.max(1, opts.vocabBlock ?? (native ? V : 8192))));
  const blockSize = Math.ceil(V / nBlocks);
  const blocks: Array<[number, number]> = [];
  for (let v0 = 0; v0 < V; v0 += blockSize) blocks.push([v0, Math.min(blockSize, V - v0)]);

  /** W's blocks in its stored layout: `[Vb, D]` ('VD') or `[D, Vb]` ('DV'). */
  const wBlocks = (w: tf.Tensor2D): tf.Tensor2D[] =>
    blocks.map(([v0, n]) => (blocks.length === 1 ? w : layout === 'VD' ? tf.slice(w, [v0, 0], [n, D]) : tf.slice(w, [0, v0], [D, n])));
  /** h @ W_j as logits `[n, Vb]`. */
  const project = (h: tf.Tensor2D, wj: tf.Tensor2D): tf.Tensor2D => mm(h, wj, false, layout === 'VD');
  /** p_j @ W_j^T as `[n, D]` (p_j `[n, Vb]`). */
  const backProject = (p: tf.Tensor2D, wj: tf.Tensor2D): tf.Tensor2D => mm(p, wj, false, layout === 'DV');
  /** Rows of W (as `[n, D]`) for the given label ids. */
  const labelRows = (w: tf.Tensor2D, ids: tf.Tensor1D): tf.Tensor2D => (layout === 'VD' ? tf.gather(w, ids) : tf.transpose(tf.gather(w, ids, 1)));

  const f = custom<[tf.Tensor2D, tf.Tensor2D]>((h, w, save) => {
    if (M === 0) {
      save([]);
      return { value: tf.zeros([N]), gradFunc: () => [tf.zerosLike(h), tf.zerosLike(w)] };
    }
    const rowsT = rows ? tf.tensor1d(rows, 'int32') : null;
    const hSel = rowsT ? (tf.gather(h, rowsT) as tf.Tensor2D) : h;
    const wB = wBlocks(w);
    const parts: tf.Tensor[] = [];
    const probs: tf.Tensor2D[] = []; // chunk-major, then block
    for (const s of starts) {
      const n = Math.min(chunk, M - s);
      const hc = starts.length === 1 ? hSel : tf.slice(hSel, [s, 0], [n, D]);
      const ps: tf.Tensor2D[] = [];
      const lses: tf.Tensor[] = [];
      for (const wj of wB) {
        const { p, lse } = softmaxWithLse(project(hc, wj)); // p [n, Vb], lse [n, 1]
        lses.push(lse);
        ps.push(p);
      }
      const lseAll = lses.length === 1 ? lses[0]! : tf.logSumExp(tf.concat(lses, 1), 1, true); // [n, 1]
      for (let j = 0; j < ps.length; j++) probs.push(ps.length === 1 ? ps[j]! : tf.mul(ps[j]!, tf.exp(tf.sub(lses[j]!, lseAll))));
      const labT = tf.tensor1d(lab.subarray(s, s + n), 'int32');
      const picked = tf.sum(tf.mul(hc, labelRows(w, labT)), -1); // h . W[label]
      parts.push(tf.sub(picked, tf.reshape(lseAll, [n])));
    }
    const lp = parts.length === 1 ? parts[0]! : tf.concat(parts, 0);
    const value = rowsT ? tf.scatterND(tf.reshape(rowsT, [M, 1]), lp, [N]) : lp;
    save([hSel, w, ...probs]);
    return {
      value,
      gradFunc: (dy, saved) => {
        const [hs, ws, ...ps] = saved as [tf.Tensor2D, tf.Tensor2D, ...tf.Tensor2D[]];
        const rowsT = rows ? tf.tensor1d(rows, 'int32') : null; // the forward's copy was disposed with its scope
        const g = rowsT ? tf.gather(dy, rowsT) : dy; // [M]
        const wB = wBlocks(ws);
        const dhParts: tf.Tensor[] = [];
        const dWb: Array<tf.Tensor | null> = blocks.map(() => null); // per block, W's layout: (-g h)^T p_j
        let dWlab: tf.Tensor | null = null; // [V, D]: scatter(label, g h)
        for (let c = 0; c < starts.length; c++) {
          const s = starts[c]!;
          const n = Math.min(chunk, M - s);
          const hc = starts.length === 1 ? hs : tf.slice(hs, [s, 0], [n, D]);
          const gc = tf.reshape(starts.length === 1 ? g : tf.slice(g, [s], [n]), [n, 1]);
          const labT = tf.tensor1d(lab.subarray(s, s + n), 'int32');
          let pw: tf.Tensor | null = null; // sum_j p_j W_vd,j  [n, D]
          const nhg = tf.neg(tf.mul(hc, gc)) as tf.Tensor2D; // -g h, [n, D]
          for (let j = 0; j < blocks.length; j++) {
            const p = ps[c * blocks.length + j]!;
            const t = backProject(p, wB[j]!);
            pw = pw ? tf.add(pw, t) : t;
            // 'VD': p^T (-g h) [Vb, D] (native: transposed operand in the packing; XNNPACK: (-gh)^T p, transposed)
            const a = layout === 'DV' ? mm(nhg, p, true, false) : native ? mm(p, nhg, true, false) : tf.transpose(mm(nhg, p, true, false));
            dWb[j] = dWb[j] ? tf.add(dWb[j]!, a) : a;
          }
          dhParts.push(tf.mul(gc, tf.sub(labelRows(ws, labT), pw!)));
          const sc = tf.scatterND(tf.reshape(labT, [n, 1]), tf.mul(hc, gc), [V, D]);
          dWlab = dWlab ? tf.add(dWlab, sc) : sc;
        }
        const dhSel = dhParts.length === 1 ? dhParts[0]! : tf.concat(dhParts, 0);
        const dh = rowsT ? tf.scatterND(tf.reshape(rowsT, [M, 1]), dhSel, [N, D]) : dhSel;
        const parts = dWb as tf.Tensor[];
        const dW =
          layout === 'VD'
            ? tf.add(parts.length === 1 ? parts[0]! : tf.concat(parts, 0), dWlab!)
            : tf.add(parts.length === 1 ? parts[0]! : tf.concat(parts, 1), tf.transpose(dWlab!));
        return [dh, dW];
      },
    };
  });
  return f(hidden, weight) as tf.Tensor1D;
}
