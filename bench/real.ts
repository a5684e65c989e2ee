/**
 * One DPO epoch on real preference pairs, padded vs padding_free vs shared_prompt, optionally raced against TRL's
 * DPOTrainer on the same model directory and the same pairs (bench/README.md "Real data").
 *
 *   npm run bench:real -- --model <hf dir | stories260K | stories15M-gpt2 | smollm2-135m-gpt2> --data hh|sharegpt|<jsonl>
 *     --pairs N --max-length L [--batch 4] [--runs 1] [--layouts padded,padding_free,shared_prompt] [--peer trl]
 *     [--mode dpo|sft]
 *
 * Each layout (and each run) trains in its own process (peak RSS per row): policy + frozen reference copy, sigmoid
 * DPO beta 0.1, AdamW lr 1e-6, batch --batch pairs, one epoch over the first N pairs. Rows: wall time of the epoch,
 * median step (first step left out, as the peer), non-padding tokens/s (prompt+chosen and prompt+rejected tokens,
 * the same count for every layout), the padded layout's padding fraction, peak RSS. Presets `*-gpt2` are random
 * checkpoints of that shape with the GPT-2 tokenizer (../shared/tokenizers/gpt2), written once to $TMPDIR.
 * `--mode sft`: one SFT epoch on prompt + chosen instead (padded vs padding_free; no reference, no peer).
 */
import { spawnSync } from 'node:child_process';
import * as tf from '@tensorflow/tfjs-core';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { gunzipSync } from 'node:zlib';
import { join, resolve } from 'node:path';
import { tmpdir } from 'node:os';
import { initBackend } from '../src/training/engine/backend.js';
import { nativeProfile } from '../src/training/engine/addon.js';
import { engineSettings } from '../src/training/engine/settings.js';
import { cloneModel, createModel, loadPretrained, saveModelHF } from '../src/training/models/index.js';
import { loadTokenizer } from '../src/training/tokenizers/index.js';
import { tokenizePreference, type BatchLayout, type TokenizedPair } from '../src/training/data/index.js';
import { resolveLossOptions } from '../src/training/losses/index.js';
import { runStage } from '../src/training/trainer/stage.js';
import { dpoTask, sftTask } from '../src/training/trainer/tasks.js';
import type { ModelConfig, PreferenceExample } from '../src/training/types.js';
import { dpoEpochFlops } from './dpo-flops.js';
import { loadConfig } from '../src/config/index.js';
import { availableMemory, estimateMemory } from '../src/training/plan/memory.js';
import { sizeNativePool } from '../src/training/engine/native-backend.js';

// ../shared beside the checkout (a worktree under wt/ has it two levels up); BENCH_SHARED_DIR overrides
const SHARED =
  process.env.BENCH_SHARED_DIR ??
  [resolve(import.meta.dirname, '../../shared'), resolve(import.meta.dirname, '../../../shared')].find((d) => existsSync(d)) ??
  '../shared';
const args = process.argv.slice(2);
function opt(name: string, dflt?: string): string | undefined {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : dflt;
}
const model = opt('model', 'stories260K')!;
const data = opt('data', 'hh')!;
const nPairs = Number(opt('pairs', '32'));
const maxLength = Number(opt('max-length', '512'));
const batch = Number(opt('batch', '4'));
const runs = Number(opt('runs', '1'));
const layouts = (opt('layouts', 'padded,padding_free,shared_prompt')!.split(',') as BatchLayout[]).filter(Boolean);
const peer = opt('peer');
// --mode sft: one SFT epoch on prompt + chosen (layouts padded, padding_free; no peer), instead of DPO
const mode = opt('mode', 'dpo') as 'dpo' | 'sft';
if (mode !== 'dpo' && mode !== 'sft') throw new Error(`--mode must be dpo or sft, not ${mode}`);
if (mode === 'sft' && layouts.includes('shared_prompt')) layouts.splice(layouts.indexOf('shared_prompt'), 1);
if (mode === 'sft' && peer) throw new Error("--peer runs TRL's DPOTrainer: use it with --mode dpo");
const child = opt('child') as BatchLayout | undefined;

const SHAPES: Record<string, Partial<ModelConfig>> = {
  'stories15M-gpt2': { hiddenSize: 288, intermediateSize: 768, numLayers: 6, numHeads: 6, numKvHeads: 6, headDim: 48 },
  'smollm2-135m-gpt2': { hiddenSize: 576, intermediateSize: 1536, numLayers: 30, numHeads: 9, numKvHeads: 3, headDim: 64 },
};

/** The HF model directory both engines load (exported once for built-ins and presets). */
async function modelDir(): Promise<string> {
  if (existsSync(join(model, 'config.json'))) return resolve(model);
  const dir = join(tmpdir(), `bench-real-${model}`);
  if (existsSync(join(dir, 'model.safetensors'))) return dir;
  await initBackend('auto');
  if (SHAPES[model]) {
    const tok = await loadTokenizer(join(SHARED, 'tokenizers/gpt2'));
    const cfg: ModelConfig = {
      architecture: 'llama',
      modelType: 'llama',
      vocabSize: 50257,
      maxPositionEmbeddings: 2048,
      normEps: 1e-5,
      ropeTheta: 10000,
      ropeScaling: null,
      tieWordEmbeddings: true,
      attentionBias: false,
      qkNorm: false,
      bosTokenId: 50256,
      eosTokenId: 50256,
      padTokenId: null,
      hiddenSize: 0,
      intermediateSize: 0,
      numLayers: 0,
      numHeads: 0,
      numKvHeads: 0,
      headDim: 0,
      ...SHAPES[model],
    };
    await saveModelHF(createModel(cfg, { seed: 0 }), dir, { tokenizer: tok });
  } else {
    const { model: m, tokenizer } = await loadPretrained(model);
    await saveModelHF(m, dir, { tokenizer });
  }
  return dir;
}

/** The first N HH-RLHF pairs as the peer selects them (harmless-base test split, shared "Assistant:" prompt). */
function rows(): PreferenceExample[] {
  if (data === 'sharegpt') return sharegptRows();
  const src = data === 'hh' ? join(SHARED, 'data/hh-rlhf/harmless-base-test.jsonl.gz') : data;
  const buf = readFileSync(src);
  const text = (src.endsWith('.gz') ? gunzipSync(buf) : buf).toString('utf8');
  const out: PreferenceExample[] = [];
  for (const line of text.split('\n')) {
    if (!line.trim()) continue;
    const r = JSON.parse(line) as Record<string, string>;
    if (data === 'hh') {
      const c = r.chosen!;
      const j = r.rejected!;
      const k = c.lastIndexOf('\n\nAssistant:') + '\n\nAssistant:'.length;
      if (c.slice(0, k) === j.slice(0, k) && c.slice(k).trim() && j.slice(k).trim())
        out.push({ prompt: c.slice(0, k), chosen: c.slice(k), rejected: j.slice(k) });
    } else out.push({ prompt: r.prompt!, chosen: r.chosen!, rejected: r.rejected! });
    if (out.length >= nPairs) break;
  }
  return out;
}

/**
 * The first N pairs of LLaMA-Factory's ShareGPT DPO demo (long, multi-turn), the conversation rendered in the
 * HH-RLHF style (`\n\nHuman: ...\n\nAssistant: ...`, ending in `\n\nAssistant:`), answers after a space.
 */
function sharegptRows(): PreferenceExample[] {
  type Turn = { from: string; value: string };
  const demo = JSON.parse(readFileSync(join(SHARED, 'data/llamafactory/dpo_en_demo.json'), 'utf8')) as Array<{
    conversations: Turn[];
    chosen: Turn;
    rejected: Turn;
  }>;
  return demo.slice(0, nPairs).map((r) => ({
    prompt: `${r.conversations.map((t) => `\n\n${t.from === 'human' ? 'Human' : 'Assistant'}: ${t.value}`).join('')}\n\nAssistant:`,
    chosen: ` ${r.chosen.value}`,
    rejected: ` ${r.rejected.value}`,
  }));
}

async function runChild(layout: BatchLayout): Promise<void> {
  await initBackend('auto');
  const dir = await modelDir();
  const { model: policy, tokenizer } = await loadPretrained(dir, { trainable: true });
  const reference = mode === 'dpo' ? cloneModel(policy, { trainable: false }) : null;
  const pairs = rows()
    .map((r) => tokenizePreference(r, tokenizer, { maxLength, maxPromptLength: Math.floor(maxLength / 2), truncationMode: 'keep_end' }))
    .filter((p): p is TokenizedPair => p !== null);
  let nonPad = 0;
  let paddedSlots = 0;
  for (let i = 0; i < pairs.length; i += batch) {
    let L = 0;
    for (const p of pairs.slice(i, i + batch)) {
      // DPO: prompt+chosen and prompt+rejected; SFT: prompt+chosen
      nonPad += mode === 'dpo' ? 2 * p.promptIds.length + p.chosenIds.length + p.rejectedIds.length : p.promptIds.length + p.chosenIds.length;
      L = Math.max(L, p.promptIds.length + (mode === 'dpo' ? Math.max(p.chosenIds.length, p.rejectedIds.length) : p.chosenIds.length));
    }
    paddedSlots += (mode === 'dpo' ? 2 : 1) * Math.min(batch, pairs.length - i) * L;
  }
  // the FLOP model of this epoch (bench/dpo-flops.ts; Llama-shaped models): GFLOP per layout
  const flops =
    mode === 'dpo' && policy.config.architecture === 'llama'
      ? dpoEpochFlops(
          policy.config,
          pairs.map((p) => ({ prompt: p.promptIds.length, chosen: p.chosenIds.length, rejected: p.rejectedIds.length })),
          batch,
        )
      : null;
  // the service's default path: the native buffer pool sized to the memory the run has to spare (run.ts)
  const memCfg = { ...loadConfig(), batch_size: batch, gradient_accumulation_steps: 1, max_length: maxLength, max_prompt_length: Math.floor(maxLength / 2) };
  const poolBytes = sizeNativePool(availableMemory() - estimateMemory(policy.config, memCfg, mode === 'dpo').totalBytes);
  const params = new Map([...policy.params].filter(([, v]) => v.trainable));
  const padId = tokenizer.padTokenId ?? tokenizer.eosTokenId ?? 0;
  const task =
    reference === null
      ? sftTask({ model: policy, train: pairs, eval: [], padId, params, evalBatchSize: batch, layout })
      : dpoTask({
          policy,
          reference: { kind: 'model', model: reference },
          train: pairs,
          eval: [],
          padId: tokenizer.padTokenId ?? tokenizer.eosTokenId ?? 0,
          loss: resolveLossOptions({ name: 'dpo', beta: 0.1 }),
          params,
          evalBatchSize: batch,
          logitStats: false,
          layout,
        });
  const steps: number[] = [];
  const t0 = performance.now();
  await runStage(
    task,
    {
      settings: {
        n_epochs: 1,
        max_steps: null,
        n_examples: null,
        batch_size: batch,
        gradient_accumulation_steps: 1,
        lr: 1e-6,
        warmup_steps: 0,
        warmup_ratio: 0,
        lr_scheduler: 'constant',
        optimizer: 'adamw',
        weight_decay: 0,
        max_grad_norm: null,
      },
      optimizer: { name: 'adamw', weightDecay: 0, beta1: 0.9, beta2: 0.999, epsilon: 1e-8, rmspropAlpha: 0.99, momentum: 0 },
      params,
      seed: 0,
      evalEvery: null,
      doFirstEval: false,
      logEvery: 1,
      saveSteps: null,
    },
    { log: (r) => void (typeof r.step_seconds === 'number' && steps.push(r.step_seconds)) },
  );
  const epoch = (performance.now() - t0) / 1000;
  if (engineSettings().profile) {
    // DPO_NATIVE_PROFILE=1: where the epoch's native time went, per native function (sgemm by shape), on stderr
    const rows = [...nativeProfile()].sort((x, y) => y[1].ms - x[1].ms);
    const total = rows.reduce((sum, [, e]) => sum + e.ms, 0);
    process.stderr.write(`epoch ${(epoch * 1000).toFixed(0)} ms; native ${total.toFixed(0)} ms\n`);
    const groups = new Map<string, { ms: number; calls: number }>();
    for (const [k, e] of rows) {
      const g = groups.get(k.split(' ')[0]!) ?? { ms: 0, calls: 0 };
      groups.set(k.split(' ')[0]!, { ms: g.ms + e.ms, calls: g.calls + e.calls });
    }
    const byGroup = [...groups].sort((x, y) => y[1].ms - x[1].ms);
    const backend = tf.backend() as { pool?: { stats(): unknown } };
    if (backend.pool) process.stderr.write(`buffer pool: ${JSON.stringify(backend.pool.stats())}\n`);
    process.stderr.write(`by function: ${byGroup.map(([k, e]) => `${k} ${e.ms.toFixed(0)} ms/${e.calls}`).join(', ')}\n`);
    for (const [k, e] of rows.slice(0, Number(process.env.BENCH_PROFILE_ROWS ?? 25)))
      process.stderr.write(`${e.ms.toFixed(0).padStart(8)} ms ${String(e.calls).padStart(6)} calls  ${k}\n`);
  }
  const sorted = steps.slice(1).sort((a, b) => a - b);
  console.log(
    JSON.stringify({
      engine: 'ours',
      mode,
      layout,
      model,
      pairs: pairs.length,
      max_length: maxLength,
      batch,
      epoch_s: +epoch.toFixed(3),
      median_step_s: +(sorted[Math.floor(sorted.length / 2)] ?? steps[0]!).toFixed(4),
      non_pad_tokens: nonPad,
      tokens_per_s: Math.round(nonPad / epoch),
      padding_fraction: layout === 'padded' ? +(1 - nonPad / paddedSlots).toFixed(3) : 0,
      peak_rss_mb: Math.round(process.resourceUsage().maxRSS / 1024),
      pool_mb: poolBytes === null ? null : Math.round(poolBytes / 2 ** 20),
      ...(flops
        ? {
            model_gflop: Object.fromEntries(Object.entries(flops).map(([k, v]) => [k, +(v / 1e9).toFixed(1)])),
          }
        : {}),
    }),
  );
}

function lastJson(out: string): Record<string, unknown> | null {
  const line = out
    .trim()
    .split('\n')
    .reverse()
    .find((l) => l.startsWith('{'));
  return line ? (JSON.parse(line) as Record<string, unknown>) : null;
}

const stat = (xs: number[]): string => {
  const s = [...xs].sort((a, b) => a - b);
  return `${s[0]!.toFixed(2)}/${s[Math.floor(s.length / 2)]!.toFixed(2)}/${s[s.length - 1]!.toFixed(2)}`;
};

async function main(): Promise<void> {
  if (child) return runChild(child);
  const dir = await modelDir();
  const results = new Map<string, Array<Record<string, number>>>();
  const failed = new Map<string, string>();
  for (let r = 0; r < runs; r++) {
    for (const layout of layouts) {
      const p = spawnSync(process.execPath, ['--import', 'tsx', import.meta.filename, ...args, '--child', layout], { encoding: 'utf8', maxBuffer: 1 << 26 });
      const j = lastJson(p.stdout);
      if (!j && p.signal) {
        // e.g. SIGKILL from the kernel's OOM killer: say so and go on with the other layouts
        const why = `killed by ${p.signal}${p.signal === 'SIGKILL' ? ' (out of memory?)' : ''}`;
        console.log(JSON.stringify({ engine: 'ours', layout, failed: why }));
        failed.set(layout, why);
        continue;
      }
      if (!j) throw new Error(`bench:real ${layout} failed:\n${p.stderr.slice(-3000)}`);
      console.log(JSON.stringify(j));
      results.set(layout, [...(results.get(layout) ?? []), j as Record<string, number>]);
    }
    if (peer === 'trl') {
      const rowsFile = join(tmpdir(), `bench-real-rows-${process.pid}.jsonl`);
      writeFileSync(
        rowsFile,
        rows()
          .map((x) => JSON.stringify(x))
          .join('\n') + '\n',
      );
      const steps = Math.ceil(nPairs / batch);
      const py = process.env.PEER_PYTHON ?? '/work/peer-venv/bin/python';
      const p = spawnSync(
        py,
        [
          join(SHARED, 'bench/trl_dpo_peer.py'),
          '--model',
          dir,
          '--data',
          rowsFile,
          '--pairs',
          String(batch),
          '--steps',
          String(steps),
          '--max-length',
          String(maxLength),
        ],
        {
          encoding: 'utf8',
          maxBuffer: 1 << 26,
          env: { ...process.env, TMPDIR: tmpdir() },
        },
      );
      const j = lastJson(p.stdout);
      if (!j) throw new Error(`TRL peer failed:\n${p.stderr.slice(-3000)}`);
      const st = j.steps as number[];
      const row = {
        ...j,
        epoch_s: +st.reduce((a, b) => a + b, 0).toFixed(3),
        tokens_per_s: j.non_pad_tokens ? Math.round((j.non_pad_tokens as number) / st.reduce((a, b) => a + b, 0)) : null,
      };
      console.log(JSON.stringify(row));
      results.set('trl', [...(results.get('trl') ?? []), row as Record<string, number>]);
    }
  }
  mkdirSync(join(tmpdir()), { recursive: true });
  console.log(
    `\n${mode.toUpperCase()} ${model}, ${nPairs} pairs, max_length ${maxLength}, batch ${batch}: min/median/max over ${runs} run(s) (a shared, loaded machine: noisy)`,
  );
  console.log('layout          epoch s            median step s      tokens/s       padding  peak RSS MB  GFLOP/s  vs TRL epoch');
  const trl = results.get('trl');
  // the FLOP model's GFLOP per layout (any child's: the pairs are the same); TRL's work is the padded layout's
  const gflop = [...results.values()].flat().find((x) => x.model_gflop)?.model_gflop as unknown as Record<string, number> | undefined;
  for (const [layout, rs] of results) {
    const ep = rs.map((x) => x.epoch_s!);
    const ratio = trl && layout !== 'trl' ? `${(Math.min(...ep) / Math.min(...trl.map((x) => x.epoch_s!))).toFixed(2)}x` : '';
    const g = gflop?.[layout === 'trl' ? 'padded_full_vocab' : layout];
    const rate = g ? (g / Math.min(...ep)).toFixed(0) : '';
    console.log(
      `${layout.padEnd(15)} ${stat(ep).padEnd(18)} ${stat(rs.map((x) => x.median_step_s!)).padEnd(18)} ${String(Math.max(...rs.map((x) => x.tokens_per_s ?? 0))).padEnd(14)} ${String(rs[0]!.padding_fraction ?? '').padEnd(8)} ${String(Math.max(...rs.map((x) => x.peak_rss_mb!))).padEnd(12)} ${rate.padEnd(8)} ${ratio}`,
    );
  }
  for (const [layout, why] of failed) console.log(`${layout.padEnd(15)} failed: ${why}`);
  if (gflop) {
    const ours = ['padded', 'padding_free', 'shared_prompt'] as const;
    const parts = ours.map((l) => `${l} ${gflop[l]}`).join(', ');
    const eq = ours.map((l) => `${l} ${(gflop[l]! / gflop.padded_full_vocab!).toFixed(2)}x`).join(', ');
    console.log(
      `FLOP model (bench/dpo-flops.ts): ours ${parts} GFLOP, TRL ${gflop.padded_full_vocab} (padded, full-vocabulary logits, on our tokenization); at equal FLOP rates ours / TRL would be ${eq}`,
    );
  }
}

await main();
