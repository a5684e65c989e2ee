/**
 * The webhook's semantic row checks are the data module's (src/training/data validateRows: chosen ==
 * rejected, blank text, ...): one set of rules and codes for the API, the worker and `dpo validate`.
 */
import type { RowValidator } from './routes/trigger.js';

/**
 * validateRows from src/training/data (its own small module: the API does not load the training stack).
 * Async so callers need not change if it ever has to load more.
 */
export async function loadRowValidator(): Promise<RowValidator> {
  const { validateRows } = await import('../training/data/validate-rows.js');
  return validateRows;
}
