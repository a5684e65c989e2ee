/**
 * `dpo validate FILE|DATASET`: detected format, counts, token length percentiles, duplicates,
 * chosen == rejected pairs, empty fields, over-length pairs. Exit code 1 on errors (bad records,
 * empty chosen/rejected, chosen == rejected, unreadable file), 0 otherwise (warnings do not fail).
 */
import type { Command } from 'commander';
import { inspectDataset, type DatasetReport, type LengthStats, type TruncationMode } from '../../training/data/index.js';
import { loadTokenizer } from '../../training/tokenizers/index.js';

export interface ValidateCliOptions {
  format?: string;
  chosenKey?: string;
  rejectedKey?: string;
  promptKey?: string;
  /** A tokenizer path/dir/name, or 'none' for character lengths. Default: stories260K. */
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

/**
 * Run the validation and print the report.
 * @returns the process exit code (0 ok, 1 errors, 2 bad options)
 */
export async function runValidate(file: string, o: ValidateCliOptions = {}): Promise<number> {
  const num = (v: string | number | undefined, d: number) => (v === undefined ? d : Number(v));
  const maxLength = num(o.maxLength, 512);
  const maxPromptLength = num(o.maxPromptLength, 256);
  const truncationMode = (o.truncationMode ?? 'keep_end') as TruncationMode;
  if (!Number.isInteger(maxLength) || maxLength < 2 || !Number.isInteger(maxPromptLength) || maxPromptLength < 1) {
    console.error('--max-length must be an integer ≥ 2 and --max-prompt-length an integer ≥ 1');
    return 2;
  }
  if (truncationMode !== 'keep_end' && truncationMode !== 'keep_start') {
    console.error('--truncation-mode must be keep_end or keep_start');
    return 2;
  }
  const tokName = o.tokenizer ?? 'stories260K';
  let tokenizer;
  try {
    tokenizer = tokName === 'none' ? undefined : await loadTokenizer(tokName);
  } catch (e) {
    console.error(`cannot load tokenizer ${tokName}: ${(e as Error).message} (use --tokenizer none for character lengths)`);
    return 2;
  }
  const report = await inspectDataset(file, {
    format: o.format,
    chosenKey: o.chosenKey,
    rejectedKey: o.rejectedKey,
    promptKey: o.promptKey,
    tokenizer,
    maxLength,
    maxPromptLength,
    truncationMode,
    maxProblems: num(o.maxProblems, 50),
  });
  console.log(o.json ? JSON.stringify(report, null, 2) : formatReport(report));
  return report.ok ? 0 : 1;
}

/** Register `validate` on the `dpo` program. */
export function register(program: Command): void {
  program
    .command('validate')
    .description('check a preference data file (or registered dataset): format, counts, lengths, problems; exit 1 on errors')
    .argument('<file>', 'data file (JSON, JSONL, .gz) or a registered dataset name (toy, hh)')
    .option('--format <name>', 'data format (explicit, implicit, conversational, sharegpt, roll, paddle, grouped); detected when absent')
    .option('--chosen-key <key>', 'ROLL: key of the chosen response')
    .option('--rejected-key <key>', 'ROLL: key of the rejected response')
    .option('--prompt-key <key>', 'ROLL: key of the instruction')
    .option('--tokenizer <path>', 'tokenizer for token lengths (file, dir, or stories260K); "none" for characters', 'stories260K')
    .option('--max-length <n>', 'max tokens per sequence', '512')
    .option('--max-prompt-length <n>', 'max prompt tokens when truncating', '256')
    .option('--truncation-mode <mode>', 'keep_end or keep_start', 'keep_end')
    .option('--max-problems <n>', 'problems listed in the report', '50')
    .option('--json', 'print the report as JSON')
    .action(async (file: string, opts: ValidateCliOptions) => {
      process.exitCode = await runValidate(file, opts);
    });
}
