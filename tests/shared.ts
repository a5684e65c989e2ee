/**
 * Where the read-only shared fixtures live (golden numbers, HH-RLHF, tokenizers): `DPO_SHARED_DIR`, else
 * `../shared` next to the repository (as CI lays it out), else `/work/shared`. Tests only; the product never reads it.
 */
import { existsSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const repo = resolve(fileURLToPath(new URL('.', import.meta.url)), '..');

export const SHARED_DIR: string =
  [process.env.DPO_SHARED_DIR, resolve(repo, '..', 'shared'), '/work/shared'].find((d): d is string => !!d && existsSync(d)) ?? resolve(repo, '..', 'shared');

/** Absolute path of a file under the shared directory. */
export function shared(...parts: string[]): string {
  return join(SHARED_DIR, ...parts);
}

// The registered `hh` dataset reads HH_RLHF_PATH first; point it at the shared copy wherever that is.
process.env.HH_RLHF_PATH ??= shared('data', 'hh-rlhf', 'harmless-base-test.jsonl.gz');
