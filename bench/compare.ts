/**
 * Side-by-side timing of our training step and the PyTorch peer's on this machine.
 *
 *   npm run bench:compare -- [--preset stories15M] [--pairs 4] [--seq 128] [--steps S] [--runs 3]
 *                            [--mode dpo|sft|both] [--threads N] [--peer PATH/torch_dpo_step.py]
 *
 * Each run executes the peer (`/usr/bin/python3 torch_dpo_step.py`, or bench/torch_sft_step.py for SFT) and
 * then ours (bench/dpo-step.ts), each in its own process, back to back, so both see the same machine load;
 * the ratio ours/peer is taken per run and summarised as min/median/max over the runs. The peer runs only
 * when python3 can import torch (Debian: apt-get install -y python3-torch libopenblas0-pthread); without it
 * our numbers are printed alone. The peer script is found at --peer, env PEER_DPO_SCRIPT,
 * ../shared/bench/torch_dpo_step.py (beside the repository) or /work/shared/bench/torch_dpo_step.py.
 * Output: one line per run, then one JSON summary line per mode.
 * --steps defaults to 3 timed steps, 20 for stories260K (its steps take tens of milliseconds: 3 would time
 * mostly warm-up jitter, on both sides).
 */
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '..');

interface Args {
  preset: string;
  pairs: number;
  seq: number;
  steps: number;
  runs: number;
  modes: Array<'dpo' | 'sft'>;
  threads?: number;
  peer?: string;
  extra: string[];
}

function parse(argv: string[]): Args {
  const a: Args = { preset: 'stories15M', pairs: 4, seq: 128, steps: NaN, runs: 3, modes: ['dpo', 'sft'], extra: [] };
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i]!;
    const v = (): string => argv[++i] ?? '';
    if (k === '--preset') a.preset = v();
    else if (k === '--pairs') a.pairs = Number(v());
    else if (k === '--seq') a.seq = Number(v());
    else if (k === '--steps') a.steps = Number(v());
    else if (k === '--runs') a.runs = Number(v());
    else if (k === '--mode') {
      const m = v();
      a.modes = m === 'both' ? ['dpo', 'sft'] : [m as 'dpo' | 'sft'];
    } else if (k === '--threads') a.threads = Number(v());
    else if (k === '--peer') a.peer = v();
    else a.extra.push(k); // passed to ours (e.g. --no-row-mask)
  }
  if (Number.isNaN(a.steps)) a.steps = a.preset === 'stories260K' ? 20 : 3;
  return a;
}

function findPeer(a: Args): string | null {
  const cands = [a.peer, process.env.PEER_DPO_SCRIPT, path.resolve(root, '../shared/bench/torch_dpo_step.py'), '/work/shared/bench/torch_dpo_step.py'];
  for (const c of cands) if (c && existsSync(c)) return c;
  return null;
}

function torchAvailable(): boolean {
  const r = spawnSync('/usr/bin/python3', ['-c', 'import torch'], { encoding: 'utf8' });
  return r.status === 0;
}

function lastJson(out: string): Record<string, unknown> {
  const line = out
    .trim()
    .split('\n')
    .reverse()
    .find((l) => l.startsWith('{'));
  if (!line) throw new Error(`no JSON line in output:\n${out.slice(-2000)}`);
  return JSON.parse(line) as Record<string, unknown>;
}

function runPeer(a: Args, mode: 'dpo' | 'sft', peer: string): Record<string, unknown> {
  const common = ['--preset', a.preset, '--pairs', String(a.pairs), '--seq', String(a.seq), '--steps', String(a.steps)];
  const args = mode === 'dpo' ? [peer, ...common] : [path.join(here, 'torch_sft_step.py'), '--peer-dir', path.dirname(peer), ...common];
  const r = spawnSync('/usr/bin/python3', args, { encoding: 'utf8', maxBuffer: 1 << 24 });
  if (r.status !== 0) throw new Error(`peer failed (${r.status}): ${r.stderr.slice(-2000)}`);
  return lastJson(r.stdout);
}

function runOurs(a: Args, mode: 'dpo' | 'sft'): Record<string, unknown> {
  const args = [
    '--import',
    'tsx',
    path.join(here, 'dpo-step.ts'),
    '--preset',
    a.preset,
    '--pairs',
    String(a.pairs),
    '--seq',
    String(a.seq),
    '--steps',
    String(a.steps),
    '--mode',
    mode,
    '--json',
    ...a.extra,
  ];
  if (a.threads) args.push('--threads', String(a.threads));
  const r = spawnSync(process.execPath, args, { encoding: 'utf8', cwd: root, maxBuffer: 1 << 24 });
  if (r.status !== 0) throw new Error(`ours failed (${r.status}): ${r.stderr.slice(-2000)}`);
  return lastJson(r.stdout);
}

const stats = (xs: number[]): { min: number; median: number; max: number } => {
  const s = [...xs].sort((x, y) => x - y);
  const m = s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
  return { min: +s[0]!.toFixed(3), median: +m.toFixed(3), max: +s[s.length - 1]!.toFixed(3) };
};

const a = parse(process.argv.slice(2));
const peer = findPeer(a);
const havePeer = peer !== null && torchAvailable();
if (!havePeer)
  console.log(
    `peer not run: ${peer ? 'python3 cannot import torch (apt-get install -y python3-torch libopenblas0-pthread)' : 'torch_dpo_step.py not found (--peer PATH)'}`,
  );
for (const mode of a.modes) {
  const ratios: number[] = [];
  const oursT: number[] = [];
  const peerT: number[] = [];
  let last: Record<string, unknown> = {};
  for (let r = 0; r < a.runs; r++) {
    const p = havePeer ? runPeer(a, mode, peer!) : null;
    const o = runOurs(a, mode);
    last = o;
    const os = Number(o.median_step_s);
    oursT.push(os);
    let line = `${mode} run ${r + 1}/${a.runs}: ours ${(os * 1000).toFixed(0)} ms/step (${o.backend}x${o.threads}, ${o.gflops} GFLOP/s peer-equivalent)`;
    if (p) {
      const ps = Number(p.median_step_s);
      peerT.push(ps);
      ratios.push(os / ps);
      line += `, pytorch ${(ps * 1000).toFixed(0)} ms/step (${p.threads} thread${p.threads === 1 ? '' : 's'}), ratio ${(os / ps).toFixed(2)}`;
    }
    console.log(line);
  }
  const summary: Record<string, unknown> = {
    mode,
    preset: a.preset,
    pairs: a.pairs,
    seq: a.seq,
    runs: a.runs,
    ours_step_s: stats(oursT),
    ours_gflops: last.gflops,
    backend: last.backend,
    threads: last.threads,
    peak_rss_mb: last.peak_rss_mb,
  };
  if (ratios.length) {
    summary.pytorch_step_s = stats(peerT);
    summary.ratio_ours_over_pytorch = stats(ratios);
  }
  console.log(JSON.stringify(summary));
}
process.exit(0);
