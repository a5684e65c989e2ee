/**
 * Preference data: read every format of docs/data.md "Formats", validate, tokenise as TRL, collate.
 * Entry points (docs/architecture.md "Data"): loadPreferenceExamples, validateRows, tokenizePreference,
 * collatePreference, collateSft, shuffleExamples, splitEval.
 */
export { DataError, type DataErrorCode, type DataProblem } from './errors.js';
export {
  DATA_FORMATS,
  FORMAT_ALIASES,
  type DataFormat,
  type FormatOptions,
  convertRecord,
  detectFormat,
  extractHhPrompt,
  HH_ASSISTANT,
  renderConversation,
  resolveFormatName,
  splitImplicitPrompt,
} from './formats.js';
export { readRecords, type RawRecord, type Container } from './readers.js';
export { listDatasets, resolveDataset, type DatasetEntry } from './registry.js';
export { validateRows } from './validate-rows.js';
export { pairErrors, type PairError } from './checks.js';
export {
  tokenizePreference,
  tokenizeDataset,
  newTokenizeStats,
  type TokenizedPair,
  type TokenizeOptions,
  type TokenizeStats,
  type TruncationMode,
} from './tokenize.js';
export { collatePreference, collateSft, resolvePadId, type TokenBatch, type CollateOptions } from './collate.js';
export {
  batchLayout,
  packPreference,
  packSequences,
  packSharedPrompt,
  packSft,
  paddedPreferenceTokens,
  type BatchLayout,
  type PackedBatch,
} from './packing.js';
export { shuffleExamples, splitEval, dedupExamples, exampleKey } from './split.js';
export { inspectDataset, type DatasetReport, type InspectOptions, type LengthStats } from './inspect.js';

export {
  iteratePreferenceExamples,
  loadPreferenceExamples,
  resolveSource,
  type ExampleBatch,
  type LoadOptions,
  type ResolvedSource,
} from './load.js';
