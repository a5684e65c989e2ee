/**
 * Programmatic API of the DPO service (docs/architecture.md "Programmatic API"): the training job, the
 * loss family, models, tokenizers, data, configuration.
 */
export { runTraining, TrainingAbortedError, type RunTrainingOptions } from './training/run.js';
export { loadConfig, ConfigError, parseOverride, type TrainConfig, type LoadConfigOptions } from './config/index.js';
export {
  preferenceLoss,
  preferenceMetrics,
  completionLogps,
  sftLoss,
  resolveLossOptions,
  LOSS_TYPES,
  type LossOptions,
  type PreferenceLossInputs,
  type PreferenceLossOutputs,
} from './training/losses/index.js';
export {
  loadModel,
  loadPretrained,
  createModel,
  cloneModel,
  saveModelHF,
  generate,
  scoreCompletions,
  applyLora,
  mergeLora,
} from './training/models/index.js';
export { loadTokenizer, saveTokenizerFiles } from './training/tokenizers/index.js';
export {
  loadPreferenceExamples,
  validateRows,
  tokenizePreference,
  collatePreference,
  collateSft,
  shuffleExamples,
  splitEval,
} from './training/data/index.js';
export { initBackend } from './training/engine/backend.js';
export { Optimizer, type OptimizerSettings } from './training/trainer/optimizer.js';
export { learningRateAt } from './training/trainer/schedule.js';
export type { CausalLM, Tokenizer, PreferenceExample, ProgressEvent, ModelConfig, StageMetrics, TrainResult } from './training/types.js';
