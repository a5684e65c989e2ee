/**
 * Plain tfjs reference implementations of the ops in ops.ts (the contracts' original, autodiff-only code).
 * They are the ground truth the fast ops are tested against (values and gradients,
 * tests/unit/engine-ops.test.ts); models should call ops.ts. Slow on wasm (transposed/batched matmuls,
 * a one-hot log-softmax), but simple enough to read as the specification.
 */
import * as tf from '@tensorflow/tfjs-core';

/**
 * y = x @ w (+ b).
 * @param x `[N, in]` float32
 * @param w `[in, out]` float32
 * @param b optional `[out]`
 * @returns `[N, out]`
 */
export function linear(x: tf.Tensor2D, w: tf.Tensor2D, b?: tf.Tensor1D): tf.Tensor2D {
  const y = tf.matMul(x, w) as tf.Tensor2D;
  return b ? (tf.add(y, b) as tf.Tensor2D) : y;
}

/**
 * Embedding lookup `table[ids]`; its gradient is tfjs's own `gather` gradient (UnsortedSegmentSum, which
 * wasm-kernels.ts registers for the wasm backend).
 * @param ids `[N]` int32 token ids in [0, vocab)
 * @param table `[vocab, dim]` float32
 * @returns `[N, dim]`
 */
export function embedding(ids: tf.Tensor1D, table: tf.Tensor2D): tf.Tensor2D {
  return tf.gather(table, ids) as tf.Tensor2D;
}

/**
 * Root-mean-square layer norm: x / sqrt(mean(x^2) + eps) * weight (Zhang & Sennrich 2019; llama2.c model.py).
 * @param x `[N, D]`
 * @param weight `[D]`
 */
export function rmsNorm(x: tf.Tensor2D, weight: tf.Tensor1D, eps: number): tf.Tensor2D {
  return tf.tidy(() => {
    const ms = tf.mean(tf.square(x), -1, true);
    return tf.mul(tf.mul(x, tf.rsqrt(tf.add(ms, eps))), weight) as tf.Tensor2D;
  });
}

/**
 * LayerNorm with affine parameters (GPT-2).
 * @param x `[N, D]`; gamma, beta `[D]`
 */
export function layerNorm(x: tf.Tensor2D, gamma: tf.Tensor1D, beta: tf.Tensor1D, eps: number): tf.Tensor2D {
  return tf.tidy(() => {
    const mean = tf.mean(x, -1, true);
    const xc = tf.sub(x, mean);
    const v = tf.mean(tf.square(xc), -1, true);
    return tf.add(tf.mul(tf.mul(xc, tf.rsqrt(tf.add(v, eps))), gamma), beta) as tf.Tensor2D;
  });
}

/** SwiGLU gate: silu(gate) * up (Shazeer 2020). Shapes `[N, H]` each. */
export function swiglu(gate: tf.Tensor2D, up: tf.Tensor2D): tf.Tensor2D {
  return tf.tidy(() => tf.mul(tf.mul(gate, tf.sigmoid(gate)), up) as tf.Tensor2D);
}

/** GELU, tanh approximation (GPT-2's `gelu_new`): 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))). */
export function geluTanh(x: tf.Tensor): tf.Tensor {
  return tf.tidy(() => {
    const c = Math.sqrt(2 / Math.PI);
    const inner = tf.mul(c, tf.add(x, tf.mul(0.044715, tf.pow(x, 3))));
    return tf.mul(tf.mul(0.5, x), tf.add(1, tf.tanh(inner)));
  });
}

/**
 * Rotary position embedding, Hugging Face convention (`rotate_half`: the two halves of the head dim are
 * the real and imaginary parts). llama2.c checkpoints use interleaved pairs; their q/k weights are permuted
 * at load so that this single convention serves both (transformers' convert_llama_weights_to_hf.py).
 * @param x `[B, T, H, hd]`
 * @param cos `[T, hd]` and sin `[T, hd]` for the absolute positions of the T rows (halves duplicated)
 */
export function applyRope(x: tf.Tensor4D, cos: tf.Tensor2D, sin: tf.Tensor2D): tf.Tensor4D {
  return tf.tidy(() => {
    const [B, T, H, hd] = x.shape;
    const half = hd / 2;
    const x1 = tf.slice(x, [0, 0, 0, 0], [B, T, H, half]);
    const x2 = tf.slice(x, [0, 0, 0, half], [B, T, H, half]);
    const rot = tf.concat([tf.neg(x2), x1], 3);
    const c = tf.reshape(cos, [1, T, 1, hd]);
    const s = tf.reshape(sin, [1, T, 1, hd]);
    return tf.add(tf.mul(x, c), tf.mul(rot, s)) as tf.Tensor4D;
  });
}

/**
 * Causal scaled dot-product attention with grouped-query heads.
 * Query row i (absolute position queryOffset + i) attends to key positions j <= queryOffset + i.
 * Query head h reads key/value head floor(h / (H / KV)).
 * @param q `[B, H, T, hd]`
 * @param k `[B, KV, S, hd]` with S = queryOffset + T (a KV cache holds the first queryOffset rows)
 * @param v `[B, KV, S, hd]`
 * @param opts.scale defaults to 1/sqrt(hd)
 * @returns `[B, H, T, hd]`
 */
export function causalAttention(q: tf.Tensor4D, k: tf.Tensor4D, v: tf.Tensor4D, opts: { scale?: number; queryOffset?: number } = {}): tf.Tensor4D {
  return tf.tidy(() => {
    const [_B, H, T, hd] = q.shape;
    const KV = k.shape[1];
    const S = k.shape[2];
    const offset = opts.queryOffset ?? S - T;
    const scale = opts.scale ?? 1 / Math.sqrt(hd);
    const rep = H / KV;
    let kk: tf.Tensor4D = k;
    let vv: tf.Tensor4D = v;
    if (rep > 1) {
      // head h reads kv head floor(h / rep) (repeat_interleave); gather is differentiable, rank-5 tile is not
      const heads = tf.tensor1d(
        Array.from({ length: H }, (_, h) => Math.floor(h / rep)),
        'int32',
      );
      kk = tf.gather(k, heads, 1) as tf.Tensor4D;
      vv = tf.gather(v, heads, 1) as tf.Tensor4D;
    }
    const scores = tf.mul(tf.matMul(q, kk, false, true), scale);
    const maskData = new Float32Array(T * S);
    for (let i = 0; i < T; i++) for (let j = 0; j < S; j++) maskData[i * S + j] = j <= offset + i ? 0 : -1e9;
    const masked = tf.add(scores, tf.tensor2d(maskData, [T, S]));
    return tf.matMul(tf.softmax(masked, -1), vv) as tf.Tensor4D;
  });
}

/**
 * Log-probability of each label under softmax(hidden @ W): the per-token log p(label_t | context).
 * The fast implementation computes this in chunks over rows so the `[N, vocab]` logits are never held twice.
 * @param hidden `[N, D]` final (normed) hidden states
 * @param weight output projection: `[D, vocab]` when layout is 'DV', `[vocab, D]` (a tied embedding) when 'VD'
 * @param labels `[N]` int32 label ids (any valid id where the row is masked out by the caller)
 * @returns `[N]` log-probs (nats)
 */
export function tokenLogps(hidden: tf.Tensor2D, weight: tf.Tensor2D, labels: tf.Tensor1D, layout: 'DV' | 'VD'): tf.Tensor1D {
  return tf.tidy(() => {
    const logits = tf.matMul(hidden, weight, false, layout === 'VD');
    const lsm = tf.logSoftmax(logits, -1);
    const oh = tf.oneHot(labels, weight.shape[layout === 'VD' ? 0 : 1]);
    return tf.sum(tf.mul(lsm, oh), -1) as tf.Tensor1D;
  });
}
