/**
 * safetensors read/write (format: huggingface/safetensors README): an 8-byte little-endian u64 header length
 * N, a JSON header of N bytes `{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}`,
 * then the byte buffer (offsets relative to its start, contiguous, row-major, little-endian).
 *
 * Reading is tensor by tensor from an open file handle, so a checkpoint is never held twice in memory:
 * callers turn each tensor into a tf.Variable and drop the host copy before the next one is read.
 * Dtypes read: F32, F16, BF16 (converted to float32). Written: F32 or BF16 (round to nearest even).
 */
import { open, readFile } from 'node:fs/promises';
import { closeSync, fsyncSync, openSync, writeSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { WeightsError } from './errors.js';
import type { HostTensor } from './llama2c.js';
import { toBfloat16 } from '../engine/lowp.js';

export type SafetensorsDtype = 'F32' | 'F16' | 'BF16';
const DTYPE_BYTES: Record<string, number> = { F32: 4, F16: 2, BF16: 2 };

/** One header entry. */
export interface TensorInfo {
  dtype: SafetensorsDtype;
  shape: number[];
  /** absolute byte offsets in the file */
  begin: number;
  end: number;
  /** the file holding it */
  file: string;
}

/** The parsed header of one file. */
export interface SafetensorsHeader {
  tensors: Map<string, TensorInfo>;
  metadata: Record<string, string> | null;
}

/**
 * Parse and validate the header of a `.safetensors` file without reading tensor data.
 * @throws WeightsError (code `INVALID_WEIGHTS`) for a corrupt header (bad length, bad JSON, an entry with an
 *   unsupported dtype, offsets outside the file or not matching its shape), naming the file and the tensor
 */
export async function readSafetensorsHeader(file: string): Promise<SafetensorsHeader> {
  const fh = await open(file, 'r').catch((e: NodeJS.ErrnoException) => {
    throw new WeightsError(`${file}: cannot open safetensors file (${e.code ?? e.message})`, null, 'WEIGHTS_NOT_FOUND');
  });
  try {
    const { size } = await fh.stat();
    if (size < 8) throw new WeightsError(`${file}: corrupt safetensors header: file is ${size} bytes, shorter than the 8-byte length prefix`);
    const lenBuf = Buffer.alloc(8);
    await fh.read(lenBuf, 0, 8, 0);
    const n = Number(lenBuf.readBigUInt64LE(0));
    if (n <= 1 || 8 + n > size || n > 100 * 1024 * 1024) {
      throw new WeightsError(`${file}: corrupt safetensors header: header length ${n} does not fit the file size ${size}`);
    }
    const hb = Buffer.alloc(n);
    await fh.read(hb, 0, n, 8);
    let json: Record<string, unknown>;
    try {
      json = JSON.parse(hb.toString('utf8')) as Record<string, unknown>;
    } catch (e) {
      throw new WeightsError(`${file}: corrupt safetensors header: invalid JSON (${(e as Error).message})`);
    }
    if (typeof json !== 'object' || json === null || Array.isArray(json)) {
      throw new WeightsError(`${file}: corrupt safetensors header: the header is not a JSON object`);
    }
    const dataStart = 8 + n;
    const tensors = new Map<string, TensorInfo>();
    let metadata: Record<string, string> | null = null;
    for (const [name, raw] of Object.entries(json)) {
      if (name === '__metadata__') {
        metadata = raw as Record<string, string>;
        continue;
      }
      const e = raw as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
      const bad = (why: string): never => {
        throw new WeightsError(`${file}: corrupt safetensors header for tensor "${name}": ${why}`, name);
      };
      if (typeof e !== 'object' || e === null) bad('entry is not an object');
      if (typeof e.dtype !== 'string') bad('dtype is missing');
      if (!((e.dtype as string) in DTYPE_BYTES)) {
        throw new WeightsError(`${file}: tensor "${name}" has dtype ${String(e.dtype)}; supported dtypes: F32, F16, BF16`, name, 'UNSUPPORTED_WEIGHT_DTYPE');
      }
      if (!Array.isArray(e.shape) || !e.shape.every((d) => Number.isInteger(d) && d >= 0)) bad('shape is not a list of non-negative integers');
      const offs = e.data_offsets;
      if (!Array.isArray(offs) || offs.length !== 2 || !offs.every((d) => Number.isInteger(d) && d >= 0)) bad('data_offsets is not [begin, end]');
      const [b, en] = offs as [number, number];
      const shape = e.shape as number[];
      const count = shape.reduce((a, d) => a * d, 1);
      const bytes = count * DTYPE_BYTES[e.dtype as string]!;
      if (en < b || en - b !== bytes) bad(`data_offsets [${b}, ${en}] hold ${en - b} bytes but shape [${shape.join(', ')}] ${String(e.dtype)} needs ${bytes}`);
      if (dataStart + en > size) bad(`data_offsets end ${en} lies beyond the end of the file (${size - dataStart} data bytes)`);
      tensors.set(name, { dtype: e.dtype as SafetensorsDtype, shape, begin: dataStart + b, end: dataStart + en, file });
    }
    return { tensors, metadata };
  } finally {
    await fh.close();
  }
}

/** IEEE half → float32. */
function f16ToF32(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const f = h & 0x3ff;
  if (e === 0) return s * f * 2 ** -24;
  if (e === 31) return f ? NaN : s * Infinity;
  return s * (1 + f / 1024) * 2 ** (e - 15);
}

/** Decode raw little-endian bytes of `dtype` into float32. */
export function decodeToF32(bytes: Uint8Array, dtype: SafetensorsDtype): Float32Array {
  if (dtype === 'F32') {
    const out = new Float32Array(bytes.byteLength / 4);
    new Uint8Array(out.buffer).set(bytes);
    return out;
  }
  const n = bytes.byteLength / 2;
  const u16 = new Uint16Array(n);
  new Uint8Array(u16.buffer).set(bytes);
  if (dtype === 'BF16') {
    const u32 = new Uint32Array(n);
    for (let i = 0; i < n; i++) u32[i] = u16[i]! << 16;
    return new Float32Array(u32.buffer);
  }
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = f16ToF32(u16[i]!);
  return out;
}

/** float32 → bfloat16 bits (engine/lowp.ts `toBfloat16`: round to nearest even, NaN → 0x7fc0, as torch). */
export const f32ToBf16Bits = toBfloat16;

/**
 * The tensor index of a checkpoint directory or file: a single `model.safetensors`, or the shards listed in
 * `model.safetensors.index.json` (`weight_map`: name → shard file). Reads headers only.
 * @param path a `.safetensors` file, an `*.index.json`, or a directory holding either
 * @throws WeightsError for a missing file, a corrupt header, or a tensor the index maps to a shard lacking it
 */
export async function readSafetensorsIndex(path: string): Promise<Map<string, TensorInfo>> {
  let indexFile: string | null = null;
  let single: string | null = null;
  if (path.endsWith('.index.json')) indexFile = path;
  else if (path.endsWith('.safetensors')) single = path;
  else {
    const idx = join(path, 'model.safetensors.index.json');
    const one = join(path, 'model.safetensors');
    if (await exists(idx)) indexFile = idx;
    else if (await exists(one)) single = one;
    else throw new WeightsError(`${path}: no model.safetensors or model.safetensors.index.json found`, null, 'WEIGHTS_NOT_FOUND');
  }
  if (single) return (await readSafetensorsHeader(single)).tensors;
  let index: { weight_map?: Record<string, string> };
  try {
    index = JSON.parse(await readFile(indexFile!, 'utf8')) as typeof index;
  } catch (e) {
    throw new WeightsError(`${indexFile}: invalid shard index JSON (${(e as Error).message})`);
  }
  if (!index.weight_map || typeof index.weight_map !== 'object') {
    throw new WeightsError(`${indexFile}: shard index has no "weight_map" object`);
  }
  const dir = dirname(indexFile!);
  const byShard = new Map<string, string[]>();
  for (const [name, shard] of Object.entries(index.weight_map)) {
    if (!byShard.has(shard)) byShard.set(shard, []);
    byShard.get(shard)!.push(name);
  }
  const all = new Map<string, TensorInfo>();
  for (const [shard, names] of byShard) {
    const h = await readSafetensorsHeader(join(dir, shard));
    for (const name of names) {
      const info = h.tensors.get(name);
      if (!info) throw new WeightsError(`${indexFile}: tensor "${name}" is mapped to ${shard}, which does not contain it`, name, 'MISSING_WEIGHT_TENSOR');
      all.set(name, info);
    }
  }
  return all;
}

async function exists(p: string): Promise<boolean> {
  try {
    await (await open(p, 'r')).close();
    return true;
  } catch {
    return false;
  }
}

/**
 * Read the named tensors as float32, one at a time, grouped by shard (each shard file is opened once).
 * `onTensor` should consume the host copy (e.g. make a tf.Variable) before returning.
 */
export async function forEachTensor(index: Map<string, TensorInfo>, names: string[], onTensor: (name: string, t: HostTensor) => void): Promise<void> {
  const byFile = new Map<string, string[]>();
  for (const name of names) {
    const info = index.get(name);
    if (!info) throw new WeightsError(`tensor "${name}" is missing from the checkpoint`, name, 'MISSING_WEIGHT_TENSOR');
    if (!byFile.has(info.file)) byFile.set(info.file, []);
    byFile.get(info.file)!.push(name);
  }
  for (const [file, list] of byFile) {
    const fh = await open(file, 'r');
    try {
      for (const name of list) {
        const info = index.get(name)!;
        const bytes = new Uint8Array(info.end - info.begin);
        const { bytesRead } = await fh.read(bytes, 0, bytes.byteLength, info.begin);
        if (bytesRead !== bytes.byteLength) throw new WeightsError(`${file}: tensor "${name}" is truncated`, name);
        onTensor(name, { shape: info.shape, data: decodeToF32(bytes, info.dtype) });
      }
    } finally {
      await fh.close();
    }
  }
}

/** A tensor to write: HF layout, data produced lazily (one tensor in memory at a time). */
export interface TensorToWrite {
  name: string;
  shape: number[];
  data: () => Float32Array;
}

/**
 * Write a `.safetensors` file, streaming tensor by tensor.
 * @param dtype `F32` or `BF16` (round to nearest even)
 * @param metadata `__metadata__` strings; `format: "pt"` is added (transformers requires it)
 * @param opts.fsync flush the file to disk before closing (checkpoints)
 * @returns bytes written
 * @throws WeightsError when a tensor's data does not match its shape; the fs error when the file cannot be written
 */
export function writeSafetensors(
  file: string,
  tensors: TensorToWrite[],
  dtype: 'F32' | 'BF16' = 'F32',
  metadata: Record<string, string> = {},
  opts: { fsync?: boolean } = {},
): number {
  const bpe = DTYPE_BYTES[dtype]!;
  const header: Record<string, unknown> = { __metadata__: { format: 'pt', ...metadata } };
  let off = 0;
  for (const t of tensors) {
    const n = t.shape.reduce((a, d) => a * d, 1) * bpe;
    header[t.name] = { dtype, shape: t.shape, data_offsets: [off, off + n] };
    off += n;
  }
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - ((8 + Buffer.byteLength(json)) % 8)) % 8); // align the data to 8 bytes
  const hbytes = Buffer.from(json, 'utf8');
  const lenBuf = Buffer.alloc(8);
  lenBuf.writeBigUInt64LE(BigInt(hbytes.byteLength));
  const fd = openSync(file, 'w');
  try {
    writeSync(fd, lenBuf);
    writeSync(fd, hbytes);
    for (const t of tensors) {
      const d = t.data();
      const expected = t.shape.reduce((a, x) => a * x, 1);
      if (d.length !== expected) throw new WeightsError(`tensor "${t.name}" has ${d.length} values, shape [${t.shape.join(', ')}] needs ${expected}`, t.name);
      const arr = dtype === 'BF16' ? f32ToBf16Bits(d) : d;
      writeSync(fd, new Uint8Array(arr.buffer, arr.byteOffset, arr.byteLength));
    }
    if (opts.fsync) fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  return 8 + hbytes.byteLength + off;
}
