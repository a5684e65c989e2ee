/**
 * The data phase of `stage: online_dpo`: prompt rows from `datasets` (or the caller's rows / source) in any
 * format prompts.ts reads, split into train / eval prompts as DPO splits pairs (`eval_dataset`, else
 * `eval_split_fraction` with `seed`; eval capped at `n_eval_examples`), tokenised as DPO prompts. Rows that
 * carry an SFT target (a preference record's chosen, or `chosen`/`completion` next to a prompt) also form
 * the SFT stage's pairs; with none, SFT has nothing to train on and is skipped.
 */
import { datasetSha256 } from '../data/hash.js';
import { resolvePadId, splitEval, tokenizeDataset, type TokenizedPair } from '../data/index.js';
import type { DataConfig, PreparedData } from '../pipeline/data.js';
import type { DatasetRow, Tokenizer } from '../types.js';
import type { Logger } from 'pino';
export { preferenceRowsOnly } from './validate-prompts.js';
import { loadPromptRows, tokenizePrompt, type PromptRow, type TokenizedPrompt } from './prompts.js';

/** The online data: SFT pairs (train/eval, possibly empty) and the prompts. */
export interface OnlinePreparedData extends PreparedData {
  prompts: { train: TokenizedPrompt[]; eval: TokenizedPrompt[] };
}

async function rowsOf(source: string, cfg: DataConfig, tokenizer: Tokenizer): Promise<PromptRow[]> {
  return loadPromptRows(source, {
    format: cfg.dataset_format ?? undefined,
    chosenKey: cfg.chosen_key ?? undefined,
    rejectedKey: cfg.rejected_key ?? undefined,
    tokenizer,
  });
}

/**
 * Load, split and tokenise the prompts (and the SFT pairs of the rows that have a target).
 * @param dataset rows or a path / registered name used instead of `cfg.datasets`
 * @throws DataError for unreadable data or a row without a prompt
 */
export async function prepareOnlineData(cfg: DataConfig, tokenizer: Tokenizer, logger: Logger, dataset?: DatasetRow[] | string): Promise<OnlinePreparedData> {
  let rows: PromptRow[] = [];
  if (Array.isArray(dataset)) rows = await loadPromptRows(dataset as unknown[], { tokenizer });
  else if (typeof dataset === 'string') rows = await rowsOf(dataset, cfg, tokenizer);
  else for (const d of cfg.datasets) rows.push(...(await rowsOf(d, cfg, tokenizer)));
  const sha256 = datasetSha256(rows);
  const split = cfg.eval_dataset ? { train: rows, eval: await rowsOf(cfg.eval_dataset, cfg, tokenizer) } : splitEval(rows, cfg.eval_split_fraction, cfg.seed);
  const evalRows = cfg.n_eval_examples !== null ? split.eval.slice(0, cfg.n_eval_examples) : split.eval;
  const tokOpts = { maxLength: cfg.max_length, maxPromptLength: cfg.max_prompt_length, truncationMode: cfg.truncation_mode };
  const prompts = (xs: PromptRow[]) => xs.map((r) => tokenizePrompt(r.prompt, tokenizer, tokOpts));
  /** SFT pairs of the rows with a target (`stats` counts them; prompts themselves are never dropped). */
  const sftPairs = (xs: PromptRow[]): { pairs: TokenizedPair[]; dropped: number; truncated: number } => {
    const withTarget = xs.filter((r): r is Required<PromptRow> => r.target !== undefined);
    const t = tokenizeDataset(
      withTarget.map((r) => ({ prompt: r.prompt, chosen: r.target, rejected: r.target })),
      tokenizer,
      tokOpts,
    );
    return { pairs: t.pairs, dropped: t.stats.dropped, truncated: t.stats.truncated };
  };
  const sftTrain = sftPairs(split.train);
  const sftEval = sftPairs(evalRows);
  const out: OnlinePreparedData = {
    train: sftTrain.pairs,
    eval: sftEval.pairs,
    padId: resolvePadId(tokenizer),
    prompts: { train: prompts(split.train), eval: prompts(evalRows) },
    stats: {
      sha256,
      examples: rows.length,
      bad_records: 0,
      invalid: 0,
      invalid_by_code: {},
      too_long: sftTrain.dropped + sftEval.dropped,
      dropped: sftTrain.dropped + sftEval.dropped,
      train_pairs: sftTrain.pairs.length,
      eval_pairs: sftEval.pairs.length,
      truncated: sftTrain.truncated + sftEval.truncated,
      truncated_fraction: 0,
      warnings: [],
    },
  };
  const tokenized = sftTrain.pairs.length + sftEval.pairs.length + out.stats.too_long;
  out.stats.truncated_fraction = tokenized > 0 ? out.stats.truncated / tokenized : 0;
  logger.info(
    { prompts: rows.length, train_prompts: out.prompts.train.length, eval_prompts: out.prompts.eval.length, sft_pairs: out.train.length },
    'online DPO data ready',
  );
  return out;
}
