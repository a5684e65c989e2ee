/**
 * `dpo generate --model SRC --prompt TEXT --max-new-tokens N --temperature T [--top-k K] [--top-p P] [--seed S]`:
 * prints the prompt followed by its continuation (greedy at temperature 0), like llama2.c's `run`.
 */
import type { Command } from 'commander';
import { initBackend } from '../../training/engine/backend.js';
import { generate, loadPretrained } from '../../training/models/index.js';
import { modelLog } from '../../training/models/log.js';

export interface GenerateCliOptions {
  model: string;
  prompt: string;
  maxNewTokens: string;
  temperature: string;
  topK?: string;
  topP?: string;
  seed?: string;
}

function number(v: string | undefined, name: string, check: (x: number) => boolean, hint: string): number | undefined {
  if (v === undefined) return undefined;
  const x = Number(v);
  if (!Number.isFinite(x) || !check(x)) throw new RangeError(`--${name} ${JSON.stringify(v)}: ${hint}`);
  return x;
}

/** Run `generate`; returns the printed text. @throws RangeError for a bad option value */
export async function runGenerate(o: GenerateCliOptions): Promise<string> {
  const maxNewTokens = number(o.maxNewTokens, 'max-new-tokens', (x) => Number.isInteger(x) && x >= 0, 'a non-negative integer')!;
  const temperature = number(o.temperature, 'temperature', (x) => x >= 0, 'a number >= 0 (0 = greedy)')!;
  const topK = number(o.topK, 'top-k', (x) => Number.isInteger(x) && x >= 0, 'a non-negative integer (0 = off)');
  const topP = number(o.topP, 'top-p', (x) => x > 0 && x <= 1, 'a number in (0, 1]');
  const seed = number(o.seed, 'seed', (x) => Number.isInteger(x), 'an integer');
  const backend = await initBackend();
  modelLog().info({ backend: backend.name, package: backend.package }, 'tfjs backend');
  const { model, tokenizer, source } = await loadPretrained(o.model);
  modelLog().debug({ source, modelType: model.config.modelType }, 'model loaded');
  const { text } = generate(model, tokenizer, o.prompt, { maxNewTokens, temperature, topK, topP, seed });
  model.dispose();
  return o.prompt + text;
}

/** Register `generate` on the `dpo` program. */
export function register(program: Command): void {
  program
    .command('generate')
    .description('continue a prompt with a model (greedy at --temperature 0; KV cache; stops at EOS)')
    .option('--model <src>', 'built-in name (stories260K), Hugging Face directory, or llama2.c .bin', 'stories260K')
    .option('--prompt <text>', 'prompt text (empty: start from BOS)', '')
    .option('--max-new-tokens <n>', 'tokens to generate at most', '256')
    .option('--temperature <t>', 'sampling temperature; 0 = greedy', '0')
    .option('--top-k <k>', 'sample among the k most likely tokens')
    .option('--top-p <p>', 'nucleus sampling: smallest set with probability >= p')
    .option('--seed <s>', 'RNG seed for sampling', '0')
    .action(async (o: GenerateCliOptions) => {
      process.stdout.write((await runGenerate(o)) + '\n');
    });
}
