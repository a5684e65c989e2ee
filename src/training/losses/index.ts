/**
 * The SFT loss and the preference-loss family (TRL / PaddleNLP / reference-implementation names), sequence
 * log-probs of completions, TRL's logged metrics, and reference-model sync.
 */
export {
  LOSS_TYPES,
  LOSS_ALIASES,
  LOSS_DEFAULTS,
  REFERENCE_FREE_LOSS_TYPES,
  REFERENCE_REQUIRED_LOSS_TYPES,
  canonicalLossType,
  normalizeLossOptions,
  resolveLossOptions,
  resolveLossGroup,
  lossOptionsOf,
  LossGroupSchema,
  ResolvedLossSchema,
  needsReference,
  type LossType,
  type LossOptions,
  type ResolvedLossOptions,
  type LossGroup,
  type ResolvedLoss,
  type FDivergenceType,
} from './options.js';
export { preferenceLoss, meanLoss, orpoLogOdds, type PreferenceLossInputs, type PreferenceLossOutputs } from './preference.js';
export {
  completionLogps,
  packedCompletionLogps,
  packedCompletionStats,
  logpsFromLogits,
  completionStats,
  statsFromLogits,
  sftLoss,
  nllTotals,
  tokenMeanNll,
  type CompletionLogps,
  type CompletionStats,
} from './logps.js';
export { preferenceMetrics, splitStats, averageMetrics, withEvalPrefix, type PreferenceMetricsInputs } from './metrics.js';
export { softSyncReference, hardSyncReference, referenceSyncDue, ReferenceSyncError } from './reference.js';
