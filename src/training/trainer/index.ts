/**
 * The training loop and its parts: optimizers with serialisable state, learning-rate schedules, gradient
 * accumulation and clipping, the seeded RNG, checkpoints, the SFT / DPO stage tasks and monitoring.
 */
export { Optimizer, OptimizerStateError, type OptimizerSettings, type OptimizerState } from './optimizer.js';
export { learningRateAt, type ScheduleSettings } from './schedule.js';
export { accumulateGrads, clipByGlobalNorm, globalNorm, disposeGrads } from './grads.js';
export { Rng, epochPermutation, type RngState } from './rng.js';
export {
  saveCheckpoint,
  readCheckpoint,
  resolveCheckpoint,
  listCheckpoints,
  pruneCheckpoints,
  assignVariables,
  checkpointsDir,
  CheckpointError,
  type CheckpointState,
} from './checkpoint.js';
export {
  runStage,
  stagePlan,
  stepBatches,
  TrainingAbortedError,
  TrainingDivergedError,
  StageConfigError,
  type StageTask,
  type StageOptions,
  type StageResult,
} from './stage.js';
export { dpoTask, sftTask, scorePairs, type ReferenceSource, type RefLogps } from './tasks.js';
export { MetricsFile, ProgressReporter, TIMING_KEYS } from './monitor.js';
