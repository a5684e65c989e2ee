/**
 * Minimal float32 safetensors reader/writer for checkpoints (weights, optimizer slots, reference log-probs).
 * Format: 8-byte little-endian header length, a JSON header `{name: {dtype, shape, data_offsets}}`, then the
 * raw little-endian data (huggingface/safetensors README). Writes are atomic (temp file + rename).
 */
import { open, readFile, rename, unlink } from 'node:fs/promises';

export interface F32Tensor {
  shape: number[];
  data: Float32Array;
}

export class TensorFileError extends Error {
  readonly code = 'CORRUPT_CHECKPOINT';
  constructor(message: string) {
    super(message);
    this.name = 'TensorFileError';
  }
}

/** Write `tensors` (float32) to `path` atomically. */
export async function writeF32Safetensors(path: string, tensors: Map<string, F32Tensor>, metadata?: Record<string, string>): Promise<void> {
  const header: Record<string, unknown> = {};
  if (metadata) header.__metadata__ = metadata;
  let offset = 0;
  const names = [...tensors.keys()].sort();
  for (const n of names) {
    const t = tensors.get(n)!;
    const bytes = t.data.length * 4;
    header[n] = { dtype: 'F32', shape: t.shape, data_offsets: [offset, offset + bytes] };
    offset += bytes;
  }
  let json = JSON.stringify(header);
  while ((8 + Buffer.byteLength(json)) % 8 !== 0) json += ' ';
  const hbuf = Buffer.from(json, 'utf8');
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(hbuf.length));
  const tmp = `${path}.tmp-${process.pid}`;
  const fh = await open(tmp, 'w');
  try {
    await fh.write(len);
    await fh.write(hbuf);
    for (const n of names) {
      const d = tensors.get(n)!.data;
      await fh.write(Buffer.from(d.buffer, d.byteOffset, d.byteLength));
    }
    await fh.sync();
  } finally {
    await fh.close();
  }
  try {
    await rename(tmp, path);
  } catch (e) {
    await unlink(tmp).catch(() => undefined);
    throw e;
  }
}

/**
 * Read a float32 safetensors file.
 * @throws TensorFileError for a truncated file, a bad header, or a dtype other than F32
 */
export async function readF32Safetensors(path: string): Promise<Map<string, F32Tensor>> {
  const buf = await readFile(path);
  if (buf.length < 8) throw new TensorFileError(`${path}: truncated (no header)`);
  const hlen = Number(buf.readBigUInt64LE(0));
  if (8 + hlen > buf.length) throw new TensorFileError(`${path}: header length ${hlen} exceeds the file`);
  let header: Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>;
  try {
    header = JSON.parse(buf.subarray(8, 8 + hlen).toString('utf8'));
  } catch {
    throw new TensorFileError(`${path}: header is not JSON`);
  }
  const base = 8 + hlen;
  const out = new Map<string, F32Tensor>();
  for (const [name, h] of Object.entries(header)) {
    if (name === '__metadata__') continue;
    if (h.dtype !== 'F32') throw new TensorFileError(`${path}: tensor ${name} has dtype ${h.dtype}, expected F32`);
    const [a, b] = h.data_offsets;
    if (base + b > buf.length || b - a !== h.shape.reduce((x, y) => x * y, 1) * 4) {
      throw new TensorFileError(`${path}: tensor ${name} data is truncated or inconsistent with its shape`);
    }
    const copy = new Float32Array((b - a) / 4);
    Buffer.from(copy.buffer).set(buf.subarray(base + a, base + b));
    out.set(name, { shape: h.shape, data: copy });
  }
  return out;
}
