/**
 * The canonical JSON and dataset hash of the repo: object keys sorted (safe-stable-stringify), so equal
 * values hash equally whatever their key order. Every content hash of the service goes through here: the API's
 * idempotency hash of `{dataset, config}`, run.json's `data.sha256` (= datasetSha256 of the rows a webhook job
 * trained on) and the checkpoint's config hash.
 */
import { createHash } from 'node:crypto';
import { stringify } from 'safe-stable-stringify';

/** JSON with object keys sorted; `undefined` members are dropped (as JSON.stringify does). */
export function canonicalJson(v: unknown): string {
  return stringify(v) ?? 'null';
}

/** sha256 hex of {@link canonicalJson}. */
export function canonicalSha256(v: unknown): string {
  return createHash('sha256').update(canonicalJson(v)).digest('hex');
}

/** sha256 hex of a dataset (its rows / preference examples, in order), canonical JSON. */
export function datasetSha256(rows: readonly unknown[]): string {
  return canonicalSha256(rows);
}

const frozenText = new WeakMap<object, string>();

/**
 * Deep-freeze `v` (every nested object and array) and remember its canonical JSON, so that
 * {@link canonicalJsonOf} of it is a lookup. For values computed once and shared by many callers (the API's
 * memo of resolved request configs).
 * @returns `v`, frozen.
 */
export function freezeCanonical<T extends object>(v: T): T {
  const freeze = (o: unknown): void => {
    if (o === null || typeof o !== 'object' || Object.isFrozen(o)) return;
    Object.freeze(o);
    for (const x of Object.values(o)) freeze(x);
  };
  freeze(v);
  frozenText.set(v, canonicalJson(v));
  return v;
}

/** {@link canonicalJson} of `v`, from the text {@link freezeCanonical} remembered when `v` is such a value. */
export function canonicalJsonOf(v: unknown): string {
  return (v !== null && typeof v === 'object' && frozenText.get(v)) || canonicalJson(v);
}
