/**
 * Job failure codes and their encoding in BullMQ's `failedReason` string (`CODE: message`), so that
 * GET /jobs can return `{code, message}` from what the worker threw.
 */
import { UnrecoverableError } from 'bullmq';

/** Stable failure codes a job can end with (others come from training: INVALID_CONFIG, ...). */
export const FailureCodes = {
  cancelled: 'JOB_CANCELLED',
  timeout: 'JOB_TIMEOUT',
  training: 'TRAINING_FAILED',
  storage: 'STORAGE_UPLOAD_FAILED',
  workerLost: 'WORKER_CHILD_EXITED',
  unknown: 'JOB_FAILED',
} as const;

/** A job failure with a stable code; the worker throws it, BullMQ stores `CODE: message` and does not retry. */
export class JobFailure extends UnrecoverableError {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(`${code}: ${message}`);
    this.name = 'JobFailure';
  }
}

/** Split a BullMQ failedReason into `{code, message}` (reasons not in `CODE: message` form get JOB_FAILED). */
export function decodeFailure(reason: string | undefined | null): { code: string; message: string } {
  const r = reason ?? '';
  const m = /^([A-Z][A-Z0-9_]{2,63}): ([\s\S]*)$/.exec(r);
  if (m) return { code: m[1], message: m[2] };
  return { code: FailureCodes.unknown, message: r || 'the job failed without a reason' };
}
