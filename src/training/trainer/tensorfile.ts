/**
 * Float32 tensor files of checkpoints (weights, optimizer slots, reference log-probs) in the safetensors
 * format, through the one safetensors reader/writer (src/training/models/safetensors.ts). Writes are atomic
 * (temp file, fsync, rename); tensors are written in name order.
 */
import { rename, unlink } from 'node:fs/promises';
import { WeightsError } from '../models/errors.js';
import { forEachTensor, readSafetensorsHeader, writeSafetensors } from '../models/safetensors.js';

export interface F32Tensor {
  shape: number[];
  data: Float32Array;
}

export class TensorFileError extends Error {
  readonly code = 'CORRUPT_CHECKPOINT';
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'TensorFileError';
  }
}

/**
 * Write `tensors` (float32) to `path` atomically.
 * @param metadata `__metadata__` strings (e.g. the optimizer's name and step)
 * @throws the fs error when the file cannot be written
 */
export async function writeF32Safetensors(path: string, tensors: Map<string, F32Tensor>, metadata?: Record<string, string>): Promise<void> {
  const tmp = `${path}.tmp-${process.pid}`;
  const list = [...tensors.keys()].sort().map((name) => {
    const t = tensors.get(name)!;
    return { name, shape: t.shape, data: () => t.data };
  });
  try {
    writeSafetensors(tmp, list, 'F32', metadata ?? {}, { fsync: true });
    await rename(tmp, path);
  } catch (e) {
    await unlink(tmp).catch(() => undefined);
    throw e;
  }
}

/**
 * Read every tensor of a safetensors file as float32.
 * @throws TensorFileError (CORRUPT_CHECKPOINT) for a missing or truncated file, a bad header, or an
 *   unsupported dtype, with the reader's message (file and tensor named)
 */
export async function readF32Safetensors(path: string): Promise<Map<string, F32Tensor>> {
  const out = new Map<string, F32Tensor>();
  try {
    const { tensors } = await readSafetensorsHeader(path);
    await forEachTensor(tensors, [...tensors.keys()], (name, t) => out.set(name, { shape: t.shape, data: t.data }));
  } catch (e) {
    if (e instanceof WeightsError) throw new TensorFileError(e.message, { cause: e });
    throw e;
  }
  return out;
}
