/**
 * Registered datasets: `config/datasets/<name>.yaml`, so `datasets=[hh]` or `loadPreferenceExamples('toy')`
 * resolve to a file. Keys: `name`, `path` (relative paths resolve against the repository root),
 * `path_env` (an environment variable that overrides `path`), `format` (optional), `description`.
 */
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { dirname, isAbsolute, join, resolve } from 'node:path';
import { repoRoot } from '../../config/paths.js';
import { parse as parseYaml } from 'yaml';
import { DataError } from './errors.js';

export interface DatasetEntry {
  name: string;
  /** Absolute path of the data file after applying `path_env`. */
  path: string;
  format?: string;
  description?: string;
  /** The environment variable that may override the path. */
  pathEnv?: string;
}

function datasetsDir(): string {
  return process.env.DPO_DATASETS_DIR ?? join(repoRoot(), 'config', 'datasets');
}

/** Names of all registered datasets. */
export function listDatasets(): string[] {
  const dir = datasetsDir();
  if (!existsSync(dir)) return [];
  return readdirSync(dir)
    .filter((f) => f.endsWith('.yaml') || f.endsWith('.yml'))
    .map((f) => f.replace(/\.ya?ml$/, ''))
    .sort();
}

/**
 * Resolve a registered dataset name, or undefined when no `config/datasets/<name>.yaml` exists.
 * @throws DataError UNKNOWN_DATASET when the YAML has no `path`.
 */
export function resolveDataset(name: string): DatasetEntry | undefined {
  if (!/^[A-Za-z0-9_.-]+$/.test(name)) return undefined;
  const dir = datasetsDir();
  const file = ['.yaml', '.yml'].map((e) => join(dir, name + e)).find((f) => existsSync(f));
  if (!file) return undefined;
  const doc = (parseYaml(readFileSync(file, 'utf8')) ?? {}) as Record<string, unknown>;
  const pathEnv = typeof doc.path_env === 'string' ? doc.path_env : undefined;
  const fromEnv = pathEnv ? process.env[pathEnv] : undefined;
  const p = fromEnv && fromEnv.trim() !== '' ? fromEnv : doc.path;
  if (typeof p !== 'string' || p.trim() === '') {
    throw new DataError('UNKNOWN_DATASET', `${file}: dataset ${name} has no path${pathEnv ? ` and ${pathEnv} is not set` : ''}`);
  }
  return {
    name,
    path: isAbsolute(p) ? p : resolve(repoRoot(), p),
    format: typeof doc.format === 'string' ? doc.format : undefined,
    description: typeof doc.description === 'string' ? doc.description : undefined,
    pathEnv,
  };
}
