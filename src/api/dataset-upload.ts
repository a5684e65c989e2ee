/**
 * Receiving and checking an uploaded dataset without holding it in memory:
 * 1. `receiveToFile`: the request stream goes to a temporary file while its bytes are counted (refused past
 *    MAX_DATASET_BYTES, as sent, i.e. compressed for gzip) and hashed (sha256: the content address);
 * 2. `checkDatasetFile`: the data module reads the file the way training will (every format it knows, JSON,
 *    JSONL and gzip of either; JSONL streamed record by record, a JSON array parsed whole) and reports its
 *    format, pairs, problems (errors reject the upload, warnings are returned) and duplicates;
 * 3. token statistics with the model's tokenizer: every pair is tokenised as training will (prompt +
 *    chosen, prompt + rejected, BOS/EOS counted) while the text seen stays under TOKEN_STATS_CHAR_BUDGET
 *    (20 M characters, about 30 s of tokenising here); past it, tokens are extrapolated from the measured
 *    characters per token and `tokensExact` is false. `truncated` counts pairs over max_length.
 * Messages never contain the temporary path (the file is called "upload" in them).
 */
import { createHash } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { Transform, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { Tokenizer } from '../training/types.js';
import { ApiError } from './errors.js';

/** The upload is larger than MAX_DATASET_BYTES (413). */
export class DatasetTooLargeError extends ApiError {
  constructor(limit: number) {
    super(413, 'DATASET_TOO_LARGE', `the dataset is larger than ${limit} bytes (MAX_DATASET_BYTES); split it or compress it with gzip`);
  }
}

export interface ReceivedFile {
  path: string;
  bytes: number;
  sha256: string;
}

/**
 * Stream `body` into `<dir>/<random>.upload`, counting and hashing.
 * @throws DatasetTooLargeError past `limit` bytes (the partial file is removed); ApiError 400 EMPTY_DATASET for no bytes
 */
export async function receiveToFile(body: Readable, dir: string, limit: number): Promise<ReceivedFile> {
  await mkdir(dir, { recursive: true });
  const path = join(dir, `${Date.now()}-${Math.random().toString(36).slice(2)}.upload`);
  const hash = createHash('sha256');
  let bytes = 0;
  const meter = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      bytes += chunk.length;
      if (bytes > limit) return cb(new DatasetTooLargeError(limit));
      hash.update(chunk);
      cb(null, chunk);
    },
  });
  try {
    await pipeline(body, meter, createWriteStream(path));
  } catch (err) {
    await rm(path, { force: true });
    if (err instanceof ApiError) throw err;
    throw new ApiError(400, 'UPLOAD_ABORTED', `the upload did not complete: ${(err as Error).message}`);
  }
  if (bytes === 0) {
    await rm(path, { force: true });
    throw new ApiError(400, 'EMPTY_DATASET', 'the body is empty: send the dataset file (JSON, JSONL or gzip of either)');
  }
  return { path, bytes, sha256: hash.digest('hex') };
}

export interface DatasetProblem {
  /** `line 12 (pair 11)` style location, or '' for the whole file. */
  where: string;
  code: string;
  message: string;
  level: 'error' | 'warning';
}

export interface DatasetCheck {
  ok: boolean;
  /** The format detected (explicit, implicit, conversational, sharegpt, ...). */
  format: string | null;
  /** `json`, `jsonl`, `json-object`; `gzip` is reported separately. */
  container: string | null;
  gzip: boolean;
  records: number;
  rows: number;
  problems: DatasetProblem[];
  errorCount: number;
  warningCount: number;
  stats: { tokens: number; tokensExact: boolean; truncated: number; duplicates: number; chosenEqualsRejected: number };
}

export const TOKEN_STATS_CHAR_BUDGET = 20_000_000;

/**
 * Check a received file with the data module and count tokens.
 * @param opts.tokenizer the model's tokenizer; maxLength for `truncated`
 */
export async function checkDatasetFile(
  path: string,
  opts: { tokenizer: Tokenizer; maxLength: number; maxPromptLength: number; format?: string; charBudget?: number },
): Promise<DatasetCheck> {
  const { inspectDataset, iteratePreferenceExamples } = await import('../training/data/index.js');
  const { tokenizerAddsBos } = await import('../training/tokenizers/index.js');
  const clean = (m: string): string => m.split(path).join('upload');
  // pass 1: structure, problems, duplicates (character lengths: fast)
  const report = await inspectDataset(path, { format: opts.format, maxProblems: 50 });
  const problems: DatasetProblem[] = [
    ...(report.fatal
      ? [
          {
            where: report.fatal.line ? `line ${report.fatal.line}` : '',
            code: report.fatal.code,
            message: clean(report.fatal.message),
            level: 'error' as const,
          },
        ]
      : []),
    ...report.errors.map((p) => ({
      where: p.line !== undefined ? `line ${p.line}` : `record ${p.index}`,
      code: p.code,
      message: clean(p.message),
      level: 'error' as const,
    })),
    ...report.warnings.map((p) => ({
      where: p.line !== undefined ? `line ${p.line}` : `record ${p.index}`,
      code: p.code,
      message: clean(p.message),
      level: 'warning' as const,
    })),
  ];
  const fh = await import('node:fs/promises').then((m) => m.open(path, 'r'));
  const magic = Buffer.alloc(2);
  await fh.read(magic, 0, 2, 0);
  await fh.close();
  const gzip = magic[0] === 0x1f && magic[1] === 0x8b;
  const out: DatasetCheck = {
    ok: report.ok,
    format: report.format,
    container: report.container,
    gzip,
    records: report.records,
    rows: report.pairs,
    problems,
    errorCount: report.errorCount + (report.fatal ? 1 : 0),
    warningCount: report.warningCount,
    stats: { tokens: 0, tokensExact: true, truncated: 0, duplicates: report.counts.duplicates, chosenEqualsRejected: report.counts.chosenEqualsRejected },
  };
  if (!report.ok) return out;
  // pass 2: tokens as training counts them, within the character budget
  const tok = opts.tokenizer;
  const bos = tok.bosTokenId != null && tokenizerAddsBos(tok) ? 1 : 0;
  const eos = tok.eosTokenId != null ? 1 : 0;
  const budget = opts.charBudget ?? TOKEN_STATS_CHAR_BUDGET;
  let chars = 0;
  let tokenizedChars = 0;
  let tokens = 0;
  let pairs = 0;
  let tokenizedPairs = 0;
  let over = 0;
  let allChars = 0;
  for await (const b of iteratePreferenceExamples(path, { format: opts.format, onBadRecord: () => {} })) {
    for (const ex of b.examples) {
      pairs++;
      const c = 2 * ex.prompt.length + ex.chosen.length + ex.rejected.length;
      allChars += c;
      if (chars + c > budget && tokenizedPairs > 0) continue;
      chars += c;
      const p = tok.encode(ex.prompt).length + bos;
      const lc = tok.encode(ex.prompt + ex.chosen).length - (p - bos) + eos;
      const lr = tok.encode(ex.prompt + ex.rejected).length - (p - bos) + eos;
      tokens += 2 * p + lc + lr;
      if (p + Math.max(lc, lr) > opts.maxLength) over++;
      tokenizedChars += c;
      tokenizedPairs++;
    }
  }
  if (tokenizedPairs < pairs) {
    const perChar = tokens / Math.max(1, tokenizedChars);
    out.stats.tokens = Math.round(tokens + (allChars - tokenizedChars) * perChar);
    out.stats.truncated = Math.round((over * pairs) / tokenizedPairs);
    out.stats.tokensExact = false;
  } else {
    out.stats.tokens = tokens;
    out.stats.truncated = over;
  }
  return out;
}
