/**
 * `dpo score --model SRC --data FILE`: one JSON line per preference row with the summed log-probs of the
 * chosen and rejected completions given the prompt — the numbers DPO uses: the rows are tokenised with the
 * data pipeline's tokenizePreference (same truncation, completions end with EOS) and scored with the losses'
 * completionLogps (label t+1 scored by the logits at t, summed over completion tokens).
 * Never prints the row texts, only indices and numbers.
 */
import type { Command } from 'commander';
import { initBackend } from '../../training/engine/backend.js';
import { loadPretrained, scoreCompletions, type ScoreRow } from '../../training/models/index.js';
import { loadPreferenceExamples } from '../../training/data/index.js';

export type { ScoreRow };

export interface ScoreCliOptions {
  model: string;
  data: string;
  maxLength: string;
  maxPromptLength: string;
  truncationMode: string;
  format?: string;
}

/** Run `score`, calling `emit` per row. @throws RangeError for bad options */
export async function runScore(o: ScoreCliOptions, emit: (row: ScoreRow) => void): Promise<void> {
  const maxLength = Number(o.maxLength);
  const maxPromptLength = Number(o.maxPromptLength);
  if (!Number.isInteger(maxLength) || maxLength < 2) throw new RangeError(`--max-length ${o.maxLength}: an integer >= 2`);
  if (!Number.isInteger(maxPromptLength) || maxPromptLength < 1) throw new RangeError(`--max-prompt-length ${o.maxPromptLength}: an integer >= 1`);
  if (o.truncationMode !== 'keep_start' && o.truncationMode !== 'keep_end') {
    throw new RangeError(`--truncation-mode ${o.truncationMode}: keep_start or keep_end`);
  }
  await initBackend();
  const { model, tokenizer } = await loadPretrained(o.model, { trainable: false });
  const examples = await loadPreferenceExamples(o.data, { tokenizer, ...(o.format ? { format: o.format } : {}) });
  for (const row of scoreCompletions(model, tokenizer, examples, { maxLength, maxPromptLength, truncationMode: o.truncationMode })) emit(row);
  model.dispose();
}

/** Register `score` on the `dpo` program. */
export function register(program: Command): void {
  program
    .command('score')
    .description('per-row summed log-probs of chosen and rejected given the prompt (JSON lines), as DPO computes them')
    .option('--model <src>', 'built-in name (stories260K), Hugging Face directory, or llama2.c .bin', 'stories260K')
    .requiredOption('--data <file>', 'preference data file (JSON, JSONL, .gz) or a registered dataset name')
    .option('--max-length <n>', 'max tokens of prompt + completion', '128')
    .option('--max-prompt-length <n>', 'max prompt tokens when a pair is too long', '64')
    .option('--truncation-mode <mode>', 'keep_end or keep_start', 'keep_end')
    .option('--format <name>', 'force a data format (default: detected)')
    .action(async (o: ScoreCliOptions) => {
      await runScore(o, (row) => process.stdout.write(JSON.stringify(row) + '\n'));
    });
}
