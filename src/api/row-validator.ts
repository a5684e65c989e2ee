/**
 * The webhook's semantic row checks come from the data module (src/training/data validateRows: chosen ==
 * rejected, blank text, ...). Loaded lazily so the API starts without pulling in the training stack's
 * heavier imports until needed.
 */
import type { RowValidator } from './routes/trigger.js';

/** Minimal checks used only if the data module cannot be loaded (logged by the caller). */
export const basicRowChecks: RowValidator = (rows) => {
  const out: ReturnType<RowValidator> = [];
  rows.forEach((r, index) => {
    const row = r as Record<string, unknown>;
    for (const field of ['prompt', 'chosen', 'rejected']) {
      const v = row[field];
      if (typeof v === 'string' && v.trim() === '') out.push({ index, field, code: 'EMPTY', message: 'is blank' });
    }
    if (typeof row.chosen === 'string' && row.chosen === row.rejected) {
      out.push({ index, field: 'rejected', code: 'CHOSEN_EQUALS_REJECTED', message: 'must differ from chosen' });
    }
  });
  return out;
};

/** validateRows from src/training/data, or basicRowChecks when that module is absent. */
export async function loadRowValidator(): Promise<RowValidator> {
  try {
    const specifier = '../training/data/index.js';
    const mod = (await import(specifier)) as { validateRows?: RowValidator };
    if (typeof mod.validateRows === 'function') return mod.validateRows;
  } catch {
    // fall through
  }
  return basicRowChecks;
}

/** Semantic check of a request's `config` (beyond the JSON Schema): problems with their `/config/...` path. */
export type ConfigChecker = (config: Record<string, unknown>) => Array<{ path: string; message: string }>;

/**
 * The trainer's own resolution (src/config loadConfig: groups, loss hyper-parameters, max_prompt_length <
 * max_length, ...) run on the request's `config`, so a config the worker would reject is a 400 now rather
 * than a failed job later.
 */
export async function loadConfigChecker(): Promise<ConfigChecker> {
  const specifier = '../config/index.js';
  const mod = (await import(specifier)) as {
    loadConfig: (o: { object?: Record<string, unknown> }) => unknown;
  };
  return (config) => {
    try {
      mod.loadConfig({ object: config });
      return [];
    } catch (err) {
      const e = err as { code?: string; key?: string; message: string };
      if (e.code !== 'INVALID_CONFIG') throw err;
      const key = e.key ?? '';
      const message = key && e.message.startsWith(`${key}: `) ? e.message.slice(key.length + 2) : e.message;
      return [{ path: key ? `/config/${key.replace(/\./g, '/')}` : '/config', message }];
    }
  };
}
