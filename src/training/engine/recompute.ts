/**
 * Gradient checkpointing (Chen et al. 2016, "Training Deep Nets with Sublinear Memory Cost"; TRL /
 * transformers `gradient_checkpointing`): run a block without keeping its activations, and recompute them
 * in the backward pass. Only the block's input is saved; the backward pass runs the block again under its
 * own tape and backpropagates the upstream gradient through it. Peak activation memory drops from every
 * layer's intermediates to the layer inputs plus one layer's intermediates, for about one extra forward.
 */
import * as tf from '@tensorflow/tfjs-core';

type Saver = (tensors: tf.Tensor[]) => void;
type GradResult = { value: tf.Tensor; gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => tf.Tensor[] };

/**
 * `block(x)` whose activations are recomputed in the backward pass. Gradients flow to `x` and to every
 * tensor of `params` (the trainable variables `block` reads; others get none).
 * The block must compute the same function when run again (seed any randomness it draws).
 * @param x the block's input, e.g. `[N, D]`
 * @param params the trainable tensors the block reads (by closure)
 * @returns block(x), same shape as block's output
 */
export function recomputeInBackward<T extends tf.Tensor>(x: T, params: tf.Variable[], block: (x: T) => T): T {
  // tf.customGrad's declared type fixes the arity; the op here takes x plus a variable number of parameters
  const f = tf.customGrad(((...args: [...tf.Tensor[], Saver]) => {
    const save = args[args.length - 1] as Saver;
    const xi = args[0] as T;
    save([xi]);
    const value = tf.tidy(() => block(xi));
    return {
      value,
      gradFunc: (dy: tf.Tensor, [xs]: tf.Tensor[]): tf.Tensor[] => {
        // The recomputation is a gradient computation of its own, run while the outer one backpropagates.
        // tfjs keeps one tape per engine and, when a gradient computation at depth 0 ends, frees it and sets
        // it to null: give the inner one a fresh tape and put the outer tape back afterwards.
        const state = tf.engine().state;
        const outer = state.activeTape;
        try {
          return tf.tidy(() => tf.grads((xr: tf.Tensor, ..._ps: tf.Tensor[]) => block(xr as T))([xs!, ...params], dy));
        } finally {
          state.activeTape = outer;
        }
      },
    } satisfies GradResult;
  }) as unknown as Parameters<typeof tf.customGrad>[0]);
  // and its returned function's declared type takes fixed tensors: call it with x and the parameters
  return (f as unknown as (...t: tf.Tensor[]) => T)(x, ...params);
}
