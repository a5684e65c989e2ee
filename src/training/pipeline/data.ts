/**
 * Pipeline phase 2: the training data — load `datasets` (or the caller's examples / source), split off the
 * eval set (`eval_dataset`, else `eval_split_fraction` with `seed`), cap it at `n_eval_examples`, tokenize
 * both splits (`max_length`, `max_prompt_length`, `truncation_mode`, as TRL) and count what was dropped
 * and truncated.
 */
import type { Logger } from 'pino';
import { ConfigError, type TrainConfig } from '../../config/index.js';
import { datasetSha256 } from '../data/hash.js';
import { loadPreferenceExamples, resolvePadId, splitEval, tokenizeDataset, type LoadOptions, type TokenizedPair } from '../data/index.js';
import type { PreferenceExample, Tokenizer } from '../types.js';

/** The config keys this phase reads. */
export type DataConfig = Pick<
  TrainConfig,
  | 'datasets'
  | 'eval_dataset'
  | 'dataset_format'
  | 'chosen_key'
  | 'rejected_key'
  | 'eval_split_fraction'
  | 'n_eval_examples'
  | 'seed'
  | 'max_length'
  | 'max_prompt_length'
  | 'truncation_mode'
>;

/** Counts of the data phase (written to run.json `data`). */
export interface DataStats {
  /** sha256 of the loaded examples (canonical JSON, as the API's dataset hash), before the split. */
  sha256: string;
  examples: number;
  train_pairs: number;
  eval_pairs: number;
  /** Pairs dropped by tokenisation (the prompt alone fills max_length), both splits. */
  dropped: number;
  /** Pairs truncated to max_length, both splits. */
  truncated: number;
}

export interface PreparedData {
  train: TokenizedPair[];
  eval: TokenizedPair[];
  /** Pad token id for collation. */
  padId: number;
  stats: DataStats;
}

/**
 * Load, split and tokenize.
 * @param dataset examples or a path / registered name used instead of `cfg.datasets`
 * @throws DataError for unreadable data; ConfigError (`max_length`) when no training pair survives tokenisation
 */
export async function prepareData(cfg: DataConfig, tokenizer: Tokenizer, logger: Logger, dataset?: PreferenceExample[] | string): Promise<PreparedData> {
  const loadOpts: LoadOptions = {
    format: cfg.dataset_format ?? undefined,
    chosenKey: cfg.chosen_key ?? undefined,
    rejectedKey: cfg.rejected_key ?? undefined,
    tokenizer,
  };
  let examples: PreferenceExample[] = [];
  if (dataset !== undefined) examples = typeof dataset === 'string' ? await loadPreferenceExamples(dataset, loadOpts) : dataset;
  else for (const d of cfg.datasets) examples.push(...(await loadPreferenceExamples(d, loadOpts)));
  const sha256 = datasetSha256(examples);
  let split: { train: PreferenceExample[]; eval: PreferenceExample[] };
  if (cfg.eval_dataset) split = { train: examples, eval: await loadPreferenceExamples(cfg.eval_dataset, loadOpts) };
  else split = splitEval(examples, cfg.eval_split_fraction, cfg.seed);
  const evalEx = cfg.n_eval_examples !== null ? split.eval.slice(0, cfg.n_eval_examples) : split.eval;
  const tokOpts = { maxLength: cfg.max_length, maxPromptLength: cfg.max_prompt_length, truncationMode: cfg.truncation_mode };
  const trainTok = tokenizeDataset(split.train, tokenizer, tokOpts);
  const evalTok = tokenizeDataset(evalEx, tokenizer, tokOpts);
  if (trainTok.pairs.length === 0) {
    throw new ConfigError(
      'max_length',
      `no training pair fits max_length=${cfg.max_length} (all ${split.train.length} dropped); raise max_length or lower max_prompt_length`,
    );
  }
  const stats: DataStats = {
    sha256,
    examples: examples.length,
    train_pairs: trainTok.pairs.length,
    eval_pairs: evalTok.pairs.length,
    dropped: trainTok.stats.dropped + evalTok.stats.dropped,
    truncated: trainTok.stats.truncated + evalTok.stats.truncated,
  };
  logger.info({ examples: stats.examples, train: stats.train_pairs, eval: stats.eval_pairs, dropped: stats.dropped, truncated: stats.truncated }, 'data ready');
  return { train: trainTok.pairs, eval: evalTok.pairs, padId: resolvePadId(tokenizer), stats };
}
