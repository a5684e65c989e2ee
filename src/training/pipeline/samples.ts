/**
 * Pipeline phase: model samples at evaluation time (`sample_during_eval`): the first `n_eval_model_samples`
 * eval prompts are completed by the policy and appended to `samples.jsonl` as
 * `{stage, step, index, prompt, completion}` lines.
 */
import { appendFileSync, existsSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import type { TrainConfig } from '../../config/index.js';
import type { TokenizedPair } from '../data/index.js';
import { generate, type GenerativeLM } from '../models/index.js';
import type { Tokenizer } from '../types.js';

export type SamplesConfig = Pick<TrainConfig, 'sample_during_eval' | 'n_eval_model_samples' | 'sample_max_new_tokens' | 'sample_temperature' | 'seed'>;

/** One line of samples.jsonl. */
export interface SampleRecord {
  stage: 'sft' | 'dpo';
  step: number;
  index: number;
  prompt: string;
  completion: string;
}

/** Called by a stage task after each evaluation. */
export type OnEval = (ctx: { step: number }) => Promise<void>;

/** Prompt text of a tokenized pair without BOS (what generation is given back). */
export function promptText(p: TokenizedPair, tok: Tokenizer): string {
  const ids = p.promptIds[0] === tok.bosTokenId ? p.promptIds.slice(1) : p.promptIds;
  return tok.decode(ids);
}

export interface SamplerInputs {
  cfg: SamplesConfig;
  policy: GenerativeLM;
  tokenizer: Tokenizer;
  evalPairs: TokenizedPair[];
  /** The run's output directory (samples.jsonl is written there). */
  outputDir: string;
  /** A resumed run keeps the earlier samples; a fresh run starts the file anew. */
  resumed: boolean;
}

/** The samples writer of a run: `onEval(stage)` gives the stage task's evaluation hook. */
export class Sampler {
  readonly path: string;
  constructor(private readonly o: SamplerInputs) {
    this.path = join(o.outputDir, 'samples.jsonl');
    if (!o.resumed && existsSync(this.path)) rmSync(this.path);
  }

  /** Samples the policy has produced at this point (seed `seed + step`, so a resumed run samples alike). */
  sample(stage: 'sft' | 'dpo', step: number): SampleRecord[] {
    const { cfg, policy, tokenizer, evalPairs } = this.o;
    if (!cfg.sample_during_eval || cfg.n_eval_model_samples <= 0) return [];
    const out: SampleRecord[] = [];
    for (const [index, pair] of evalPairs.slice(0, cfg.n_eval_model_samples).entries()) {
      const prompt = promptText(pair, tokenizer);
      const g = generate(policy, tokenizer, prompt, { maxNewTokens: cfg.sample_max_new_tokens, temperature: cfg.sample_temperature, seed: cfg.seed + step });
      out.push({ stage, step, index, prompt, completion: g.text });
    }
    return out;
  }

  onEval(stage: 'sft' | 'dpo'): OnEval {
    return async ({ step }) => {
      for (const r of this.sample(stage, step)) appendFileSync(this.path, `${JSON.stringify(r)}\n`);
    };
  }
}
