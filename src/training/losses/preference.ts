/**
 * The preference-loss family as a pure function of per-sequence summed log-probs.
 *
 * Notation (as TRL's and the DPO paper's): logπc, logπr policy log-probs of the chosen / rejected completion (sums over
 * completion tokens), logRc, logRr the reference's; cl = logπc − logRc, rl = logπr − logRr, Δ = cl − rl.
 * logσ = log-sigmoid. Per-pair losses are returned; the batch loss is their mean.
 *
 * Sources: TRL `trl/trainer/dpo_trainer.py:_compute_loss` (HEAD f2cd577), TRL legacy `dpo_loss` (v0.27),
 * TRL `trl/experimental/cpo/cpo_trainer.py:cpo_loss`, `trl/experimental/orpo/orpo_trainer.py:odds_ratio_loss`,
 * PaddleNLP `paddlenlp/trl/dpo_criterion.py:dpo_loss`, eric-mitchell/direct-preference-optimization
 * `trainers.py:preference_loss`.
 */
import * as tf from '@tensorflow/tfjs-core';
import { ConfigError } from '../../config/errors.js';
import { type LossOptions, type LossType, type ResolvedLossOptions, REFERENCE_FREE_LOSS_TYPES, normalizeLossOptions } from './options.js';
import { ensureGradients } from '../engine/gradients.js';
import { tokenMeanNll } from './logps.js';

// tfjs-core alone registers no gradient functions under Node: make sure they are there (see engine/gradients.ts).
await ensureGradients();

/** Inputs of {@link preferenceLoss}: `[B]` float32 each (B = number of pairs). */
export interface PreferenceLossInputs {
  /** Σ over chosen completion tokens of log π(y_t | x, y_<t), nats. */
  policyChosenLogps: tf.Tensor1D;
  policyRejectedLogps: tf.Tensor1D;
  /** Reference log-probs; may be omitted for reference-free losses / `referenceFree`. */
  referenceChosenLogps?: tf.Tensor1D;
  referenceRejectedLogps?: tf.Tensor1D;
  /** Completion token counts (for ipo, sigmoid_norm, simpo, orpo, cpo, sft and `sftLossRatio`). */
  chosenTokens?: tf.Tensor1D;
  rejectedTokens?: tf.Tensor1D;
}

/** Per-pair outputs, `[B]` each. The rewards are for logging (TRL detaches them); do not differentiate them. */
export interface PreferenceLossOutputs {
  /** Per-pair total loss (Σ_k w_k · loss_k + sft term); the training loss is `mean(losses)`. */
  losses: tf.Tensor1D;
  /** β·(logπc − logRc) (β·logπc for reference-free losses; β·avg logπc for simpo/orpo). */
  chosenRewards: tf.Tensor1D;
  rejectedRewards: tf.Tensor1D;
}

type T = tf.Tensor1D;

/**
 * log σ(x) = −softplus(−x). tfjs's own `tf.logSigmoid` is a customGrad that closes over its input, which breaks
 * when that input is an intermediate disposed by `tf.tidy` before the backward pass; the registered `Softplus`
 * kernel gradient saves what it needs.
 */
const logSig = (x: tf.Tensor): T => tf.neg(tf.softplus(tf.neg(x))) as T;

/** Sort a `[B]` vector ascending with a permutation matrix so that gradients flow (gather's grad is missing on wasm). */
function sortAscending(x: T): T {
  const v = Array.from(x.dataSync());
  const order = v.map((_, i) => i).sort((a, b) => v[a]! - v[b]! || a - b);
  const n = v.length;
  const p = new Float32Array(n * n);
  order.forEach((src, dst) => {
    p[dst * n + src] = 1;
  });
  return tf.reshape(tf.matMul(tf.tensor2d(p, [n, n]), tf.reshape(x, [n, 1])), [n]) as T;
}

/** log(1 − exp(x)) for x < 0, stable on both sides of −ln 2 (Mächler 2012). */
function log1mexp(x: T): T {
  // the branch mask is a constant (a comparison has no gradient in tfjs)
  const useExpm1 = tf.tensor(
    Array.from(x.dataSync(), (v) => (v > -Math.LN2 ? 1 : 0)),
    x.shape,
    'bool',
  );
  const a = tf.log(tf.neg(tf.expm1(tf.minimum(x, -1e-30))));
  const b = tf.log1p(tf.neg(tf.exp(tf.minimum(x, -Math.LN2))));
  return tf.where(useExpm1, a, b) as T;
}

/**
 * The ORPO log odds ratio: log(odds(y_c)) − log(odds(y_r)) with odds(y) = p/(1−p), p = exp(mean token logp).
 * ORPO (Hong et al. 2024, arXiv:2403.07691) Eqs. 4 and 7; TRL `orpo_trainer.py:odds_ratio_loss`.
 * Average log-probs are clamped to ≤ −1e-6 so that an empty completion (avg 0) gives no −∞.
 * @param avgChosen `[B]` per-token average log-probs of the chosen completions; `avgRejected` likewise.
 */
export function orpoLogOdds(avgChosen: T, avgRejected: T): T {
  return tf.tidy(() => {
    const c = tf.minimum(avgChosen, -1e-6) as T;
    const r = tf.minimum(avgRejected, -1e-6) as T;
    return tf.sub(tf.sub(c, r), tf.sub(log1mexp(c), log1mexp(r))) as T;
  });
}

/** The cDPO / CPO form: −logσ(βz)(1−ε) − logσ(−βz)ε (Mitchell 2023 "A note on DPO with noisy preferences"). */
function conservativeSigmoid(z: tf.Tensor, beta: number, eps: number): T {
  const bz = tf.mul(beta, z);
  const clean = tf.neg(logSig(bz));
  if (eps === 0) return clean as T;
  return tf.sub(tf.mul(clean, 1 - eps), tf.mul(logSig(tf.neg(bz)), eps)) as T;
}

/**
 * Per-pair preference losses and implicit rewards.
 *
 * Formulas (β = `beta`, ε = `labelSmoothing`; δ = s_c − s_r where s = f-divergence score of cl, rl; reverse KL:
 * s = log-ratio, δ = Δ):
 * - `sigmoid` (`dpo`): −logσ(βδ)(1−ε) − logσ(−βδ)ε. DPO (Rafailov et al. 2023, arXiv:2305.18290) Eq. 7; with
 *   ε > 0 conservative DPO as in the reference `trainers.py:preference_loss` (TRL HEAD ignores ε here).
 * - `hinge`: relu(1 − βδ). SLiC (Zhao et al. 2023, arXiv:2305.10425) Eq. 10; TRL.
 * - `ipo`: (s_c/n_c − s_r/n_r − 1/(2β))², n = completion tokens clamped ≥ 1 (TRL, length-normalised);
 *   `ipoNormalize: false`: (δ − 1/(2β))² on summed log-probs (reference implementation). IPO (Azar et al. 2023,
 *   arXiv:2310.12036) Eq. 17.
 * - `exo_pair`: σ(βδ)(logσ(βδ) − log(1−ε)) + σ(−βδ)(logσ(−βδ) − log ε). EXO (Ji et al. 2024, arXiv:2402.00856)
 *   Eq. 16; ε = 0 is replaced by 1e-3 as TRL legacy does (log 0 would be −∞).
 * - `nca_pair`: −logσ(βs_c) − ½logσ(−βs_c) − ½logσ(−βs_r). NCA (Chen et al. 2024, arXiv:2402.05369); TRL.
 * - `robust`: [−(1−ε)logσ(βδ) + εlogσ(−βδ)]/(1−2ε). rDPO (Chowdhury et al. 2024, arXiv:2403.00409) Eq. 9; TRL.
 * - `bco_pair`: −logσ(βs_c) − logσ(−βs_r). BCO (Jung et al. 2024, arXiv:2404.04656); TRL HEAD (no running mean).
 * - `sppo_hard`: (s_c − 1/(2β))² + (s_r + 1/(2β))². SPPO (Wu et al. 2024, arXiv:2405.00675) Eq. 4.7, hard P; TRL.
 * - `aot`: d = sort(logπc − logπr) − sort(logRc − logRr) over the batch; −logσ(βd)(1−ε) − logσ(−βd)ε.
 *   `aot_unpaired`: d = sort(cl) − sort(rl). AOT (Melnyk et al. 2024, arXiv:2406.05882); TRL. The per-element
 *   losses are in sorted order (only their mean is meaningful).
 * - `apo_zero`: (1 − σ(β·cl)) + σ(β·rl); `apo_down`: σ(β·cl) + (1 − σ(βδ)). APO (D'Oosterlinck et al. 2024,
 *   arXiv:2408.06266) Eqs. 7 and 8; TRL.
 * - `discopop`: z = βδ, m = σ(z/τ): −logσ(z)(1−m) + exp(−z)m. DiscoPOP (Chan Lu et al. 2024, arXiv:2406.08414) Eq. 5.
 * - `sigmoid_norm`: −logσ(β(s_c/n_c − s_r/n_r)). TRL HEAD.
 * - `sft`: token-mean NLL of the chosen completions, −Σ logπc / Σ n_c, broadcast per pair (TRL `sft`).
 * - `simpo`: z = avg logπc − avg logπr − γ/β, cDPO form on z. SimPO (Meng et al. 2024, arXiv:2405.14734) Eq. 6;
 *   TRL `cpo_trainer.py` with `cpo_alpha = 0`.
 * - `orpo`: −β·logσ(log odds ratio) + NLL (token mean over chosen). ORPO Eq. 6/7; TRL `orpo_trainer.py`
 *   (`loss = nll − mean(β·logσ(log_odds))`), β = λ. Uses average log-probs.
 * - `cpo`: cDPO form on z = logπc − logπr (summed) + `cpoAlpha`·NLL. CPO (Xu et al. 2024, arXiv:2401.08417) Eq. 3;
 *   TRL `cpo_trainer.py` (`loss_type = sigmoid`).
 * - `kto_pair`: KLc = max(0, mean cl), KLr = max(0, mean rl) over the batch; per pair
 *   ½[(1 − σ(β(cl − KLr))) + (1 − σ(β(KLc − rl)))] (mean equals PaddleNLP's mean over the concatenation).
 *   HALOs/KTO (Ethayarajh et al. 2024, arXiv:2402.01306) Eq. 7; PaddleNLP `dpo_criterion.py`.
 * - `dpop`: −logσ(β(Δ − λ·max(0, logRc − logπc))). DPO-Positive (Pal et al. 2024, arXiv:2402.13228) Eq. 3;
 *   PaddleNLP `dpo_criterion.py` @214cbf33.
 *
 * Combination: losses = `prefLossRatio` · Σ_k w_k · loss_k + `sftLossRatio` · NLL (TRL MPO `loss_weights`;
 * PaddleNLP `pref_loss_ratio` / `sft_loss_ratio`). `referenceFree`: reference log-probs are taken as 0 in the
 * losses (reference implementation); the rewards still use the reference when it is given, as the reference does.
 *
 * Rewards: β·cl and β·rl (TRL logs these for every loss type, even `sft` or an f-divergence); when the list
 * holds only policy-only losses (simpo, orpo, cpo, optionally with sft) or no reference is given: β·logπ
 * (average log-probs when the list contains simpo or orpo, as TRL's CPO/ORPO trainers report them).
 *
 * @param inputs `[B]` tensors; `chosenTokens`/`rejectedTokens` are needed by ipo (normalised), sigmoid_norm,
 *   simpo, orpo, cpo, sft and a positive `sftLossRatio`.
 * @param options loss options (camelCase TRL names); aliases accepted; validated like the config.
 * @returns per-pair `{losses, chosenRewards, rejectedRewards}`, `[B]` each.
 * @throws ConfigError (INVALID_LOSS_CONFIG) for invalid options, or when an input the loss needs is missing.
 */
export function preferenceLoss(inputs: PreferenceLossInputs, options: LossOptions | ResolvedLossOptions): PreferenceLossOutputs {
  const o: ResolvedLossOptions = 'lossTypes' in options ? options : normalizeLossOptions(options);
  const { beta } = o;
  const eps = o.labelSmoothing;
  const types = o.lossTypes;
  const allRefFree = types.every((t) => REFERENCE_FREE_LOSS_TYPES.includes(t));
  const needRef = !allRefFree && !o.referenceFree;
  if (needRef && (!inputs.referenceChosenLogps || !inputs.referenceRejectedLogps)) {
    throw new ConfigError(
      'loss.loss_type',
      `loss type ${types.join(', ')} needs referenceChosenLogps and referenceRejectedLogps (a reference model or precomputed reference log-probs), or reference_free=true`,
      'INVALID_LOSS_CONFIG',
    );
  }
  const needTokens =
    o.sftLossRatio > 0 ||
    types.some((t) => t === 'sigmoid_norm' || t === 'simpo' || t === 'orpo' || t === 'cpo' || t === 'sft' || (t === 'ipo' && o.ipoNormalize));
  if (needTokens && (!inputs.chosenTokens || !inputs.rejectedTokens)) {
    throw new ConfigError(
      'loss.loss_type',
      `loss type ${types.join(', ')} needs chosenTokens and rejectedTokens (completion token counts)`,
      'INVALID_LOSS_CONFIG',
    );
  }

  return tf.tidy(() => {
    const pc = inputs.policyChosenLogps;
    const pr = inputs.policyRejectedLogps;
    const B = pc.shape[0];
    const zeros = tf.zeros([B]) as T;
    const hasRef = !!(inputs.referenceChosenLogps && inputs.referenceRejectedLogps);
    const rcIn = (inputs.referenceChosenLogps ?? zeros) as T;
    const rrIn = (inputs.referenceRejectedLogps ?? zeros) as T;
    // reference used inside the losses (0 when reference_free)
    const rc = o.referenceFree ? zeros : rcIn;
    const rr = o.referenceFree ? zeros : rrIn;
    const cl = tf.sub(pc, rc) as T;
    const rl = tf.sub(pr, rr) as T;

    // f-divergence scores (TRL HEAD)
    let sc: T = cl;
    let sr: T = rl;
    if (o.fDivergenceType === 'forward_kl') {
      sc = tf.neg(tf.exp(tf.neg(cl))) as T;
      sr = tf.neg(tf.exp(tf.neg(rl))) as T;
    } else if (o.fDivergenceType === 'js_divergence') {
      sc = logSig(cl);
      sr = logSig(rl);
    } else if (o.fDivergenceType === 'alpha_divergence' && Math.abs(o.fAlphaDivergenceCoef - 1) >= 1e-6) {
      const a1 = o.fAlphaDivergenceCoef - 1;
      sc = tf.mul(tf.exp(tf.minimum(tf.mul(a1, cl), 80)), 1 / a1) as T;
      sr = tf.mul(tf.exp(tf.minimum(tf.mul(a1, rl), 80)), 1 / a1) as T;
    }
    const delta = tf.sub(sc, sr) as T;

    const nc = inputs.chosenTokens ? (tf.maximum(inputs.chosenTokens, 1) as T) : null;
    const nr = inputs.rejectedTokens ? (tf.maximum(inputs.rejectedTokens, 1) as T) : null;
    const avg = (x: T, n: T | null): T => tf.div(x, n!) as T;
    // token-mean NLL of the chosen completions over the batch (TRL `sft`, PaddleNLP sft_loss)
    const nll = (): T => tf.mul(tf.ones([B]), tokenMeanNll(pc, inputs.chosenTokens!)) as T;

    const perType = (t: LossType): T => {
      switch (t) {
        case 'sigmoid':
          return conservativeSigmoid(delta, beta, eps);
        case 'hinge':
          return tf.relu(tf.sub(1, tf.mul(beta, delta))) as T;
        case 'ipo': {
          const d = o.ipoNormalize ? tf.sub(avg(sc, nc), avg(sr, nr)) : delta;
          return tf.square(tf.sub(d, 1 / (2 * beta))) as T;
        }
        case 'exo_pair': {
          const e = eps === 0 ? 1e-3 : eps;
          const bz = tf.mul(beta, delta);
          const qw = tf.sigmoid(bz);
          const ql = tf.sigmoid(tf.neg(bz));
          return tf.add(tf.mul(qw, tf.sub(logSig(bz), Math.log1p(-e))), tf.mul(ql, tf.sub(logSig(tf.neg(bz)), Math.log(e)))) as T;
        }
        case 'nca_pair': {
          const c = tf.mul(beta, sc);
          const r = tf.mul(beta, sr);
          return tf.sub(tf.sub(tf.neg(logSig(c)), tf.mul(0.5, logSig(tf.neg(c)))), tf.mul(0.5, logSig(tf.neg(r)))) as T;
        }
        case 'robust': {
          const bz = tf.mul(beta, delta);
          const clean = tf.mul(-(1 - eps), logSig(bz));
          const flipped = tf.mul(-eps, logSig(tf.neg(bz)));
          return tf.div(tf.sub(clean, flipped), 1 - 2 * eps) as T;
        }
        case 'bco_pair':
          return tf.sub(tf.neg(logSig(tf.mul(beta, sc))), logSig(tf.neg(tf.mul(beta, sr)))) as T;
        case 'sppo_hard':
          return tf.add(tf.square(tf.sub(sc, 0.5 / beta)), tf.square(tf.add(sr, 0.5 / beta))) as T;
        case 'aot': {
          const d = tf.sub(sortAscending(tf.sub(pc, pr) as T), sortAscending(tf.sub(rc, rr) as T));
          return conservativeSigmoid(d, beta, eps);
        }
        case 'aot_unpaired': {
          const d = tf.sub(sortAscending(cl), sortAscending(rl));
          return conservativeSigmoid(d, beta, eps);
        }
        case 'apo_zero':
          return tf.add(tf.sub(1, tf.sigmoid(tf.mul(beta, cl))), tf.sigmoid(tf.mul(beta, rl))) as T;
        case 'apo_down':
          return tf.add(tf.sigmoid(tf.mul(beta, cl)), tf.sub(1, tf.sigmoid(tf.mul(beta, delta)))) as T;
        case 'discopop': {
          const z = tf.mul(beta, delta);
          const m = tf.sigmoid(tf.div(z, o.discopopTau));
          return tf.add(tf.mul(tf.neg(logSig(z)), tf.sub(1, m)), tf.mul(tf.exp(tf.neg(z)), m)) as T;
        }
        case 'sigmoid_norm':
          return tf.neg(logSig(tf.mul(beta, tf.sub(avg(sc, nc), avg(sr, nr))))) as T;
        case 'sft':
          return nll();
        case 'simpo': {
          const z = tf.sub(tf.sub(avg(pc, nc), avg(pr, nr)), o.simpoGamma / beta);
          return conservativeSigmoid(z, beta, eps);
        }
        case 'orpo': {
          const lo = orpoLogOdds(avg(pc, nc), avg(pr, nr));
          return tf.add(tf.mul(-beta, logSig(lo)), nll()) as T;
        }
        case 'cpo': {
          const z = tf.sub(pc, pr);
          const l = conservativeSigmoid(z, beta, eps);
          return o.cpoAlpha === 0 ? l : (tf.add(l, tf.mul(o.cpoAlpha, nll())) as T);
        }
        case 'kto_pair': {
          const klc = tf.maximum(tf.mean(cl), 0);
          const klr = tf.maximum(tf.mean(rl), 0);
          const a = tf.sub(1, tf.sigmoid(tf.mul(beta, tf.sub(cl, klr))));
          const b = tf.sub(1, tf.sigmoid(tf.mul(beta, tf.sub(klc, rl))));
          return tf.mul(0.5, tf.add(a, b)) as T;
        }
        case 'dpop': {
          const penalty = tf.relu(tf.sub(rc, pc));
          return tf.neg(logSig(tf.mul(beta, tf.sub(delta, tf.mul(o.dpopLambda, penalty))))) as T;
        }
        default: {
          const never: never = t;
          throw new ConfigError('loss.loss_type', `unknown loss type ${String(never)}`, 'INVALID_LOSS_CONFIG');
        }
      }
    };

    let total: T = zeros;
    types.forEach((t, i) => {
      const w = o.lossWeights[i]!;
      if (w !== 0) total = tf.add(total, tf.mul(w, perType(t))) as T;
    });
    if (o.prefLossRatio !== 1) total = tf.mul(o.prefLossRatio, total) as T;
    if (o.sftLossRatio > 0) total = tf.add(total, tf.mul(o.sftLossRatio, nll())) as T;

    let chosenRewards: T;
    let rejectedRewards: T;
    const policyOnly = types.every((t) => REFERENCE_FREE_LOSS_TYPES.includes(t)) && types.some((t) => t !== 'sft');
    if (!policyOnly && hasRef) {
      chosenRewards = tf.mul(beta, tf.sub(pc, rcIn)) as T;
      rejectedRewards = tf.mul(beta, tf.sub(pr, rrIn)) as T;
    } else if (types.some((t) => t === 'simpo' || t === 'orpo') && nc && nr) {
      chosenRewards = tf.mul(beta, avg(pc, nc)) as T;
      rejectedRewards = tf.mul(beta, avg(pr, nr)) as T;
    } else {
      chosenRewards = tf.mul(beta, pc) as T;
      rejectedRewards = tf.mul(beta, pr) as T;
    }
    return { losses: total, chosenRewards, rejectedRewards };
  });
}

/** Mean of the per-pair losses: the scalar to differentiate. */
export function meanLoss(out: PreferenceLossOutputs): tf.Scalar {
  return tf.mean(out.losses) as tf.Scalar;
}
