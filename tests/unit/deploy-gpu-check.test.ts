/**
 * The worker's start-up GPU check (src/worker/gpu-check.ts): nvidia-smi parsing and probing (a stand-in
 * nvidia-smi script run as a real process), and the GPU-worker decision table.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { chmod, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { checkWorkerBackend, GpuCheckError, parseNvidiaSmi, probeGpus, runGpuCheck, type GpuDevice, type BackendSummary } from '../../src/worker/gpu-check.js';

const gpuBackend: BackendSummary = { name: 'tensorflow', package: '@tensorflow/tfjs-node-gpu', gpu: true };
const cpuBackend: BackendSummary = { name: 'wasm', package: '@tensorflow/tfjs-backend-wasm', gpu: false };
const a100: GpuDevice = { index: 0, name: 'NVIDIA A100-SXM4-40GB', memoryMiB: 40960, driverVersion: '535.104.05', computeCapability: '8.0' };
const h100: GpuDevice = { index: 0, name: 'NVIDIA H100 80GB HBM3', memoryMiB: 81559, driverVersion: '550.54.15', computeCapability: '9.0' };

let dir = '';
before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'dpo-gpucheck-'));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function script(name: string, body: string): Promise<string> {
  const p = join(dir, name);
  await writeFile(p, `#!/bin/sh\n${body}\n`);
  await chmod(p, 0o755);
  return p;
}

describe('nvidia-smi probing', () => {
  it('parses the CSV query output, with and without compute capability', () => {
    const gpus = parseNvidiaSmi('0, NVIDIA H100 80GB HBM3, 81559, 550.54.15, 9.0\n1, Tesla T4, 15360, 470.82.01\n\ngarbage\n');
    assert.deepEqual(gpus, [
      { index: 0, name: 'NVIDIA H100 80GB HBM3', memoryMiB: 81559, driverVersion: '550.54.15', computeCapability: '9.0' },
      { index: 1, name: 'Tesla T4', memoryMiB: 15360, driverVersion: '470.82.01' },
    ]);
  });

  it('runs nvidia-smi and retries without compute_cap on drivers that do not know it', async () => {
    const modern = await script('smi-modern', 'echo "0, NVIDIA A100-SXM4-40GB, 40960, 535.104.05, 8.0"');
    assert.deepEqual(await probeGpus({ command: modern }), [a100]);
    const old = await script(
      'smi-old',
      'case "$1" in *compute_cap*) echo "Field compute_cap is not a valid field" >&2; exit 2;; esac\necho "0, Tesla T4, 15360, 450.80.02"',
    );
    assert.deepEqual(await probeGpus({ command: old }), [{ index: 0, name: 'Tesla T4', memoryMiB: 15360, driverVersion: '450.80.02' }]);
  });

  it('returns no GPUs when nvidia-smi is missing or fails', async () => {
    assert.deepEqual(await probeGpus({ command: join(dir, 'no-such-nvidia-smi') }), []);
    const failing = await script('smi-fail', 'echo "NVIDIA-SMI has failed because it could not communicate with the NVIDIA driver" >&2; exit 9');
    assert.deepEqual(await probeGpus({ command: failing }), []);
  });
});

describe('GPU worker decision', () => {
  it('a CPU worker on wasm starts without warnings', () => {
    const r = checkWorkerBackend(cpuBackend, [], {});
    assert.equal(r.gpuWorker, false);
    assert.equal(r.cpuFallback, false);
    assert.deepEqual(r.warnings, []);
    assert.match(r.summary, /wasm/);
  });

  it('a GPU worker on tfjs-node-gpu with a visible GPU starts and names the GPU', () => {
    const r = checkWorkerBackend(gpuBackend, [a100], { WORKER_GPU: 'true', CUDA_CACHE_PATH: '/cache' });
    assert.equal(r.gpuWorker, true);
    assert.equal(r.cpuFallback, false);
    assert.match(r.summary, /A100/);
    assert.deepEqual(r.warnings, []);
  });

  it('a GPU worker refuses the CPU backend unless ALLOW_CPU_FALLBACK=true', () => {
    assert.throws(
      () => checkWorkerBackend(cpuBackend, [a100], { WORKER_GPU: 'true' }),
      (err: unknown) => err instanceof GpuCheckError && err.code === 'GPU_BACKEND_UNAVAILABLE' && /ALLOW_CPU_FALLBACK/.test(err.message),
    );
    assert.throws(() => checkWorkerBackend(cpuBackend, [], { TFJS_BACKEND: 'tensorflow-gpu' }), GpuCheckError);
    const r = checkWorkerBackend(cpuBackend, [], { WORKER_GPU: '1', ALLOW_CPU_FALLBACK: 'true' });
    assert.equal(r.cpuFallback, true);
    assert.equal(r.warnings.length, 1);
    assert.match(r.warnings[0], /ALLOW_CPU_FALLBACK/);
  });

  it('tfjs-node-gpu without a visible GPU counts as the CPU (silent libtensorflow fallback)', () => {
    assert.throws(() => checkWorkerBackend(gpuBackend, [], { WORKER_GPU: 'true' }), /--gpus all/);
  });

  it('warns about PTX JIT on compute capability 9.0 without CUDA_CACHE_PATH, and about several GPUs', () => {
    const r = checkWorkerBackend(gpuBackend, [h100, { ...h100, index: 1 }], { WORKER_GPU: 'true' });
    assert.equal(r.warnings.length, 2);
    assert.match(r.warnings[0], /CUDA_CACHE_PATH/);
    assert.match(r.warnings[1], /CUDA_VISIBLE_DEVICES/);
    const cached = checkWorkerBackend(gpuBackend, [h100], { WORKER_GPU: 'true', CUDA_CACHE_PATH: '/var/cache/cuda' });
    assert.deepEqual(cached.warnings, []);
  });

  it('runGpuCheck probes, decides and returns the report', async () => {
    const smi = await script('smi-h100', 'echo "0, NVIDIA H100 80GB HBM3, 81559, 550.54.15, 9.0"');
    const env = { NVIDIA_SMI: smi, WORKER_GPU: 'true' };
    const r = await runGpuCheck(gpuBackend, pino({ level: 'silent' }), env);
    assert.deepEqual(r.gpus, [h100]);
    assert.equal(r.cpuFallback, false);
    assert.equal(r.warnings.length, 1);
  });
});
