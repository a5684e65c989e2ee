/**
 * A memo of the webhook's config resolution. Resolving a request's `config` (src/config loadConfig: the
 * config.yaml defaults, the model and loss groups, the TRL names, the schema) was the largest CPU cost of a
 * trigger, and most requests send one of a few configs. Results are kept by the canonical JSON of the input
 * for `ttlMs` (so an edited config/*.yaml is seen within that time), at most `max` inputs. A result is
 * deep-frozen and shared by every caller that gets it (callers read it, never change it: a write throws),
 * and its config's canonical JSON is computed once (`canonicalJsonOf`, for the request hash): a copy per
 * call and a canonical JSON of the ~3 KB config per request were ~10 % of a trigger's CPU.
 */
import { canonicalJson, freezeCanonical } from '../training/data/hash.js';
import type { ConfigProblem, TrainConfig } from '../config/index.js';

export type ResolveConfig = (config: Record<string, unknown> | undefined) => { config: TrainConfig | null; problems: ConfigProblem[] };

/**
 * Wrap `resolve` with the memo.
 * @param opts.max inputs kept (oldest dropped first), default 256; opts.ttlMs lifetime of an entry, default 10 s.
 * @returns a function with the same contract as `resolve`, whose results are deep-frozen (shared while memoised).
 */
export function memoizeConfigResolution(resolve: ResolveConfig, opts: { max?: number; ttlMs?: number } = {}): ResolveConfig {
  const max = opts.max ?? 256;
  const ttlMs = opts.ttlMs ?? 10_000;
  const memo = new Map<string, { at: number; value: ReturnType<ResolveConfig> }>();
  return (config) => {
    const key = config === undefined ? '' : canonicalJson(config);
    const now = Date.now();
    const hit = memo.get(key);
    if (hit && now - hit.at < ttlMs) return hit.value;
    const value = freezeCanonical(resolve(config));
    if (value.config) freezeCanonical(value.config);
    memo.delete(key);
    memo.set(key, { at: now, value });
    if (memo.size > max) memo.delete(memo.keys().next().value!);
    return value;
  };
}
