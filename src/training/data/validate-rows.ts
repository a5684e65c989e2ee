/**
 * The webhook's row checks (`POST /trigger-finetune` answers 400 with the first 20 problems).
 * Rows must be `{prompt, chosen, rejected}` with non-empty strings and chosen ≠ rejected (docs/service.md
 * "POST /trigger-finetune").
 */
import type { DataProblem } from './errors.js';

const FIELDS = ['prompt', 'chosen', 'rejected'] as const;

/**
 * Check webhook rows; never throws.
 * Codes: INVALID_ROW_TYPE, MISSING_FIELD, INVALID_FIELD_TYPE, EMPTY_FIELD (blank after trimming),
 * CHOSEN_EQUALS_REJECTED (identical, or identical after trimming whitespace), EMPTY_DATASET (index -1).
 * @param limit stop after this many problems (default: all)
 * @returns problems in row order.
 */
export function validateRows(rows: unknown[], limit = Infinity): DataProblem[] {
  const out: DataProblem[] = [];
  const add = (p: DataProblem) => {
    if (out.length < limit) out.push(p);
  };
  /** A problem of row `index`: `detail` names the field and the fix; `message` prefixes the row. */
  const rowProblem = (index: number, field: string, code: string, detail: string): DataProblem => ({
    index,
    field,
    code,
    detail,
    message: `row ${index}${field ? ': ' : ' '}${detail}`,
  });
  if (!Array.isArray(rows)) {
    return [{ index: -1, field: 'dataset', code: 'INVALID_DATASET_TYPE', message: 'dataset must be an array of {prompt, chosen, rejected} rows' }];
  }
  if (rows.length === 0)
    add({ index: -1, field: 'dataset', code: 'EMPTY_DATASET', message: 'dataset has no rows; send at least one {prompt, chosen, rejected}' });
  for (let index = 0; index < rows.length && out.length < limit; index++) {
    const row = rows[index];
    if (row === null || typeof row !== 'object' || Array.isArray(row)) {
      add(rowProblem(index, '', 'INVALID_ROW_TYPE', 'must be an object {prompt, chosen, rejected}'));
      continue;
    }
    const r = row as Record<string, unknown>;
    let ok = true;
    for (const field of FIELDS) {
      const v = r[field];
      if (v === undefined || v === null) {
        add(rowProblem(index, field, 'MISSING_FIELD', `${field} is missing`));
        ok = false;
      } else if (typeof v !== 'string') {
        add(rowProblem(index, field, 'INVALID_FIELD_TYPE', `${field} must be a string, got ${Array.isArray(v) ? 'an array' : typeof v}`));
        ok = false;
      } else if (v.trim() === '') {
        add(rowProblem(index, field, 'EMPTY_FIELD', `${field} is empty`));
        ok = false;
      }
    }
    if (ok && (r.chosen as string).trim() === (r.rejected as string).trim()) {
      add(rowProblem(index, 'rejected', 'CHOSEN_EQUALS_REJECTED', 'rejected is the same text as chosen; a pair must differ'));
    }
  }
  return out;
}
