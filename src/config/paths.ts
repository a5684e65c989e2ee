/**
 * Where the repository's data directories are (config/, schemas/, models/), found by walking up from this
 * file to the directory holding package.json, so it works from src/ (tsx) and from dist/src/ (built).
 */
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

let root: string | null = null;

/** The repository (package) root: the nearest ancestor of this file with package.json and config/. */
export function repoRoot(): string {
  if (root) return root;
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (existsSync(join(dir, 'package.json')) && existsSync(join(dir, 'config'))) return (root = dir);
    const up = dirname(dir);
    if (up === dir) throw new Error(`cannot find the package root (package.json + config/) above ${fileURLToPath(import.meta.url)}`);
    dir = up;
  }
}

/** `<root>/config` (config.yaml and the model/ loss/ groups); DPO_CONFIG_DIR overrides it. */
export function configDir(): string {
  return process.env.DPO_CONFIG_DIR ?? join(repoRoot(), 'config');
}

/** `<root>/schemas`. */
export function schemasDir(): string {
  return join(repoRoot(), 'schemas');
}
