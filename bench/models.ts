/**
 * `npm run bench:models [-- --rows smollm2-135m,qwen2.5-0.5b-lora,qwen2.5-1.5b-lora] [--sft-steps 1]
 *  [--dpo-steps 3] [--pairs 4] [--max-length 512] [--no-trl] [--json]`
 *
 * Real model shapes on this machine: builds random-weight Hugging Face checkpoints of each row's exact shape
 * (config.json + BF16 model.safetensors + the GPT-2 tokenizer from ../shared/tokenizers/gpt2) in
 * `<tmpdir>/dpo-bench-models/`, runs `dpo train` (SFT then DPO on HH-RLHF pairs, `pairs` x `max-length`
 * tokens per step) in a child process under /usr/bin/time, and prints peak RSS and s/step (median and min
 * of the DPO steps after the first, from metrics.jsonl `step_seconds`). Where ../peer-venv has TRL + PEFT
 * (../shared/bench/README.md), TRL's DPOTrainer runs on the same checkpoint and pairs in the same run
 * (../shared/bench/trl_dpo_peer.py) and the ratios are printed. Not a test: numbers depend on the machine's load.
 *
 * Rows (the issue's): SmolLM2-135M full fine-tuning; Qwen2.5-0.5B shape (q/k/v biases, tied) with LoRA r=16 on
 * all linear layers; Qwen2.5-1.5B shape with LoRA r=16 on all linear layers. Memory settings per row below
 * (gradient checkpointing, BF16 frozen weights).
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { toHFConfig } from '../src/training/models/config.js';
import { llamaShapes } from '../src/training/models/llama.js';
import { writeSafetensors } from '../src/training/models/safetensors.js';
import type { ModelConfig } from '../src/training/types.js';

export const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
/** `../<name>` beside the checkout (or beside its worktree folder). */
export const beside = (name: string): string =>
  [path.resolve(root, '..', name), path.resolve(root, '..', '..', name)].find((p) => fs.existsSync(p)) ?? path.resolve(root, '..', name);
export const shared = beside('shared');
const peerPython = path.join(beside('peer-venv'), 'bin', 'python');

const llama = (o: Partial<ModelConfig>): ModelConfig => ({
  architecture: 'llama',
  modelType: 'llama',
  vocabSize: 50257,
  hiddenSize: 576,
  intermediateSize: 1536,
  numLayers: 30,
  numHeads: 9,
  numKvHeads: 3,
  headDim: 64,
  maxPositionEmbeddings: 8192,
  normEps: 1e-5,
  ropeTheta: 100000,
  ropeScaling: null,
  tieWordEmbeddings: true,
  attentionBias: false,
  qkNorm: false,
  bosTokenId: 50256,
  eosTokenId: 50256,
  padTokenId: null,
  ...o,
});

export interface Row {
  name: string;
  model: ModelConfig;
  /** our overrides (memory settings, LoRA) */
  overrides: string[];
  /** trl_dpo_peer.py flags */
  peer: string[];
}

export const LORA = ['lora.enabled=true', 'lora.r=16', 'lora.alpha=32', 'lora.target_modules=all-linear'];
/** The rows of the issue (`--rows` names), shared with bench/webhook-models.ts. */
export const ROWS: Row[] = [
  { name: 'smollm2-135m', model: llama({}), overrides: ['gradient_checkpointing=true', 'frozen_weights_dtype=bfloat16'], peer: [] },
  {
    name: 'qwen2.5-0.5b-lora',
    model: llama({
      modelType: 'qwen2',
      vocabSize: 151936,
      hiddenSize: 896,
      intermediateSize: 4864,
      numLayers: 24,
      numHeads: 14,
      numKvHeads: 2,
      attentionBias: true,
      ropeTheta: 1000000,
      normEps: 1e-6,
    }),
    overrides: [...LORA, 'gradient_checkpointing=true', 'frozen_weights_dtype=bfloat16'],
    peer: ['--lora', '--lora-r', '16'],
  },
  {
    name: 'qwen2.5-1.5b-lora',
    model: llama({
      modelType: 'qwen2',
      vocabSize: 151936,
      hiddenSize: 1536,
      intermediateSize: 8960,
      numLayers: 28,
      numHeads: 12,
      numKvHeads: 2,
      headDim: 128,
      attentionBias: true,
      ropeTheta: 1000000,
      normEps: 1e-6,
    }),
    overrides: [...LORA, 'gradient_checkpointing=true', 'frozen_weights_dtype=bfloat16'],
    peer: ['--lora', '--lora-r', '16', '--gradient-checkpointing'],
  },
];

/**
 * Write a random-weight checkpoint of `c` (BF16, normal-ish values of std 0.02 from an LCG) unless present.
 * @returns the Hugging Face directory `<tmpdir>/dpo-bench-models/<name>` (config.json, model.safetensors, GPT-2 tokenizer)
 */
export function buildCheckpoint(name: string, c: ModelConfig): string {
  const dir = path.join(os.tmpdir(), 'dpo-bench-models', name);
  const weights = path.join(dir, 'model.safetensors');
  if (fs.existsSync(weights) && fs.existsSync(path.join(dir, 'config.json'))) return dir;
  fs.mkdirSync(dir, { recursive: true });
  let s = 0x9e3779b9;
  const uniform = (): number => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32 - 0.5;
  };
  const spec = llamaShapes(c);
  const tensors = spec.map(([n, shape]) => ({
    name: n,
    shape,
    data: (): Float32Array => {
      const size = shape.reduce((a, b) => a * b, 1);
      const out = new Float32Array(size);
      if (shape.length === 1) out.fill(n.includes('norm') ? 1 : 0);
      else for (let i = 0; i < size; i++) out[i] = uniform() * 0.0693; // uniform on [-a, a] with std 0.02
      return out;
    },
  }));
  writeSafetensors(`${weights}.tmp`, tensors, 'BF16');
  fs.renameSync(`${weights}.tmp`, weights);
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(toHFConfig(c, 'BF16'), null, 2));
  for (const f of fs.readdirSync(path.join(shared, 'tokenizers', 'gpt2'))) fs.copyFileSync(path.join(shared, 'tokenizers', 'gpt2', f), path.join(dir, f));
  return dir;
}

function stats(xs: number[]): { median: number; min: number } {
  const v = [...xs].sort((a, b) => a - b);
  return { median: v.length ? v[Math.floor((v.length - 1) / 2)]! : Number.NaN, min: v.length ? v[0]! : Number.NaN };
}

/** `dpo train` on the row: DPO step seconds (after the first), SFT step seconds, peak RSS (MB). */
function runOurs(row: Row, dir: string, a: Args): { dpo: number[]; sft: number[]; peakRssMb: number; ok: boolean; error?: string } {
  const out = path.join(os.tmpdir(), 'dpo-bench-models', `${row.name}-run`);
  fs.rmSync(out, { recursive: true, force: true });
  const args = [
    path.join(root, 'bin', 'dpo.js'),
    'train',
    `model.name_or_path=${dir}`,
    'datasets=[hh]',
    `batch_size=${a.pairs}`,
    `eval_batch_size=${a.pairs}`,
    `max_length=${a.maxLength}`,
    `max_prompt_length=${Math.floor(a.maxLength / 2)}`,
    `sft.max_steps=${a.sftSteps}`,
    `max_steps=${a.dpoSteps}`,
    'n_eval_examples=4',
    'sample_during_eval=false',
    'log_every=1',
    'log_logit_stats=false',
    'progress_bar=false',
    'tensorboard=false',
    'plot=false',
    `output_dir=${out}`,
    ...row.overrides,
  ];
  const env = { ...process.env, HH_RLHF_PATH: process.env.HH_RLHF_PATH ?? path.join(shared, 'data', 'hh-rlhf', 'harmless-base-test.jsonl.gz') };
  const r = spawnSync('/usr/bin/time', ['-f', 'MAXRSS_KB=%M', process.execPath, ...args], { cwd: root, encoding: 'utf8', maxBuffer: 1 << 28, env });
  const rss = Number(/MAXRSS_KB=(\d+)/.exec(r.stderr)?.[1] ?? Number.NaN) / 1024;
  const lines = fs.existsSync(path.join(out, 'metrics.jsonl')) ? fs.readFileSync(path.join(out, 'metrics.jsonl'), 'utf8').trim().split('\n') : [];
  const rows = lines.filter(Boolean).map((l) => JSON.parse(l) as { stage: string; step_seconds?: number });
  const secs = (stage: string): number[] => rows.filter((x) => x.stage === stage && typeof x.step_seconds === 'number').map((x) => x.step_seconds!);
  const dpo = secs('dpo');
  return { dpo: dpo.slice(1), sft: secs('sft'), peakRssMb: Math.round(rss), ok: r.status === 0, ...(r.status === 0 ? {} : { error: r.stderr.slice(-600) }) };
}

function runTrl(row: Row, dir: string, a: Args): { median: number; min: number; peakRssMb: number } | { error: string } {
  const script = path.join(shared, 'bench', 'trl_dpo_peer.py');
  const r = spawnSync(
    peerPython,
    [script, '--model', dir, '--data', 'hh', '--pairs', String(a.pairs), '--max-length', String(a.maxLength), '--steps', String(a.dpoSteps), ...row.peer],
    {
      cwd: root,
      encoding: 'utf8',
      maxBuffer: 1 << 28,
    },
  );
  const line = r.stdout
    .trim()
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .pop();
  if (r.status !== 0 || !line) return { error: r.stderr.slice(-600) };
  const d = JSON.parse(line) as { steps: number[]; peak_rss_mb: number };
  return { ...stats(d.steps.slice(1)), peakRssMb: d.peak_rss_mb };
}

/** The row selection and step counts both row benchmarks take (this one and bench/webhook-models.ts). */
export interface RowArgs {
  rows: string[];
  sftSteps: number;
  dpoSteps: number;
  pairs: number;
  maxLength: number;
}

/**
 * `--rows a,b --sft-steps N --dpo-steps N --pairs N --max-length N` over `defaults`, plus the value-less
 * `flags` a script adds (each a callback).
 * @throws Error naming an unknown argument (and `script`), a value that is not a positive integer, or an unknown row
 */
export function parseRowArgs(argv: string[], defaults: RowArgs, flags: Record<string, () => void> = {}, script = 'bench/models.ts'): RowArgs {
  const a: RowArgs = { ...defaults, rows: [...defaults.rows] };
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i]!;
    const int = (): number => {
      const x = argv[++i];
      const n = Number(x);
      if (x === undefined || !Number.isInteger(n) || n < 1) throw new Error(`${k} needs a positive integer`);
      return n;
    };
    if (k === '--rows') {
      const x = argv[++i];
      if (x === undefined) throw new Error('--rows needs a value');
      a.rows = x.split(',');
    } else if (k === '--sft-steps') a.sftSteps = int();
    else if (k === '--dpo-steps') a.dpoSteps = int();
    else if (k === '--pairs') a.pairs = int();
    else if (k === '--max-length') a.maxLength = int();
    else if (Object.hasOwn(flags, k)) flags[k]!();
    else throw new Error(`unknown argument ${k}; see ${script}`);
  }
  for (const r of a.rows) if (!ROWS.some((x) => x.name === r)) throw new Error(`--rows: unknown row ${r}; rows: ${ROWS.map((x) => x.name).join(', ')}`);
  return a;
}

interface Args extends RowArgs {
  trl: boolean;
  json: boolean;
}

function parseArgs(argv: string[]): Args {
  const extra = { trl: true, json: false };
  const rows = parseRowArgs(
    argv,
    { rows: ROWS.map((r) => r.name), sftSteps: 1, dpoSteps: 3, pairs: 4, maxLength: 512 },
    {
      '--no-trl': () => {
        extra.trl = false;
      },
      '--json': () => {
        extra.json = true;
      },
    },
  );
  if (rows.dpoSteps < 2) throw new Error('--dpo-steps must be >= 2 (the first step is a warm-up)');
  return { ...rows, ...extra };
}

function main(): void {
  const a = parseArgs(process.argv.slice(2));
  const peerReady = a.trl && fs.existsSync(peerPython) && spawnSync(peerPython, ['-c', 'import trl, peft'], { encoding: 'utf8' }).status === 0;
  if (a.trl && !peerReady) process.stderr.write(`TRL peer not available (${peerPython} with trl + peft; see ../shared/bench/README.md): ours only\n`);
  for (const name of a.rows) {
    const row = ROWS.find((r) => r.name === name)!;
    const dir = buildCheckpoint(row.name, row.model);
    const ours = runOurs(row, dir, a);
    const o = stats(ours.dpo);
    const peer = peerReady ? runTrl(row, dir, a) : null;
    const result = {
      row: row.name,
      pairs: a.pairs,
      max_length: a.maxLength,
      ok: ours.ok,
      ours: { dpo_s_per_step: o, sft_s: ours.sft, peak_rss_mb: ours.peakRssMb, settings: row.overrides },
      trl: peer,
      ratio_s_per_step: peer && 'median' in peer ? { median: o.median / peer.median, min: o.min / peer.min } : null,
      ratio_rss: peer && 'median' in peer ? ours.peakRssMb / peer.peakRssMb : null,
      ...(ours.error ? { error: ours.error } : {}),
    };
    if (a.json) process.stdout.write(`${JSON.stringify(result)}\n`);
    else {
      const p =
        peer && 'median' in peer
          ? ` | TRL ${peer.median.toFixed(1)} s/step, ${peer.peakRssMb} MB | ratio ${result.ratio_s_per_step!.median.toFixed(2)} s, ${result.ratio_rss!.toFixed(2)} RSS`
          : '';
      process.stdout.write(
        `${row.name}: ours ${o.median.toFixed(1)} s/step (min ${o.min.toFixed(1)}), peak RSS ${ours.peakRssMb} MB${ours.ok ? '' : ' FAILED'}${p}\n`,
      );
      if (ours.error) process.stdout.write(`${ours.error}\n`);
    }
  }
}

// run only as the entry script (bench/webhook-models.ts imports the rows and the checkpoint builder)
if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) main();
