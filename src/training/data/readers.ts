/**
 * Raw record readers: JSON array, JSONL, and gzip of either (detected by the 1f 8b magic bytes, not the
 * file name). JSONL is streamed line by line (memory bounded by the longest line), so a 1 GB file does
 * not sit in memory; a JSON array (or a JSON object keyed by prompt, the DPO reference's grouping) is
 * parsed whole — use JSONL for large data.
 */
import { createReadStream } from 'node:fs';
import { open, stat } from 'node:fs/promises';
import { createInterface } from 'node:readline';
import type { Readable } from 'node:stream';
import { createGunzip } from 'node:zlib';
import { DataError } from './errors.js';

export interface RawRecord {
  value: unknown;
  /** 0-based record index. */
  index: number;
  /** 1-based line number (JSONL only). */
  line?: number;
}

export type Container = 'json' | 'jsonl' | 'json-object';

async function isGzip(path: string): Promise<boolean> {
  const fh = await open(path, 'r');
  try {
    const b = Buffer.alloc(2);
    const { bytesRead } = await fh.read(b, 0, 2, 0);
    return bytesRead === 2 && b[0] === 0x1f && b[1] === 0x8b;
  } finally {
    await fh.close();
  }
}

async function textStream(path: string): Promise<Readable> {
  const raw = createReadStream(path);
  if (await isGzip(path)) {
    const gz = createGunzip();
    raw.on('error', (e) => gz.destroy(e));
    return raw.pipe(gz);
  }
  return raw;
}

async function readAllText(path: string): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const c of await textStream(path)) chunks.push(c as Buffer);
  return Buffer.concat(chunks)
    .toString('utf8')
    .replace(/^\uFEFF/, '');
}

/** The first non-whitespace character of the (decompressed) file, or null for an empty file. */
async function firstChar(path: string): Promise<string | null> {
  const s = await textStream(path);
  try {
    for await (const c of s) {
      const t = (c as Buffer)
        .toString('utf8')
        .replace(/^\uFEFF/, '')
        .trimStart();
      if (t.length > 0) return t[0]!;
    }
    return null;
  } finally {
    s.destroy();
  }
}

function* fromParsed(doc: unknown, path: string): Generator<RawRecord> {
  if (Array.isArray(doc)) {
    for (let i = 0; i < doc.length; i++) yield { value: doc[i], index: i };
    return;
  }
  if (doc && typeof doc === 'object') {
    // a JSON object: either keyed by prompt ({prompt: {responses, pairs, sft_target}}) or a single record
    const entries = Object.entries(doc as Record<string, unknown>);
    const grouped = entries.length > 0 && entries.every(([, v]) => v !== null && typeof v === 'object' && !Array.isArray(v) && 'responses' in (v as object));
    if (grouped) {
      let i = 0;
      for (const [prompt, v] of entries) yield { value: { prompt, ...(v as object) }, index: i++ };
      return;
    }
    yield { value: doc, index: 0 };
    return;
  }
  throw new DataError('INVALID_DATA_TYPE', `${path}: top-level JSON must be an array of records or an object keyed by prompt, got ${typeof doc}`);
}

/**
 * Iterate the records of a data file.
 * A file whose first character is `[` is a JSON array; otherwise it is JSONL (one JSON value per line,
 * blank lines skipped), unless its first line is not valid JSON but the whole file is (a pretty-printed
 * JSON object).
 * @param opts.onParseError when given, a malformed JSONL line (after the first) is reported to it and
 *   skipped instead of thrown (`dpo validate` lists every bad line)
 * @throws DataError DATA_NOT_FOUND, EMPTY_DATA, DATA_PARSE_FAILED (with the 1-based `line` for JSONL), INVALID_DATA_TYPE
 */
export async function* readRecords(
  path: string,
  info?: { container?: Container },
  opts: { onParseError?: (e: DataError) => void } = {},
): AsyncGenerator<RawRecord> {
  try {
    const st = await stat(path);
    if (!st.isFile()) throw new Error('not a file');
  } catch {
    throw new DataError('DATA_NOT_FOUND', `data file ${path} does not exist or is not a file`);
  }
  const c = await firstChar(path);
  if (c === null) throw new DataError('EMPTY_DATA', `${path}: the file is empty`);
  if (c === '[') {
    if (info) info.container = 'json';
    let doc: unknown;
    try {
      doc = JSON.parse(await readAllText(path));
    } catch (e) {
      throw new DataError('DATA_PARSE_FAILED', `${path}: invalid JSON array (${(e as Error).message})`, { cause: e });
    }
    yield* fromParsed(doc, path);
    return;
  }
  if (info) info.container = 'jsonl';
  const s = await textStream(path);
  const rl = createInterface({ input: s, crlfDelay: Infinity });
  let line = 0;
  let index = 0;
  try {
    for await (const raw of rl) {
      line++;
      const text = line === 1 ? raw.replace(/^\uFEFF/, '') : raw;
      if (text.trim() === '') continue;
      let value: unknown;
      try {
        value = JSON.parse(text);
      } catch (e) {
        if (index === 0) {
          // maybe a pretty-printed JSON document rather than JSONL
          rl.close();
          s.destroy();
          let doc: unknown;
          try {
            doc = JSON.parse(await readAllText(path));
          } catch {
            throw new DataError('DATA_PARSE_FAILED', `${path}:${line}: invalid JSON on line ${line} (${(e as Error).message})`, { line, cause: e });
          }
          if (info) info.container = 'json-object';
          yield* fromParsed(doc, path);
          return;
        }
        const err = new DataError('DATA_PARSE_FAILED', `${path}:${line}: invalid JSON on line ${line} (${(e as Error).message})`, { line, cause: e });
        if (!opts.onParseError) throw err;
        opts.onParseError(err);
        continue;
      }
      if (value && typeof value === 'object' && !Array.isArray(value) && isKeyedGroup(value as Record<string, unknown>)) {
        // a JSONL line keyed by prompt: {"<prompt>": {responses, pairs, sft_target}}
        for (const [prompt, v] of Object.entries(value as Record<string, unknown>)) {
          yield { value: { prompt, ...(v as object) }, index: index++, line };
        }
        continue;
      }
      yield { value, index: index++, line };
    }
  } finally {
    rl.close();
    s.destroy();
  }
}

function isKeyedGroup(o: Record<string, unknown>): boolean {
  if ('responses' in o || 'prompt' in o || 'chosen' in o) return false;
  const vals = Object.values(o);
  return vals.length > 0 && vals.every((v) => v !== null && typeof v === 'object' && !Array.isArray(v) && 'responses' in (v as object));
}
