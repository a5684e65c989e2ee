/**
 * Generation throughput of online DPO's sampler: `n` completions of one prompt sampled as one batch with the
 * KV cache (src/training/online/sampler.ts) against `n` sequential single-row generate() calls, on a
 * Llama-architecture preset (random weights; the real stories260K when --preset stories260K-real).
 * Every completion runs the full `--tokens` (no stop token), so both sides generate the same number of tokens.
 *
 *   npm run bench:online -- --preset stories260K --n 1,2,4,8 --tokens 32 --repeats 3 [--backend wasm]
 *
 * Prints one JSON line per n: {preset, backend, n, tokens, batched_tokens_per_s (median, min, max over the
 * repeats), sequential_tokens_per_s (median), speedup}.
 */
import { initBackend, type BackendRequest } from '../src/training/engine/backend.js';
import { createModel, loadPretrained, type GenerativeLM } from '../src/training/models/index.js';
import { sampleCompletions } from '../src/training/online/sampler.js';
import { PRESETS } from './dpo-step.js';

function arg(name: string, fallback: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && process.argv[i + 1] ? process.argv[i + 1]! : fallback;
}

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

const backend = await initBackend(arg('backend', 'wasm') as BackendRequest);
const presetName = arg('preset', 'stories260K');
const ns = arg('n', '1,2,4,8').split(',').map(Number);
const tokens = Number(arg('tokens', '32'));
const repeats = Number(arg('repeats', '3'));

let model: GenerativeLM;
if (presetName === 'stories260K-real') model = (await loadPretrained('stories260K')).model;
else {
  const p = PRESETS[presetName];
  if (!p) throw new Error(`unknown preset ${presetName}; one of ${Object.keys(PRESETS).join(', ')}, stories260K-real`);
  model = createModel({
    architecture: 'llama',
    modelType: 'llama',
    vocabSize: p.vocab,
    hiddenSize: p.dim,
    intermediateSize: p.hidden,
    numLayers: p.layers,
    numHeads: p.heads,
    numKvHeads: p.kvHeads,
    headDim: p.dim / p.heads,
    maxPositionEmbeddings: 512,
    normEps: 1e-5,
    ropeTheta: 10000,
    tieWordEmbeddings: true,
    attentionBias: false,
    qkNorm: false,
    bosTokenId: 1,
    eosTokenId: 2,
    padTokenId: null,
  });
}
const prompt = Array.from({ length: 24 }, (_, i) => 1 + ((i * 37) % (model.config.vocabSize - 1)));
const settings = { maxNewTokens: tokens, doSample: true, temperature: 1, topP: 1, seed: 0 };
// warm-up (kernel compilation, caches)
sampleCompletions(model, prompt, [], { ...settings, n: 2, maxNewTokens: 4 });
for (const n of ns) {
  const batched: number[] = [];
  const sequential: number[] = [];
  for (let r = 0; r < repeats; r++) {
    const b = sampleCompletions(model, prompt, [], { ...settings, n, seed: r });
    batched.push(b.tokens / b.seconds);
    let tok = 0;
    let sec = 0;
    for (let k = 0; k < n; k++) {
      const s = sampleCompletions(model, prompt, [], { ...settings, n: 1, seed: r * 1000 + k });
      tok += s.tokens;
      sec += s.seconds;
    }
    sequential.push(tok / sec);
  }
  const out = {
    preset: presetName,
    backend: backend.name,
    n,
    tokens,
    batched_tokens_per_s: { median: median(batched), min: Math.min(...batched), max: Math.max(...batched) },
    sequential_tokens_per_s: median(sequential),
    speedup: median(batched) / median(sequential),
  };
  process.stdout.write(`${JSON.stringify(out)}\n`);
}
model.dispose();
