/**
 * `dpo validate` / tools/validate-data: stream a dataset once and report its format, counts, length
 * percentiles (tokens with a tokenizer, else characters), duplicates, chosen == rejected pairs, empty
 * fields and over-length pairs. Memory: one record at a time plus a 16-byte hash per pair and the length
 * arrays, so a large JSONL validates in bounded memory.
 */
import { createHash } from 'node:crypto';
import type { Tokenizer } from '../types.js';
import { pairErrors } from './checks.js';
import type { DataError, DataProblem } from './errors.js';
import type { DataFormat } from './formats.js';
import type { Container } from './readers.js';
import { iteratePreferenceExamples, type LoadOptions } from './load.js';
import type { TruncationMode } from './tokenize.js';
import { tokenizerAddsBos } from '../tokenizers/index.js';

export interface InspectOptions extends LoadOptions {
  /** Token lengths with this tokenizer; character lengths without. */
  tokenizer?: Tokenizer;
  maxLength?: number;
  maxPromptLength?: number;
  truncationMode?: TruncationMode;
  /** How many problems to keep in the report (default 50); all are counted. */
  maxProblems?: number;
}

export interface LengthStats {
  min: number;
  p50: number;
  p90: number;
  p95: number;
  p99: number;
  max: number;
  mean: number;
}

export interface DatasetReport {
  source: string;
  format: DataFormat | null;
  container: string | null;
  records: number;
  pairs: number;
  unit: 'tokens' | 'chars';
  lengths: { prompt: LengthStats; chosen: LengthStats; rejected: LengthStats; sequence: LengthStats } | null;
  counts: {
    duplicates: number;
    chosenEqualsRejected: number;
    emptyPrompt: number;
    emptyChosen: number;
    emptyRejected: number;
    overLength: number;
    promptFillsMaxLength: number;
    badRecords: number;
  };
  /** Problems that make the data unusable (exit code 1). */
  errors: DataProblem[];
  errorCount: number;
  /** Worth knowing, not fatal. */
  warnings: DataProblem[];
  warningCount: number;
  /** A fatal read/parse error that stopped the scan (e.g. a malformed JSONL line). */
  fatal: { code: string; message: string; line?: number } | null;
  ok: boolean;
}

function percentile(sorted: Int32Array, q: number): number {
  if (sorted.length === 0) return 0;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))]!;
}

class LengthAcc {
  private a = new Int32Array(1024);
  n = 0;
  push(x: number): void {
    if (this.n === this.a.length) {
      const b = new Int32Array(this.a.length * 2);
      b.set(this.a);
      this.a = b;
    }
    this.a[this.n++] = x;
  }
  stats(): LengthStats {
    const s = this.a.slice(0, this.n).sort();
    let sum = 0;
    for (const x of s) sum += x;
    return {
      min: s.length ? s[0]! : 0,
      p50: percentile(s, 0.5),
      p90: percentile(s, 0.9),
      p95: percentile(s, 0.95),
      p99: percentile(s, 0.99),
      max: s.length ? s[s.length - 1]! : 0,
      mean: s.length ? sum / s.length : 0,
    };
  }
}

/**
 * Scan a dataset and build its report. Never throws for bad data: read errors land in `fatal`,
 * record problems in `errors`/`warnings`; `ok` is false when there is any error or a fatal.
 * Length rule for over-length / prompt-fills: the same as {@link tokenizePreference} (BOS and EOS counted
 * when a tokenizer is given).
 */
export async function inspectDataset(source: string | unknown[], opts: InspectOptions = {}): Promise<DatasetReport> {
  const maxProblems = opts.maxProblems ?? 50;
  const tok = opts.tokenizer;
  const maxLength = opts.maxLength ?? 512;
  const maxPromptLength = opts.maxPromptLength ?? 256;
  const report: DatasetReport = {
    source: typeof source === 'string' ? source : 'rows',
    format: null,
    container: null,
    records: 0,
    pairs: 0,
    unit: tok ? 'tokens' : 'chars',
    lengths: null,
    counts: { duplicates: 0, chosenEqualsRejected: 0, emptyPrompt: 0, emptyChosen: 0, emptyRejected: 0, overLength: 0, promptFillsMaxLength: 0, badRecords: 0 },
    errors: [],
    errorCount: 0,
    warnings: [],
    warningCount: 0,
    fatal: null,
    ok: false,
  };
  const err = (p: DataProblem) => {
    report.errorCount++;
    if (report.errors.length < maxProblems) report.errors.push(p);
  };
  const warn = (p: DataProblem) => {
    report.warningCount++;
    if (report.warnings.length < maxProblems) report.warnings.push(p);
  };
  const seen = new Set<string>();
  const L = { prompt: new LengthAcc(), chosen: new LengthAcc(), rejected: new LengthAcc(), sequence: new LengthAcc() };
  const bosExtra = tok && tok.bosTokenId != null && tokenizerAddsBos(tok) ? 1 : 0;
  const eosExtra = tok && tok.eosTokenId != null ? 1 : 0;
  const info: { format?: DataFormat; container?: Container | 'rows'; label?: string } = {};

  const where = (line: number | undefined, pair: number) => (line !== undefined ? `line ${line} (pair ${pair})` : `pair ${pair}`);
  const onBadRecord = (e: DataError): void => {
    report.counts.badRecords++;
    err({
      index: e.index ?? -1,
      ...(e.line !== undefined ? { line: e.line } : {}),
      field: e.field ?? '',
      code: e.code === 'DATA_PARSE_FAILED' ? 'JSON_PARSE_FAILED' : (e.reason ?? 'INVALID_RECORD'),
      message: e.message,
    });
  };
  try {
    for await (const b of iteratePreferenceExamples(source, { ...opts, onBadRecord }, info)) {
      report.records++;
      for (const ex of b.examples) {
        const index = report.pairs++;
        const at = { index: b.index, ...(b.line !== undefined ? { line: b.line } : {}) };
        if (ex.prompt.trim() === '') {
          report.counts.emptyPrompt++;
          warn({ ...at, field: 'prompt', code: 'EMPTY_FIELD', message: `${where(b.line, index)}: prompt is empty` });
        }
        for (const e of pairErrors(ex)) {
          if (e.code === 'CHOSEN_EQUALS_REJECTED') report.counts.chosenEqualsRejected++;
          else if (e.field === 'chosen') report.counts.emptyChosen++;
          else report.counts.emptyRejected++;
          err({ ...at, field: e.field, code: e.code, message: `${where(b.line, index)}: ${e.detail}` });
        }
        const h = createHash('sha1').update(ex.prompt).update('\u0000').update(ex.chosen).update('\u0000').update(ex.rejected).digest('base64');
        if (seen.has(h)) {
          report.counts.duplicates++;
          warn({ ...at, field: '', code: 'DUPLICATE', message: `${where(b.line, index)} repeats an earlier pair` });
        } else seen.add(h);
        let lp: number, lc: number, lr: number;
        if (tok) {
          const pIds = tok.encode(ex.prompt);
          lp = pIds.length + (bosExtra && pIds[0] !== tok.bosTokenId ? 1 : 0);
          lc = tok.encode(ex.prompt + ex.chosen).length - pIds.length + eosExtra;
          lr = tok.encode(ex.prompt + ex.rejected).length - pIds.length + eosExtra;
        } else {
          lp = ex.prompt.length;
          lc = ex.chosen.length;
          lr = ex.rejected.length;
        }
        const longest = Math.max(lc, lr);
        L.prompt.push(lp);
        L.chosen.push(lc);
        L.rejected.push(lr);
        L.sequence.push(lp + longest);
        if (tok) {
          if (lp + longest > maxLength) {
            report.counts.overLength++;
            warn({
              ...at,
              field: '',
              code: 'OVER_LENGTH',
              message: `${where(b.line, index)}: ${lp + longest} tokens > max_length ${maxLength}; it will be truncated`,
            });
          }
          const promptAfter = lp + longest > maxLength && lp > maxPromptLength ? maxPromptLength : lp;
          if (promptAfter >= maxLength) {
            report.counts.promptFillsMaxLength++;
            warn({
              ...at,
              field: 'prompt',
              code: 'PROMPT_FILLS_MAX_LENGTH',
              message: `${where(b.line, index)}: the prompt alone fills max_length ${maxLength}; it will be dropped`,
            });
          }
        }
      }
    }
  } catch (e) {
    const de = e as DataError;
    report.fatal = { code: de.code ?? 'DATA_ERROR', message: de.message, ...(de.line !== undefined ? { line: de.line } : {}) };
  }
  report.format = info.format ?? null;
  report.container = info.container ?? null;
  if (report.pairs > 0) report.lengths = { prompt: L.prompt.stats(), chosen: L.chosen.stats(), rejected: L.rejected.stats(), sequence: L.sequence.stats() };
  if (report.pairs === 0 && !report.fatal) report.fatal = { code: 'EMPTY_DATA', message: `${info.label ?? report.source}: no preference pairs found` };
  report.ok = report.errorCount === 0 && report.fatal === null;
  return report;
}
