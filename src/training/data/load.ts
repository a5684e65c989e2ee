/**
 * Source resolution and streaming conversion of preference data (see formats.ts for the formats).
 */
import type { PreferenceExample } from '../types.js';
import { DataError } from './errors.js';
import { convertRecord, detectFormat, resolveFormatName, type DataFormat, type FormatOptions } from './formats.js';
import { readRecords, type Container } from './readers.js';
import { resolveDataset } from './registry.js';
import { dedupExamples } from './split.js';

export interface LoadOptions extends FormatOptions {
  /** Format name or alias (see DATA_FORMATS / FORMAT_ALIASES); detected from the first record when absent. */
  format?: string;
  /** Called for a record that cannot be converted or a JSONL line that does not parse, which is then skipped (default: throw). */
  onBadRecord?: (e: DataError) => void;
}

/** One converted record. */
export interface ExampleBatch {
  examples: PreferenceExample[];
  index: number;
  line?: number;
  format: DataFormat;
}

/** Where a source lives after resolving registered names. */
export interface ResolvedSource {
  path?: string;
  rows?: unknown[];
  format?: string;
  label: string;
}

/** Resolve a registered dataset name (config/datasets/<name>.yaml), a path, or in-memory rows. */
export function resolveSource(source: string | unknown[], opts: { format?: string } = {}): ResolvedSource {
  if (Array.isArray(source)) return { rows: source, format: opts.format, label: 'rows' };
  const entry = resolveDataset(source);
  if (entry) return { path: entry.path, format: opts.format ?? entry.format, label: `${source} (${entry.path})` };
  return { path: source, format: opts.format, label: source };
}

/**
 * Stream the examples of a source, one record at a time (JSONL is never held whole in memory).
 * @param info receives the detected format and container as soon as they are known
 * @throws DataError DATA_NOT_FOUND, DATA_PARSE_FAILED (with `line`), UNKNOWN_DATA_FORMAT, INVALID_DATA_RECORD
 *   (with `index`, `line`, `field`), EMPTY_DATA
 */
export async function* iteratePreferenceExamples(
  source: string | unknown[],
  opts: LoadOptions = {},
  info: { format?: DataFormat; container?: Container | 'rows'; label?: string } = {},
): AsyncGenerator<ExampleBatch> {
  const src = resolveSource(source, opts);
  info.label = src.label;
  let format: DataFormat | undefined = src.format ? resolveFormatName(src.format) : undefined;
  if (format) info.format = format;
  const records: AsyncIterable<{ value: unknown; index: number; line?: number }> | Iterable<{ value: unknown; index: number }> = src.rows
    ? src.rows.map((value, index) => ({ value, index }))
    : readRecords(src.path!, info as { container?: Container }, { onParseError: opts.onBadRecord });
  if (src.rows) info.container = 'rows';
  for await (const rec of records) {
    const where = (rec as { line?: number }).line !== undefined ? `${src.label}:${(rec as { line?: number }).line}` : `${src.label} record ${rec.index}`;
    if (!format) {
      try {
        format = detectFormat(rec.value, opts);
      } catch (e) {
        if (e instanceof DataError) throw new DataError(e.code, `${where}: ${e.message}`, { index: rec.index, line: (rec as { line?: number }).line });
        throw e;
      }
      info.format = format;
    }
    let examples: PreferenceExample[];
    try {
      examples = convertRecord(rec.value, format, opts);
    } catch (e) {
      if (e instanceof DataError) {
        const wrapped = new DataError(e.code, `${where} (${format}): ${e.message}`, {
          index: rec.index,
          line: (rec as { line?: number }).line,
          field: e.field,
          reason: e.reason,
          cause: e,
        });
        if (opts.onBadRecord) {
          opts.onBadRecord(wrapped);
          continue;
        }
        throw wrapped;
      }
      throw e;
    }
    yield { examples, index: rec.index, line: (rec as { line?: number }).line, format };
  }
}

/**
 * Load all preference examples of a source: a file path (JSON array, JSONL, .gz of either), a registered
 * dataset name (`toy`, `hh`, ...: config/datasets/<name>.yaml), or in-memory rows (the webhook's dataset).
 * Chat-shaped formats are rendered with `opts.tokenizer`'s chat template (plain HH layout without one).
 * `opts.dedup` drops exact duplicate pairs (same prompt, chosen, rejected), keeping the first.
 * @returns examples in file order (grouped/ranked records expand to several pairs)
 * @throws DataError (see {@link iteratePreferenceExamples}); EMPTY_DATA when nothing was read
 */
export async function loadPreferenceExamples(source: string | unknown[], opts: LoadOptions & { dedup?: boolean } = {}): Promise<PreferenceExample[]> {
  const out: PreferenceExample[] = [];
  const info: { label?: string } = {};
  for await (const b of iteratePreferenceExamples(source, opts, info)) for (const ex of b.examples) out.push(ex);
  if (out.length === 0) throw new DataError('EMPTY_DATA', `${info.label ?? 'dataset'}: no preference pairs found`);
  return opts.dedup ? dedupExamples(out).examples : out;
}
