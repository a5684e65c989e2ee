/**
 * The one configuration error of the repo, and the conversion of JSON Schema (ajv) errors into it.
 * Errors carry a structured path (`['loss', 'beta']`, `['loss', 'loss_type', 1]`); the dotted `key`
 * (`loss.beta`, `loss.loss_type[1]`) and the JSON pointer (`/config/loss/beta`) are derived from it, never
 * parsed back out of a message.
 */
import type { ErrorObject } from 'ajv';
import { distance } from 'fastest-levenshtein';

/** INVALID_CONFIG: a setting of the training configuration; INVALID_LOSS_CONFIG: of the loss module's own API. */
export type ConfigErrorCode = 'INVALID_CONFIG' | 'INVALID_LOSS_CONFIG';

export type ConfigPath = ReadonlyArray<string | number>;

/** `['loss', 'loss_type', 1]` → `loss.loss_type[1]`. */
export function dottedKey(path: ConfigPath): string {
  return path.map((p, i) => (typeof p === 'number' ? `[${p}]` : i === 0 ? p : `.${p}`)).join('');
}

/** `loss.loss_type[1]` → `['loss', 'loss_type', 1]` (for keys written by people: overrides, prefixes). */
export function parseKey(key: string): Array<string | number> {
  return key
    .split(/\.|\[|\]/)
    .filter(Boolean)
    .map((p) => (/^\d+$/.test(p) ? Number(p) : p));
}

/**
 * A configuration error: `path` names the offending setting, `detail` says what is wrong and how to fix it
 * (without the key), `message` is `<key>: <detail>`.
 */
export class ConfigError extends Error {
  readonly path: ReadonlyArray<string | number>;
  readonly detail: string;
  readonly code: ConfigErrorCode;
  constructor(path: ConfigPath | string, detail: string, code: ConfigErrorCode = 'INVALID_CONFIG') {
    const p = typeof path === 'string' ? parseKey(path) : [...path];
    const key = dottedKey(p);
    super(key ? `${key}: ${detail}` : detail);
    this.name = 'ConfigError';
    this.path = p;
    this.detail = detail;
    this.code = code;
  }

  /** The dotted setting name (`loss.beta`), '' for the whole config. */
  get key(): string {
    return dottedKey(this.path);
  }

  /** JSON pointer (RFC 6901) of the setting under `root`, e.g. `pointer('/config')` → `/config/loss/beta`. */
  pointer(root = ''): string {
    return root + this.path.map((p) => `/${String(p).replace(/~/g, '~0').replace(/\//g, '~1')}`).join('');
  }
}

/**
 * The closest of `known` to `name` (Levenshtein distance via fastest-levenshtein), when it is close enough
 * (at most max(2, |name|/3) edits) to be a typo; else null.
 */
export function closest(name: string, known: Iterable<string>): string | null {
  let best: string | null = null;
  let bestD = Infinity;
  for (const k of known) {
    const d = distance(name, k);
    if (d < bestD) [best, bestD] = [k, d];
  }
  return best !== null && bestD <= Math.max(2, Math.floor(name.length / 3)) ? best : null;
}

/** The instance path of an ajv error as path segments (an unknown key's name appended). */
function ajvPath(e: ErrorObject): Array<string | number> {
  const parts: Array<string | number> = e.instancePath
    .split('/')
    .slice(1)
    .map((p) => p.replace(/~1/g, '/').replace(/~0/g, '~'))
    .map((p) => (/^\d+$/.test(p) ? Number(p) : p));
  if (e.keyword === 'additionalProperties') parts.push(String((e.params as { additionalProperty: string }).additionalProperty));
  if (e.keyword === 'required') parts.push(String((e.params as { missingProperty: string }).missingProperty));
  return parts;
}

function valueAt(obj: unknown, path: ConfigPath): unknown {
  let cur: unknown = obj;
  for (const p of path) cur = cur !== null && typeof cur === 'object' ? (cur as Record<string | number, unknown>)[p] : undefined;
  return cur;
}

export interface AjvErrorContext {
  /** The validated value (to quote what was given). */
  value: unknown;
  /** Segments prepended to every path (`['loss']` when a loss group is validated alone). */
  prefix?: ConfigPath;
  /** Known keys of the object at a path (for "unknown setting" messages with a suggestion). */
  knownKeys?: (path: ConfigPath) => string[];
  /** Where a setting came from (`[from loss.beta=abc]`), by dotted key. */
  sourceOf?: (key: string) => string | undefined;
  /** More about a suggested key (`, TRL's name of lr`). */
  describe?: (key: string) => string;
  code?: ConfigErrorCode;
}

/**
 * One ConfigError for ajv's errors: the most specific one (deepest path; a constraint before the type error
 * of another anyOf branch).
 */
export function configErrorFromAjv(errors: ErrorObject[], ctx: AjvErrorContext): ConfigError {
  const specific = errors.filter((e) => e.keyword !== 'oneOf' && e.keyword !== 'anyOf');
  const rank = (e: ErrorObject) => ajvPath(e).length * 10 + (e.keyword === 'type' ? 0 : 1);
  const e = (specific.length ? specific : errors).slice().sort((a, b) => rank(b) - rank(a))[0]!;
  const rel = ajvPath(e);
  const path = [...(ctx.prefix ?? []), ...rel];
  const key = dottedKey(path);
  let detail: string;
  if (e.keyword === 'additionalProperties') {
    const parent = rel.slice(0, -1);
    const name = String(rel.at(-1));
    const known = ctx.knownKeys?.(parent) ?? [];
    const near = closest(name, known);
    const parentKey = dottedKey([...(ctx.prefix ?? []), ...parent]);
    detail = `unknown setting '${key}'${near ? ` (did you mean '${near}'${ctx.describe?.(near) ?? ''}?)` : ''}; known settings${parentKey ? ` of ${parentKey}` : ''}: ${known.join(', ')}`;
  } else if (e.keyword === 'required') {
    detail = 'missing after resolution (config/config.yaml must define it)';
  } else {
    const allowed = e.keyword === 'enum' ? ` (${((e.params as { allowedValues?: unknown[] }).allowedValues ?? []).map(String).join(', ')})` : '';
    detail = `${e.message ?? 'is invalid'}${allowed}, got ${JSON.stringify(valueAt(ctx.value, rel))}`;
  }
  const src = ctx.sourceOf?.(key);
  return new ConfigError(path, `${detail}${src ? ` [from ${src}]` : ''}`, ctx.code);
}
