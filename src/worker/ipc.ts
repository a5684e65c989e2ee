/**
 * The worker ⇄ training-child protocol (src/worker/child.ts, src/worker/child-process.ts): message types
 * and small shared helpers. Side-effect free, so both processes can import it.
 */
import type { TrainConfig } from '../config/schema.js';
import type { DatasetRow, ProgressEvent, TrainingEvent, TrainResult } from '../training/types.js';

export type { TrainResult } from '../training/types.js';

/** What the worker asks the child to train. */
export interface TrainRequest {
  jobId: string;
  communityId: string;
  /** The resolved config (the worker's re-validation of the job's); the child validates it again. */
  config: TrainConfig;
  dataset: DatasetRow[];
  outputDir: string;
  /** The tfjs backend the worker chose (TFJS_BACKEND); the child trains with it as the config's `backend`. */
  backend: string;
  logLevel: string;
}

export type ParentMessage = { type: 'train'; request: TrainRequest } | { type: 'abort'; reason: string } | { type: 'probe'; backend: string };

export type ChildMessage =
  | { type: 'progress'; event: ProgressEvent }
  | { type: 'event'; event: TrainingEvent }
  | { type: 'result'; result: TrainResult }
  | { type: 'error'; code: string; message: string }
  | { type: 'backend'; info: { name: string; package: string; gpu: boolean } };

/** The file whose existence asks the training child of `outputDir` to abort (its content is the reason). */
export function abortFile(outputDir: string): string {
  return `${outputDir.replace(/\/+$/, '')}.abort`;
}

const CODE = /^[A-Z][A-Z0-9_]{2,63}$/;

/** `{code, message}` of a thrown value; codes of typed errors (ConfigError, ...) are kept. */
export function describeError(err: unknown, aborted: boolean): { code: string; message: string } {
  const e = err as { code?: unknown; message?: unknown; name?: unknown };
  const message = typeof e?.message === 'string' ? e.message : String(err);
  if (aborted) return { code: 'ABORTED', message };
  const code = typeof e?.code === 'string' && CODE.test(e.code) ? e.code : 'TRAINING_FAILED';
  return { code, message };
}
