/**
 * The engine's settings, read once from the environment into one typed, validated object. Every engine
 * module (backend choice, native addon build and threads, fast or reference ops) takes its mode from here;
 * the C kernels get theirs as arguments (addon `configure`), never from `getenv`.
 *
 * | variable | field | values (default) |
 * |---|---|---|
 * | `TFJS_BACKEND` | backend | auto, native, tensorflow, tensorflow-gpu, wasm, cpu (auto) |
 * | `TFJS_WASM_THREADS` | wasmThreads | integer >= 1: XNNPACK's pool on wasm (1) |
 * | `DPO_NATIVE` | native | 0 or 1: build and use the native kernels (1) |
 * | `DPO_NATIVE_THREADS` | nativeThreads | integer >= 1: threads of the native kernels (CPU cores) |
 * | `DPO_NATIVE_MT_MFLOP` | mtMflop | number >= 0: kernels below this many million flops run on one thread (24) |
 * | `DPO_NATIVE_SPIN_US` | spinUs | integer >= 0: microseconds idle pool threads spin before sleeping (300) |
 * | `DPO_NATIVE_CACHE` | cacheDir | directory of the compiled addon and the gradient bundle (`<tmpdir>/dpo-native`) |
 * | `CC` | cc | the C compiler (cc) |
 * | `DPO_NATIVE_PROFILE` | profile | 0 or 1: time every native call (0) |
 * | `DPO_ENGINE_OPS` | ops | fast or reference: plain tfjs ops and autodiff everywhere (fast) |
 * | `DPO_FUSED_ATTENTION` | fusedAttention | 0 or 1: the fused native attention kernel (1) |
 * | `DPO_NATIVE_POOL_MB` | poolMb | integer >= 0: MB of disposed kernel outputs the native backend keeps for reuse, 0 off (unset: 1024, and a training run raises it to the memory it has to spare beyond its estimate, up to 8192) |
 *
 * Empty strings count as unset (docker-compose passes `VAR=` for blank entries).
 */
import * as os from 'node:os';
import * as path from 'node:path';

/** What `TFJS_BACKEND` / `initBackend` accept (see backend.ts for what each means and what `auto` picks). */
export type BackendRequest = 'auto' | 'native' | 'tensorflow' | 'tensorflow-gpu' | 'wasm' | 'cpu';
export const BACKEND_REQUESTS: readonly BackendRequest[] = ['auto', 'native', 'tensorflow', 'tensorflow-gpu', 'wasm', 'cpu'];

/** The validated engine settings (see the file comment for the variable of each field). */
export interface EngineSettings {
  backend: BackendRequest;
  wasmThreads: number;
  native: boolean;
  nativeThreads: number;
  mtMflop: number;
  spinUs: number;
  cacheDir: string;
  cc: string;
  profile: boolean;
  ops: 'fast' | 'reference';
  poolMb: number;
  /** DPO_NATIVE_POOL_MB is not set: a training run sizes the pool to its spare memory (native-backend.ts sizeNativePool) */
  poolAuto: boolean;
  fusedAttention: boolean;
}

/** A bad engine environment variable; `variable` names it, the message says what it must be. */
export class EngineSettingsError extends Error {
  readonly code = 'INVALID_ENV';
  constructor(
    readonly variable: string,
    readonly value: string,
    expected: string,
  ) {
    super(`invalid environment: ${variable}=${JSON.stringify(value)} must be ${expected}`);
    this.name = 'EngineSettingsError';
  }
}

type Env = Record<string, string | undefined>;

function raw(env: Env, name: string): string | undefined {
  const v = env[name];
  return v === undefined || v.trim() === '' ? undefined : v.trim();
}

function int(env: Env, name: string, dflt: number, min: number): number {
  const v = raw(env, name);
  if (v === undefined) return dflt;
  if (!/^\d+$/.test(v) || Number(v) < min) throw new EngineSettingsError(name, v, `an integer >= ${min}`);
  return Number(v);
}

function num(env: Env, name: string, dflt: number): number {
  const v = raw(env, name);
  if (v === undefined) return dflt;
  const n = Number(v);
  if (!Number.isFinite(n) || n < 0) throw new EngineSettingsError(name, v, 'a number >= 0');
  return n;
}

function flag(env: Env, name: string, dflt: boolean): boolean {
  const v = raw(env, name);
  if (v === undefined) return dflt;
  if (v === '1' || v === 'true') return true;
  if (v === '0' || v === 'false') return false;
  throw new EngineSettingsError(name, v, '0 or 1');
}

function oneOf<T extends string>(env: Env, name: string, allowed: readonly T[], dflt: T): T {
  const v = raw(env, name);
  if (v === undefined) return dflt;
  if (!(allowed as readonly string[]).includes(v)) throw new EngineSettingsError(name, v, `one of ${allowed.join(', ')}`);
  return v as T;
}

/**
 * Read and validate the engine settings from `env` (pure; no caching).
 * @throws EngineSettingsError (code `INVALID_ENV`) naming the first bad variable
 */
export function readEngineSettings(env: Env = process.env): EngineSettings {
  return {
    backend: oneOf(env, 'TFJS_BACKEND', BACKEND_REQUESTS, 'auto'),
    wasmThreads: int(env, 'TFJS_WASM_THREADS', 1, 1),
    native: flag(env, 'DPO_NATIVE', true),
    nativeThreads: int(env, 'DPO_NATIVE_THREADS', Math.max(1, os.cpus().length), 1),
    mtMflop: num(env, 'DPO_NATIVE_MT_MFLOP', 24),
    spinUs: int(env, 'DPO_NATIVE_SPIN_US', 300, 0),
    cacheDir: raw(env, 'DPO_NATIVE_CACHE') ?? path.join(os.tmpdir(), 'dpo-native'),
    cc: raw(env, 'CC') ?? 'cc',
    profile: flag(env, 'DPO_NATIVE_PROFILE', false),
    ops: oneOf(env, 'DPO_ENGINE_OPS', ['fast', 'reference'] as const, 'fast'),
    fusedAttention: flag(env, 'DPO_FUSED_ATTENTION', true),
    poolMb: int(env, 'DPO_NATIVE_POOL_MB', 1024, 0),
    poolAuto: raw(env, 'DPO_NATIVE_POOL_MB') === undefined,
  };
}

let current: EngineSettings | null = null;

/**
 * The process's engine settings: read from `process.env` on first use, then the same object (the engine's
 * modes are per process). Tests and benchmarks change modes through the engine's own switches
 * (`useNativeMatmul`, `useFusedAttention`), not by editing this object.
 * @throws EngineSettingsError on a bad variable
 */
export function engineSettings(): Readonly<EngineSettings> {
  current ??= Object.freeze(readEngineSettings(process.env));
  return current;
}
