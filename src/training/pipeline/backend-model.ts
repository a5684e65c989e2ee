/**
 * Pipeline phase 1: the tfjs backend, the policy model and its tokenizer (`model.name_or_path`, or
 * `model.tokenizer_name_or_path` for the tokenizer when set).
 */
import type { Logger } from 'pino';
import type { TrainConfig } from '../../config/index.js';
import { initBackend, type BackendInfo } from '../engine/backend.js';
import { loadModelTokenizer, loadPretrained, type GenerativeLM } from '../models/index.js';
import { loadTokenizer } from '../tokenizers/index.js';
import type { Tokenizer } from '../types.js';

export interface LoadedModel {
  backend: BackendInfo;
  /** The policy (trainable); the caller owns it and must dispose it. */
  policy: GenerativeLM;
  tokenizer: Tokenizer;
  /** The resolved weights path. */
  source: string;
  /** Seconds spent loading model + tokenizer (backend start-up excluded). */
  loadSeconds: number;
}

/** Parameter count of a model (elements of every variable, trainable or not). */
export function parameterCount(model: GenerativeLM): number {
  let n = 0;
  for (const v of model.params.values()) n += v.size;
  return n;
}

/**
 * The tokenizer training uses: `model.tokenizer_name_or_path` when set, else the model's own (no weights loaded).
 * @throws ModelNotFoundError, TokenizerError
 */
export async function loadTrainingTokenizer(cfg: Pick<TrainConfig, 'model'>): Promise<Tokenizer> {
  return cfg.model.tokenizer_name_or_path ? loadTokenizer(cfg.model.tokenizer_name_or_path) : loadModelTokenizer(cfg.model.name_or_path);
}

/**
 * Start the backend (`backend`, default auto) and load the policy and tokenizer.
 * @throws BackendUnavailableError when the requested backend cannot start; model / tokenizer errors from loadPretrained
 *   and loadTokenizer (the model is disposed when the tokenizer fails)
 */
export async function loadBackendAndModel(
  cfg: Pick<TrainConfig, 'backend' | 'model'> & Partial<Pick<TrainConfig, 'gradient_checkpointing'>>,
  logger: Logger,
): Promise<LoadedModel> {
  const backend = await initBackend(cfg.backend ?? undefined);
  logger.info({ backend: backend.name, package: backend.package, gpu: backend.gpu }, `tfjs backend: ${backend.name}`);
  const t0 = Date.now();
  const { model, tokenizer: own, source } = await loadPretrained(cfg.model.name_or_path);
  let tokenizer = own;
  try {
    if (cfg.model.tokenizer_name_or_path) tokenizer = await loadTokenizer(cfg.model.tokenizer_name_or_path);
  } catch (e) {
    model.dispose();
    throw e;
  }
  model.gradientCheckpointing = cfg.gradient_checkpointing === true;
  logger.info({ model: cfg.model.name_or_path, source, params: parameterCount(model) }, 'model loaded');
  return { backend, policy: model, tokenizer, source, loadSeconds: (Date.now() - t0) / 1000 };
}
