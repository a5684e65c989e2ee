/**
 * Optimizers written on tf.Variables, with serialisable state (for exact resume): AdamW (decoupled weight
 * decay), Adam (L2 weight decay), RMSprop (the DPO reference implementation's default), SGD (optional momentum).
 * Update rules and defaults are PyTorch's (`torch.optim.AdamW`, `Adam`, `RMSprop`, `SGD` documentation
 * pseudo-code); AdamW: Loshchilov & Hutter 2019, Algorithm 2; Adam: Kingma & Ba 2015, Algorithm 1.
 */
import * as tf from '@tensorflow/tfjs-core';
import type { OptimizerName } from '../../config/index.js';
import { adamwUpdate } from '../engine/optim.js';

export interface OptimizerSettings {
  name: OptimizerName;
  weightDecay: number;
  beta1: number;
  beta2: number;
  epsilon: number;
  /** RMSprop smoothing constant α (torch default 0.99). */
  rmspropAlpha: number;
  /** SGD / RMSprop momentum (0: none). */
  momentum: number;
}

/** A host copy of one state slot. */
export interface SlotData {
  shape: number[];
  data: Float32Array;
}

/** Serialisable optimizer state: the step count and every slot (`<param>/<slot>`). */
export interface OptimizerState {
  name: OptimizerName;
  step: number;
  slots: Map<string, SlotData>;
}

let slotCounter = 0;
const nextSlotName = (): string => `optimizer_slot_${slotCounter++}`;

export class OptimizerStateError extends Error {
  readonly code = 'OPTIMIZER_STATE_MISMATCH';
  constructor(message: string) {
    super(message);
    this.name = 'OptimizerStateError';
  }
}

/**
 * One optimizer over a fixed, named set of trainable variables.
 * `apply(grads, lr)` performs one update with the (already accumulated and clipped) gradients.
 */
export class Optimizer {
  readonly settings: OptimizerSettings;
  readonly params: Map<string, tf.Variable>;
  private slots = new Map<string, tf.Variable>();
  /** Number of updates applied so far (Adam's t). */
  step = 0;
  /** Per-parameter learning-rate multipliers (LoRA+: the B matrices' lr times lora_plus_scale); absent: 1. */
  readonly lrScale = new Map<string, number>();

  constructor(params: Map<string, tf.Variable>, settings: OptimizerSettings) {
    this.params = params;
    this.settings = settings;
  }

  private slot(name: string, kind: string, like: tf.Tensor): tf.Variable {
    const key = `${name}/${kind}`;
    let v = this.slots.get(key);
    if (!v) {
      v = tf.variable(tf.zerosLike(like), false, nextSlotName());
      this.slots.set(key, v);
    }
    return v;
  }

  /**
   * Apply one update.
   * @param grads gradient per parameter name (same shapes as the parameters); parameters without a
   *   gradient are left unchanged. Not disposed here.
   * @param baseLr learning rate of this step (times {@link lrScale} of each parameter)
   */
  apply(grads: Map<string, tf.Tensor>, baseLr: number): void {
    this.step += 1;
    const t = this.step;
    const { name, weightDecay: wd, beta1: b1, beta2: b2, epsilon: eps, rmspropAlpha: alpha, momentum: mu } = this.settings;
    for (const [pname, p] of this.params) {
      const g0 = grads.get(pname);
      if (!g0) continue;
      const lr = baseLr * (this.lrScale.get(pname) ?? 1);
      if (name === 'adamw' || name === 'adam') {
        const m = this.slot(pname, 'exp_avg', p);
        const v = this.slot(pname, 'exp_avg_sq', p);
        // torch: p -= (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps), AdamW's decay p *= 1 - lr wd first; Adam's
        // L2 decay goes into the gradient. One fused kernel per parameter where the engine has it.
        tf.tidy(() => {
          const g = name === 'adam' && wd > 0 ? tf.add(g0, tf.mul(p, wd)) : g0;
          adamwUpdate(p, g, m, v, { lr, beta1: b1, beta2: b2, eps, weightDecay: name === 'adamw' ? wd : 0, step: t });
        });
      } else if (name === 'rmsprop') {
        const sq = this.slot(pname, 'square_avg', p);
        const buf = mu > 0 ? this.slot(pname, 'momentum_buffer', p) : null;
        tf.tidy(() => {
          const g = wd > 0 ? tf.add(g0, tf.mul(p, wd)) : g0;
          const sqNew = tf.add(tf.mul(sq, alpha), tf.mul(tf.square(g), 1 - alpha));
          const upd = tf.div(g, tf.add(tf.sqrt(sqNew), eps));
          sq.assign(sqNew);
          if (buf) {
            const b = tf.add(tf.mul(buf, mu), upd);
            buf.assign(b);
            p.assign(tf.sub(p, tf.mul(b, lr)));
          } else p.assign(tf.sub(p, tf.mul(upd, lr)));
        });
      } else {
        const buf = mu > 0 ? this.slot(pname, 'momentum_buffer', p) : null;
        tf.tidy(() => {
          const g = wd > 0 ? tf.add(g0, tf.mul(p, wd)) : g0;
          if (buf) {
            // torch: the first step initialises the buffer with the gradient
            const b = t === 1 ? g : tf.add(tf.mul(buf, mu), g);
            buf.assign(b);
            p.assign(tf.sub(p, tf.mul(b, lr)));
          } else p.assign(tf.sub(p, tf.mul(g, lr)));
        });
      }
    }
  }

  /** Host copy of the state (exact float32). */
  getState(): OptimizerState {
    const slots = new Map<string, SlotData>();
    for (const [k, v] of [...this.slots].sort((a, b) => (a[0] < b[0] ? -1 : 1))) {
      slots.set(k, { shape: v.shape.slice(), data: (v.dataSync() as Float32Array).slice() });
    }
    return { name: this.settings.name, step: this.step, slots };
  }

  /**
   * Restore a state saved by {@link getState}.
   * @throws OptimizerStateError when the optimizer kind differs or a slot names an unknown parameter / shape
   */
  setState(s: OptimizerState): void {
    if (s.name !== this.settings.name) {
      throw new OptimizerStateError(`checkpoint optimizer is ${s.name}, the config says optimizer=${this.settings.name}; resume with the same optimizer`);
    }
    this.disposeSlots();
    for (const [key, d] of s.slots) {
      const pname = key.slice(0, key.lastIndexOf('/'));
      const p = this.params.get(pname);
      if (!p || p.shape.join('x') !== d.shape.join('x')) {
        throw new OptimizerStateError(`optimizer slot ${key} [${d.shape}] does not match a trainable parameter of the model`);
      }
      this.slots.set(key, tf.variable(tf.tensor(d.data, d.shape, 'float32'), false, nextSlotName()));
    }
    this.step = s.step;
  }

  private disposeSlots(): void {
    for (const v of this.slots.values()) v.dispose();
    this.slots.clear();
  }

  dispose(): void {
    this.disposeSlots();
  }
}
