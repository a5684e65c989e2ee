/**
 * `dpo export --model SRC --out DIR [--dtype F32|BF16]`: any supported checkpoint (built-in name, llama2.c
 * `.bin`, Hugging Face directory) → a Hugging Face directory (model.safetensors, config.json,
 * generation_config.json, tokenizer files) that transformers loads unchanged.
 */
import type { Command } from 'commander';
import { initBackend } from '../../training/engine/backend.js';
import { loadModel, loadPretrained, saveModelHF } from '../../training/models/index.js';
import { modelLog } from '../../training/models/log.js';
import type { Tokenizer } from '../../training/types.js';

export interface ExportCliOptions {
  model: string;
  out: string;
  dtype: string;
}

/** Run `export`; returns the files written. @throws RangeError for a bad --dtype */
export async function runExport(o: ExportCliOptions): Promise<string[]> {
  const dtype = o.dtype.toUpperCase();
  if (dtype !== 'F32' && dtype !== 'BF16') throw new RangeError(`--dtype ${JSON.stringify(o.dtype)}: use F32 or BF16`);
  await initBackend();
  let tokenizer: Tokenizer | undefined;
  let model;
  try {
    ({ model, tokenizer } = await loadPretrained(o.model));
  } catch (e) {
    if ((e as { code?: string }).code?.startsWith('TOKENIZER') !== true) throw e;
    modelLog().warn({ err: (e as Error).message }, 'no tokenizer found next to the model; exporting the weights and config only');
    model = await loadModel(o.model);
  }
  const files = await saveModelHF(model, o.out, { dtype, tokenizer });
  model.dispose();
  return files;
}

/** Register `export` on the `dpo` program. */
export function register(program: Command): void {
  program
    .command('export')
    .description('write a model as a Hugging Face directory (safetensors, config.json, generation_config.json, tokenizer)')
    .requiredOption('--model <src>', 'built-in name (stories260K), Hugging Face directory, or llama2.c .bin')
    .requiredOption('--out <dir>', 'output directory')
    .option('--dtype <dtype>', 'F32 or BF16', 'F32')
    .action(async (o: ExportCliOptions) => {
      for (const f of await runExport(o)) process.stdout.write(f + '\n');
    });
}
