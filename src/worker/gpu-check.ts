/**
 * Start-up check of a worker process: which tfjs backend runs and which NVIDIA GPUs are visible, and
 * whether that is acceptable for this worker.
 *
 * A worker is a *GPU worker* when `WORKER_GPU=true` (Dockerfile.gpu sets it) or `TFJS_BACKEND=tensorflow-gpu`.
 * A GPU worker refuses to start when it would train on the CPU, i.e. when the backend is not the
 * tfjs-node-gpu one, or tfjs-node-gpu loaded but `nvidia-smi` sees no GPU (libtensorflow then silently runs on
 * the CPU: tensorflow/tfjs issues #8362 and #8269), unless `ALLOW_CPU_FALLBACK=true`, which logs a warning
 * instead. Hopper-class GPUs (compute capability >= 9.0) JIT-compile libtensorflow 2.9's PTX at first use, so
 * the check warns when `CUDA_CACHE_PATH` is not set (the compose file mounts a volume there).
 *
 * Usage (worker entry, after `initBackend()`):
 *   const report = await runGpuCheck(await initBackend(), logger);   // throws GpuCheckError
 */
import { execFile } from 'node:child_process';
import type { Logger } from 'pino';
import type { BackendInfo } from '../training/engine/backend.js';

/** The fields of `initBackend()`'s result this check reads. */
export type BackendSummary = Pick<BackendInfo, 'name' | 'package' | 'gpu'>;

/** One GPU as `nvidia-smi` reports it. Memory in MiB; compute capability like `8.0` (undefined on old drivers). */
export interface GpuDevice {
  index: number;
  name: string;
  memoryMiB: number;
  driverVersion: string;
  computeCapability?: string;
}

/** What the check decided. `warnings` are logged at warn level; `summary` at info. */
export interface GpuCheckResult {
  gpuWorker: boolean;
  backend: BackendSummary;
  gpus: GpuDevice[];
  /** true when a GPU worker runs on the CPU because ALLOW_CPU_FALLBACK=true. */
  cpuFallback: boolean;
  summary: string;
  warnings: string[];
}

/** A GPU worker that would run on the CPU; the message names the fix. */
export class GpuCheckError extends Error {
  readonly code = 'GPU_BACKEND_UNAVAILABLE';
  override readonly name = 'GpuCheckError';
}

const truthy = (v: string | undefined): boolean => ['1', 'true', 'yes', 'on'].includes((v ?? '').trim().toLowerCase());

/**
 * Parse `nvidia-smi --query-gpu=index,name,memory.total,driver_version[,compute_cap] --format=csv,noheader,nounits`.
 * Lines that do not parse are skipped.
 */
export function parseNvidiaSmi(csv: string): GpuDevice[] {
  const out: GpuDevice[] = [];
  for (const line of csv.split(/\r?\n/)) {
    const cols = line.split(',').map((c) => c.trim());
    if (cols.length < 4 || !/^\d+$/.test(cols[0])) continue;
    const cc = cols[4];
    out.push({
      index: Number(cols[0]),
      name: cols[1],
      memoryMiB: Number(cols[2]) || 0,
      driverVersion: cols[3],
      ...(cc && /^\d+\.\d+$/.test(cc) ? { computeCapability: cc } : {}),
    });
  }
  return out;
}

function run(cmd: string, args: string[], timeoutMs: number): Promise<string | undefined> {
  return new Promise((resolve) => {
    execFile(cmd, args, { timeout: timeoutMs, encoding: 'utf8' }, (err, stdout) => resolve(err ? undefined : stdout));
  });
}

/**
 * List the GPUs visible to this process with `nvidia-smi` (on PATH, or `NVIDIA_SMI`). Returns [] when the
 * tool is missing or fails (no GPU, no driver, container started without `--gpus`). Never throws.
 */
export async function probeGpus(opts: { command?: string; timeoutMs?: number } = {}): Promise<GpuDevice[]> {
  const cmd = opts.command ?? process.env.NVIDIA_SMI ?? 'nvidia-smi';
  const timeout = opts.timeoutMs ?? 10_000;
  const base = 'index,name,memory.total,driver_version';
  // compute_cap needs a driver from 2021 or later; retry without it on older ones.
  const csv =
    (await run(cmd, [`--query-gpu=${base},compute_cap`, '--format=csv,noheader,nounits'], timeout)) ??
    (await run(cmd, [`--query-gpu=${base}`, '--format=csv,noheader,nounits'], timeout));
  return csv ? parseNvidiaSmi(csv) : [];
}

/**
 * Decide whether this worker may start.
 * @param backend what `initBackend()` returned.
 * @param gpus what `probeGpus()` returned.
 * @param env reads WORKER_GPU, TFJS_BACKEND, ALLOW_CPU_FALLBACK, CUDA_CACHE_PATH, CUDA_VISIBLE_DEVICES.
 * @throws GpuCheckError (code GPU_BACKEND_UNAVAILABLE) when a GPU worker would train on the CPU and
 *   ALLOW_CPU_FALLBACK is not true.
 */
export function checkWorkerBackend(backend: BackendSummary, gpus: GpuDevice[], env: Record<string, string | undefined> = process.env): GpuCheckResult {
  const gpuWorker = truthy(env.WORKER_GPU) || env.TFJS_BACKEND === 'tensorflow-gpu';
  const allowFallback = truthy(env.ALLOW_CPU_FALLBACK);
  const warnings: string[] = [];
  const gpuList = gpus.length
    ? gpus.map((g) => `#${g.index} ${g.name} ${g.memoryMiB} MiB${g.computeCapability ? ` sm_${g.computeCapability.replace('.', '')}` : ''}`).join(', ')
    : 'none';
  const onGpu = backend.gpu && gpus.length > 0;
  const summary = `tfjs backend ${backend.name} (${backend.package}); GPUs visible: ${gpuList}${gpus[0] ? `; driver ${gpus[0].driverVersion}` : ''}${onGpu ? '' : '; training runs on the CPU'}`;

  if (gpuWorker && !onGpu) {
    const why = !backend.gpu
      ? `the tfjs backend is ${backend.name} from ${backend.package}, not @tensorflow/tfjs-node-gpu (is it installed? Dockerfile.gpu installs it; TFJS_BACKEND=${env.TFJS_BACKEND ?? 'auto'})`
      : 'tfjs-node-gpu loaded but nvidia-smi sees no GPU, so libtensorflow would run on the CPU (start the container with --gpus all or the compose "gpu" profile, and install the NVIDIA Container Toolkit on the host)';
    if (!allowFallback) {
      throw new GpuCheckError(`this is a GPU worker (WORKER_GPU=true) but ${why}. Fix that, or set ALLOW_CPU_FALLBACK=true to train on the CPU anyway`);
    }
    warnings.push(`GPU worker running on the CPU because ALLOW_CPU_FALLBACK=true: ${why}`);
  }
  if (onGpu) {
    if (gpus.some((g) => g.computeCapability !== undefined && Number(g.computeCapability) >= 9) && !env.CUDA_CACHE_PATH) {
      warnings.push(
        'a GPU with compute capability >= 9.0 JIT-compiles libtensorflow 2.9 kernels from PTX at first use (minutes); set CUDA_CACHE_PATH to a persistent volume so it happens once',
      );
    }
    if (gpus.length > 1 && !env.CUDA_VISIBLE_DEVICES) {
      warnings.push(
        `${gpus.length} GPUs visible and CUDA_VISIBLE_DEVICES is unset: one worker trains on one GPU; run one worker per GPU with CUDA_VISIBLE_DEVICES=<index>`,
      );
    }
  }
  return { gpuWorker, backend, gpus, cpuFallback: gpuWorker && !onGpu, summary, warnings };
}

/**
 * Probe the GPUs, decide, and log: info with the summary, warn for each warning. For the worker entry.
 * `env.NVIDIA_SMI` overrides the nvidia-smi path.
 * @throws GpuCheckError as {@link checkWorkerBackend}; the caller should log it and exit non-zero.
 */
export async function runGpuCheck(backend: BackendSummary, logger: Logger, env: Record<string, string | undefined> = process.env): Promise<GpuCheckResult> {
  const gpus = await probeGpus({ command: env.NVIDIA_SMI });
  const result = checkWorkerBackend(backend, gpus, env);
  logger.info({ backend: backend.name, package: backend.package, gpus, gpuWorker: result.gpuWorker }, result.summary);
  for (const w of result.warnings) logger.warn(w);
  return result;
}
