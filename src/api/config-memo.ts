/**
 * A memo of the webhook's config resolution. Resolving a request's `config` (src/config loadConfig: the
 * config.yaml defaults, the model and loss groups, the TRL names, the schema) was the largest CPU cost of a
 * trigger, and most requests send one of a few configs. Results are kept by the canonical JSON of the input
 * for `ttlMs` (so an edited config/*.yaml is seen within that time), at most `max` inputs, and every caller
 * gets its own copy.
 */
import { canonicalJson } from '../training/data/hash.js';
import type { ConfigProblem, TrainConfig } from '../config/index.js';

export type ResolveConfig = (config: Record<string, unknown> | undefined) => { config: TrainConfig | null; problems: ConfigProblem[] };

/**
 * Wrap `resolve` with the memo.
 * @param opts.max inputs kept (oldest dropped first), default 256; opts.ttlMs lifetime of an entry, default 10 s.
 * @returns a function with the same contract as `resolve` (a fresh object per call).
 */
export function memoizeConfigResolution(resolve: ResolveConfig, opts: { max?: number; ttlMs?: number } = {}): ResolveConfig {
  const max = opts.max ?? 256;
  const ttlMs = opts.ttlMs ?? 10_000;
  const memo = new Map<string, { at: number; value: ReturnType<ResolveConfig> }>();
  return (config) => {
    const key = config === undefined ? '' : canonicalJson(config);
    const now = Date.now();
    const hit = memo.get(key);
    if (hit && now - hit.at < ttlMs) return structuredClone(hit.value);
    const value = resolve(config);
    memo.delete(key);
    memo.set(key, { at: now, value: structuredClone(value) });
    if (memo.size > max) memo.delete(memo.keys().next().value!);
    return value;
  };
}
