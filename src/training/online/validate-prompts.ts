/**
 * The webhook's row checks for `method: online_dpo`: rows are `{prompt}` with a non-empty string prompt and,
 * optionally, `chosen` (an SFT target, a non-empty string). Same problem shape and codes as the preference
 * rows' validateRows (src/training/data/validate-rows.ts). Light module: the API imports it.
 */
import { ConfigError } from '../../config/errors.js';
import type { DataProblem } from '../data/errors.js';
import type { DatasetRow, PreferenceExample } from '../types.js';

/**
 * Check prompt rows; never throws.
 * Codes: INVALID_ROW_TYPE, MISSING_FIELD, INVALID_FIELD_TYPE, EMPTY_FIELD, EMPTY_DATASET (index -1).
 * @param limit stop after this many problems (default: all)
 */
export function validatePromptRows(rows: unknown[], limit = Infinity): DataProblem[] {
  const out: DataProblem[] = [];
  const add = (index: number, field: string, code: string, detail: string): void => {
    if (out.length < limit) out.push({ index, field, code, detail, message: `row ${index}${field ? ': ' : ' '}${detail}` });
  };
  if (!Array.isArray(rows)) return [{ index: -1, field: 'dataset', code: 'INVALID_DATASET_TYPE', message: 'dataset must be an array of {prompt} rows' }];
  if (rows.length === 0) out.push({ index: -1, field: 'dataset', code: 'EMPTY_DATASET', message: 'dataset has no rows; send at least one {prompt}' });
  rows.forEach((row, index) => {
    if (row === null || typeof row !== 'object' || Array.isArray(row)) return add(index, '', 'INVALID_ROW_TYPE', 'must be an object {prompt, chosen?}');
    const r = row as Record<string, unknown>;
    for (const [field, required] of [
      ['prompt', true],
      ['chosen', false],
    ] as const) {
      const v = r[field];
      if (v === undefined || v === null) {
        if (required) add(index, field, 'MISSING_FIELD', `${field} is missing`);
      } else if (typeof v !== 'string') add(index, field, 'INVALID_FIELD_TYPE', `${field} must be a string, got ${Array.isArray(v) ? 'an array' : typeof v}`);
      else if (v.trim() === '') add(index, field, 'EMPTY_FIELD', `${field} is empty`);
    }
  });
  return out;
}

/**
 * The caller's rows for the offline DPO data phase: every row must be a pair.
 * @throws ConfigError (`stage`) when a row has no chosen/rejected (prompt-only rows need stage online_dpo)
 */
export function preferenceRowsOnly(d: DatasetRow[] | string | undefined): PreferenceExample[] | string | undefined {
  if (d === undefined || typeof d === 'string') return d;
  const bad = d.findIndex((r) => typeof (r as Partial<PreferenceExample>).rejected !== 'string' || typeof r.chosen !== 'string');
  if (bad >= 0) throw new ConfigError('stage', `dataset row ${bad} has no chosen/rejected pair; prompt-only rows need stage online_dpo (method: online_dpo)`);
  return d as PreferenceExample[];
}
