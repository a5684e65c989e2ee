/**
 * Typed errors of the preference-data readers. `code` is stable; `line` (1-based, JSONL) or `index`
 * (0-based record) and `field` locate the problem.
 */
export type DataErrorCode =
  | 'DATA_NOT_FOUND'
  | 'DATA_PARSE_FAILED'
  | 'INVALID_DATA_TYPE'
  | 'EMPTY_DATA'
  | 'UNKNOWN_DATA_FORMAT'
  | 'INVALID_DATA_RECORD'
  | 'UNKNOWN_DATASET';

export class DataError extends Error {
  readonly code: DataErrorCode;
  readonly line?: number;
  readonly index?: number;
  readonly field?: string;
  /** For INVALID_DATA_RECORD: MISSING_FIELD, INVALID_FIELD_TYPE, EMPTY_FIELD or INVALID_FIELD. */
  readonly reason?: string;
  constructor(code: DataErrorCode, message: string, where: { line?: number; index?: number; field?: string; reason?: string; cause?: unknown } = {}) {
    super(message, where.cause !== undefined ? { cause: where.cause } : undefined);
    this.name = 'DataError';
    this.code = code;
    this.line = where.line;
    this.index = where.index;
    this.field = where.field;
    this.reason = where.reason;
  }
}

/** One problem in one row, as the webhook reports it (first 20) and `dpo validate` lists it. */
export interface DataProblem {
  /** 0-based row index. */
  index: number;
  /** The offending field (`prompt`, `chosen`, `rejected`, ...) or `''` for the row itself. */
  field: string;
  /** Stable code: INVALID_ROW_TYPE, MISSING_FIELD, INVALID_FIELD_TYPE, EMPTY_FIELD, CHOSEN_EQUALS_REJECTED, ... */
  code: string;
  message: string;
  /** The message without the row prefix (`chosen is empty`), for callers that name the row themselves. */
  detail?: string;
  /** 1-based line number in a JSONL file, when known. */
  line?: number;
}
