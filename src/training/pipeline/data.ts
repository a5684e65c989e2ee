/**
 * Pipeline phase 2: the training data — load `datasets` (or the caller's examples / source), drop the pairs
 * `dpo validate` calls errors (pairErrors: empty chosen/rejected, chosen == rejected; unreadable records are
 * skipped), split off the eval set (`eval_dataset`, else `eval_split_fraction` with `seed`), cap it at `n_eval_examples`, tokenize
 * both splits (`max_length`, `max_prompt_length`, `truncation_mode`, as TRL) and count what was dropped
 * and truncated, warning when more than 10% of the pairs are truncated.
 */
import type { Logger } from 'pino';
import { ConfigError, type TrainConfig } from '../../config/index.js';
import { datasetSha256 } from '../data/hash.js';
import { loadPreferenceExamples, pairErrors, resolvePadId, splitEval, tokenizeDataset, type LoadOptions, type TokenizedPair } from '../data/index.js';
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

/** Above this share of truncated pairs the data phase warns (naming `max_length`). */
export const TRUNCATION_WARN_FRACTION = 0.1;

/** Counts of the data phase (run.json `data`; `dpo validate` prints the same object). */
export interface DataStats {
  /** sha256 (canonical JSON) of the loaded examples, before anything is dropped or split. */
  sha256: string;
  /** Pairs loaded (after format conversion). */
  examples: number;
  /** Records that could not be read or converted (skipped; `dpo validate` lists them as errors). */
  bad_records: number;
  /** Pairs dropped before the split because `dpo validate` calls them errors (empty chosen/rejected, chosen == rejected). */
  invalid: number;
  /** `invalid` by error code (`EMPTY_FIELD`, `CHOSEN_EQUALS_REJECTED`). */
  invalid_by_code: Record<string, number>;
  /** Pairs dropped by tokenisation (the prompt alone fills max_length), both splits. */
  too_long: number;
  /** Everything not used for a data reason: bad_records + invalid + too_long. */
  dropped: number;
  train_pairs: number;
  eval_pairs: number;
  /** Pairs truncated to max_length, both splits, and their share of the tokenized pairs. */
  truncated: number;
  truncated_fraction: number;
  /** Human-readable warnings (also logged), e.g. more than 10% of the pairs truncated. */
  warnings: string[];
}

export interface PreparedData {
  train: TokenizedPair[];
  eval: TokenizedPair[];
  /** Pad token id for collation. */
  padId: number;
  stats: DataStats;
}

/**
 * Load, drop the invalid pairs, split, tokenize and count — the one view of the data, shared by training and
 * `dpo validate`.
 * @param dataset examples or a path / registered name used instead of `cfg.datasets`
 * @throws DataError for unreadable data (a missing file, an unknown format, no pairs at all); ConfigError
 *   (`max_length`) when no training pair is left
 */
export async function prepareData(cfg: DataConfig, tokenizer: Tokenizer, logger: Logger, dataset?: PreferenceExample[] | string): Promise<PreparedData> {
  let badRecords = 0;
  const loadOpts: LoadOptions = {
    format: cfg.dataset_format ?? undefined,
    chosenKey: cfg.chosen_key ?? undefined,
    rejectedKey: cfg.rejected_key ?? undefined,
    tokenizer,
    onBadRecord: (e) => {
      badRecords++;
      logger.warn({ code: e.code, reason: e.reason, line: e.line, index: e.index, field: e.field }, 'unreadable record skipped');
    },
  };
  const load = (src: string) => loadPreferenceExamples(src, loadOpts);
  let loaded: PreferenceExample[] = [];
  if (dataset !== undefined) loaded = typeof dataset === 'string' ? await load(dataset) : dataset;
  else for (const d of cfg.datasets) loaded.push(...(await load(d)));
  const sha256 = datasetSha256(loaded);
  const invalidByCode: Record<string, number> = {};
  const valid = (ex: PreferenceExample): boolean => {
    const errs = pairErrors(ex);
    for (const code of new Set(errs.map((e) => e.code))) invalidByCode[code] = (invalidByCode[code] ?? 0) + 1;
    return errs.length === 0;
  };
  const examples = loaded.filter(valid);
  const invalid = loaded.length - examples.length;
  let split: { train: PreferenceExample[]; eval: PreferenceExample[] };
  if (cfg.eval_dataset) split = { train: examples, eval: (await load(cfg.eval_dataset)).filter(valid) };
  else split = splitEval(examples, cfg.eval_split_fraction, cfg.seed);
  const evalEx = cfg.n_eval_examples !== null ? split.eval.slice(0, cfg.n_eval_examples) : split.eval;
  const tokOpts = { maxLength: cfg.max_length, maxPromptLength: cfg.max_prompt_length, truncationMode: cfg.truncation_mode };
  const trainTok = tokenizeDataset(split.train, tokenizer, tokOpts);
  const evalTok = tokenizeDataset(evalEx, tokenizer, tokOpts);
  const tooLong = trainTok.stats.dropped + evalTok.stats.dropped;
  const truncated = trainTok.stats.truncated + evalTok.stats.truncated;
  const tokenized = trainTok.stats.pairs + evalTok.stats.pairs;
  const stats: DataStats = {
    sha256,
    examples: loaded.length,
    bad_records: badRecords,
    invalid: loaded.length - examples.length,
    invalid_by_code: invalidByCode,
    too_long: tooLong,
    dropped: badRecords + invalid + tooLong,
    train_pairs: trainTok.pairs.length,
    eval_pairs: evalTok.pairs.length,
    truncated,
    truncated_fraction: tokenized > 0 ? truncated / tokenized : 0,
    warnings: [],
  };
  if (invalid > 0) {
    const msg = `${invalid} of ${loaded.length} pairs dropped: ${Object.entries(invalidByCode)
      .map(([c, n]) => `${c} ${n}`)
      .join(', ')} (dpo validate lists them)`;
    stats.warnings.push(msg);
    logger.warn({ invalid, invalid_by_code: invalidByCode }, msg);
  }
  if (stats.truncated_fraction > TRUNCATION_WARN_FRACTION) {
    const pct = (100 * stats.truncated_fraction).toFixed(1);
    const msg = `${truncated} of ${tokenized} pairs (${pct}%) are truncated to max_length=${cfg.max_length} tokens; raise max_length (TRL's default is 1024) or check max_prompt_length=${cfg.max_prompt_length}`;
    stats.warnings.push(msg);
    logger.warn({ truncated, pairs: tokenized, max_length: cfg.max_length }, msg);
  }
  if (trainTok.pairs.length === 0) {
    throw new ConfigError(
      'max_length',
      `no training pair left (${loaded.length} loaded, ${invalid} invalid, ${trainTok.stats.dropped} of ${split.train.length} longer than max_length=${cfg.max_length}); raise max_length or lower max_prompt_length`,
    );
  }
  logger.info(
    { examples: stats.examples, train: stats.train_pairs, eval: stats.eval_pairs, dropped: stats.dropped, invalid, truncated, warnings: stats.warnings.length },
    'data ready',
  );
  return { train: trainTok.pairs, eval: evalTok.pairs, padId: resolvePadId(tokenizer), stats };
}
