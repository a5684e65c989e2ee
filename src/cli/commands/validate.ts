/**
 * `dpo validate [FILE|DATASET ...] [--config FILE] [key=value ...]`: the data as training sees it. It takes the
 * same configuration as `dpo train` (config/config.yaml, `--config`, `key=value` overrides; a FILE or dataset
 * name given here replaces `datasets`) and reports, per source, the detected format, counts, token length
 * percentiles, duplicates, empty fields, chosen == rejected pairs and over-length pairs; then exactly what
 * training would keep, drop and truncate — computed by training's own data phase (src/training/pipeline/data.ts),
 * so the numbers are run.json's `data`. Exit code 1 on errors (bad records, empty chosen/rejected,
 * chosen == rejected: training drops those pairs; an unreadable file), 2 on a bad config, 0 otherwise
 * (warnings do not fail).
 */
import type { Command } from 'commander';
import pino from 'pino';
import { ConfigError, loadConfig, type TrainConfig } from '../../config/index.js';
import { DataError, inspectDataset, type DatasetReport, type LengthStats } from '../../training/data/index.js';
import { loadTrainingTokenizer } from '../../training/pipeline/backend-model.js';
import { type DataStats, prepareData } from '../../training/pipeline/data.js';
import type { Tokenizer } from '../../training/types.js';

export interface ValidateCliOptions {
  /** A YAML config file merged over config/config.yaml (as `dpo train --config`). */
  config?: string;
  /** Shorthands for the overrides dataset_format=, chosen_key=, rejected_key=, max_length=, max_prompt_length=, truncation_mode=. */
  format?: string;
  chosenKey?: string;
  rejectedKey?: string;
  promptKey?: string;
  /** A tokenizer path/dir/name (model.tokenizer_name_or_path=), or 'none' for character lengths only. Default: the model's. */
  tokenizer?: string;
  maxLength?: string | number;
  maxPromptLength?: string | number;
  truncationMode?: string;
  maxProblems?: string | number;
  json?: boolean;
}

function fmtLen(s: LengthStats): string {
  return `min ${s.min}  p50 ${s.p50}  p90 ${s.p90}  p95 ${s.p95}  p99 ${s.p99}  max ${s.max}  mean ${s.mean.toFixed(1)}`;
}

/** Human-readable report (never prints record text, only locations and codes). */
export function formatReport(r: DatasetReport): string {
  const lines: string[] = [];
  lines.push(`source:     ${r.source}`);
  lines.push(`format:     ${r.format ?? 'unknown'} (${r.container ?? '?'})`);
  lines.push(`records:    ${r.records}    pairs: ${r.pairs}`);
  if (r.lengths) {
    lines.push(`lengths (${r.unit}):`);
    lines.push(`  prompt    ${fmtLen(r.lengths.prompt)}`);
    lines.push(`  chosen    ${fmtLen(r.lengths.chosen)}`);
    lines.push(`  rejected  ${fmtLen(r.lengths.rejected)}`);
    lines.push(`  sequence  ${fmtLen(r.lengths.sequence)}`);
  }
  const c = r.counts;
  lines.push(
    `counts:     duplicates ${c.duplicates}, chosen==rejected ${c.chosenEqualsRejected}, empty prompt/chosen/rejected ${c.emptyPrompt}/${c.emptyChosen}/${c.emptyRejected}, ` +
      `over max_length ${c.overLength}, prompt fills max_length ${c.promptFillsMaxLength}, bad records ${c.badRecords}`,
  );
  if (r.fatal) lines.push(`FATAL ${r.fatal.code}: ${r.fatal.message}`);
  for (const p of r.errors)
    lines.push(`error   ${p.code}${p.line !== undefined ? ` line ${p.line}` : ''} index ${p.index}${p.field ? ` ${p.field}` : ''}: ${p.message}`);
  if (r.errorCount > r.errors.length) lines.push(`... ${r.errorCount - r.errors.length} more errors`);
  for (const p of r.warnings.slice(0, 10)) lines.push(`warning ${p.code}${p.line !== undefined ? ` line ${p.line}` : ''} index ${p.index}: ${p.message}`);
  if (r.warningCount > 10) lines.push(`... ${r.warningCount - 10} more warnings`);
  lines.push(r.ok ? `OK (${r.warningCount} warnings)` : `FAILED (${r.errorCount} errors${r.fatal ? ', fatal' : ''})`);
  return lines.join('\n');
}

/** What `dpo validate --json` prints. */
export interface ValidateResult {
  /** The settings the data view depends on (from the resolved config). */
  settings: Pick<
    TrainConfig,
    'datasets' | 'eval_dataset' | 'dataset_format' | 'max_length' | 'max_prompt_length' | 'truncation_mode' | 'eval_split_fraction' | 'n_eval_examples' | 'seed'
  >;
  reports: DatasetReport[];
  /** What training keeps, drops and truncates (run.json `data`); null without a tokenizer; `error` when training would fail. */
  training: DataStats | { error: { code: string; message: string } } | null;
}

/** The "training would" block of the human report. */
export function formatTraining(t: ValidateResult['training'], cfg: ValidateResult['settings']): string {
  if (t === null) return 'training:   (no tokenizer: --tokenizer none gives character lengths only)';
  if ('error' in t) return `training:   would fail: ${t.error.code}: ${t.error.message}`;
  const lines = [
    `training (max_length ${cfg.max_length}, max_prompt_length ${cfg.max_prompt_length}, ${cfg.truncation_mode}):`,
    `  keeps     ${t.train_pairs + t.eval_pairs} pairs: ${t.train_pairs} train, ${t.eval_pairs} eval (of ${t.examples} loaded)`,
    `  drops     ${t.dropped}: ${t.invalid} invalid${
      Object.keys(t.invalid_by_code).length
        ? ` (${Object.entries(t.invalid_by_code)
            .map(([c, n]) => `${c} ${n}`)
            .join(', ')})`
        : ''
    }, ${t.bad_records} unreadable records, ${t.too_long} prompts filling max_length`,
    `  truncates ${t.truncated} (${(100 * t.truncated_fraction).toFixed(1)}%)`,
  ];
  for (const w of t.warnings) lines.push(`  warning   ${w}`);
  return lines.join('\n');
}

/** Split CLI arguments into data sources and `key=value` overrides. */
function splitArgs(args: string[], o: ValidateCliOptions): { sources: string[]; overrides: string[] } {
  const sources = args.filter((a) => !a.includes('='));
  const overrides = args.filter((a) => a.includes('='));
  const flag = (key: string, v: string | number | undefined) => (v === undefined ? [] : [`${key}=${v}`]);
  overrides.unshift(
    ...flag('dataset_format', o.format),
    ...flag('chosen_key', o.chosenKey),
    ...flag('rejected_key', o.rejectedKey),
    ...flag('max_length', o.maxLength),
    ...flag('max_prompt_length', o.maxPromptLength),
    ...flag('truncation_mode', o.truncationMode),
    ...(o.tokenizer && o.tokenizer !== 'none' ? [`model.tokenizer_name_or_path=${o.tokenizer}`] : []),
  );
  return { sources, overrides };
}

/**
 * Validate the data of a training configuration (see the module doc).
 * @param args data sources (replacing `datasets`) and `key=value` overrides, in any order
 * @returns the result and the exit code (0 ok, 1 errors, 2 bad config or tokenizer)
 */
export async function validateData(args: string[], o: ValidateCliOptions = {}): Promise<{ result: ValidateResult | null; code: number; message?: string }> {
  const { sources, overrides } = splitArgs(args, o);
  let cfg: TrainConfig;
  try {
    cfg = loadConfig({ configFile: o.config, overrides });
  } catch (e) {
    if (e instanceof ConfigError) return { result: null, code: 2, message: `invalid config: ${e.message}` };
    throw e;
  }
  if (sources.length) cfg = { ...cfg, datasets: sources };
  let tokenizer: Tokenizer | undefined;
  try {
    tokenizer = o.tokenizer === 'none' ? undefined : await loadTrainingTokenizer(cfg);
  } catch (e) {
    return {
      result: null,
      code: 2,
      message: `cannot load the tokenizer of ${cfg.model.tokenizer_name_or_path ?? cfg.model.name_or_path}: ${(e as Error).message} (use --tokenizer none for character lengths)`,
    };
  }
  const settings = {
    datasets: cfg.datasets,
    eval_dataset: cfg.eval_dataset,
    dataset_format: cfg.dataset_format,
    max_length: cfg.max_length,
    max_prompt_length: cfg.max_prompt_length,
    truncation_mode: cfg.truncation_mode,
    eval_split_fraction: cfg.eval_split_fraction,
    n_eval_examples: cfg.n_eval_examples,
    seed: cfg.seed,
  };
  const reports: DatasetReport[] = [];
  for (const src of [...cfg.datasets, ...(cfg.eval_dataset ? [cfg.eval_dataset] : [])]) {
    reports.push(
      await inspectDataset(src, {
        format: cfg.dataset_format ?? undefined,
        chosenKey: cfg.chosen_key ?? undefined,
        rejectedKey: cfg.rejected_key ?? undefined,
        promptKey: o.promptKey,
        tokenizer,
        maxLength: cfg.max_length,
        maxPromptLength: cfg.max_prompt_length,
        truncationMode: cfg.truncation_mode,
        maxProblems: o.maxProblems === undefined ? 50 : Number(o.maxProblems),
      }),
    );
  }
  let training: ValidateResult['training'] = null;
  if (tokenizer) {
    try {
      training = (await prepareData(cfg, tokenizer, pino({ level: 'silent' }))).stats;
    } catch (e) {
      if (!(e instanceof ConfigError || e instanceof DataError)) throw e;
      training = { error: { code: e.code, message: e.message } };
    }
  }
  const ok = reports.every((r) => r.ok) && !(training && 'error' in training);
  return { result: { settings, reports, training }, code: ok ? 0 : 1 };
}

/**
 * Run the validation and print the report.
 * @returns the process exit code (0 ok, 1 errors, 2 bad options)
 */
export async function runValidate(args: string[], o: ValidateCliOptions = {}): Promise<number> {
  const { result, code, message } = await validateData(args, o);
  if (!result) {
    console.error(`dpo validate: ${message}`);
    return code;
  }
  // JSON: the first source's report at the top level (the single-file report of earlier versions), then all
  if (o.json) console.log(JSON.stringify({ ...result.reports[0], ok: code === 0, ...result }, null, 2));
  else console.log([...result.reports.map(formatReport), formatTraining(result.training, result.settings)].join('\n\n'));
  return code;
}

/** Register `validate` on the `dpo` program. */
export function register(program: Command): void {
  program
    .command('validate')
    .description(
      'the data as `dpo train` would see it (same --config and key=value overrides): format, counts, lengths, problems, and what training keeps, drops and truncates; exit 1 on errors',
    )
    .argument('[args...]', 'data files / registered dataset names (replace `datasets`) and key=value overrides')
    .option('-c, --config <file>', 'YAML config merged over config/config.yaml (as dpo train)')
    .option('--format <name>', 'dataset_format= (explicit, implicit, conversational, sharegpt, roll, paddle, grouped); detected when absent')
    .option('--chosen-key <key>', 'chosen_key= (ROLL: key of the chosen response)')
    .option('--rejected-key <key>', 'rejected_key= (ROLL: key of the rejected response)')
    .option('--prompt-key <key>', 'ROLL: key of the instruction')
    .option('--tokenizer <path>', 'model.tokenizer_name_or_path= (default: the model\'s tokenizer); "none" for character lengths only')
    .option('--max-length <n>', "max_length= (default: the config's)")
    .option('--max-prompt-length <n>', "max_prompt_length= (default: the config's)")
    .option('--truncation-mode <mode>', 'truncation_mode= keep_end or keep_start')
    .option('--max-problems <n>', 'problems listed in the report', '50')
    .option('--json', 'print the result as JSON')
    .action(async (args: string[], opts: ValidateCliOptions) => {
      process.exitCode = await runValidate(args, opts);
    });
}
