/**
 * The rules that make a preference pair unusable for DPO. One definition for both views of the data:
 * `dpo validate` reports these as errors, and training drops (and counts) the pairs that break them.
 */
import type { PreferenceExample } from '../types.js';

/** Why a pair cannot be trained on. */
export interface PairError {
  field: 'chosen' | 'rejected';
  code: 'EMPTY_FIELD' | 'CHOSEN_EQUALS_REJECTED';
  /** What is wrong, without the pair's location (`chosen is empty`). */
  detail: string;
}

/**
 * The errors of one pair: an empty (whitespace-only) chosen or rejected response — e.g. after the prompt was
 * extracted from an implicit-prompt record — or a rejected response equal to the chosen one (no preference
 * signal: the DPO margin is identically zero).
 * @returns an empty list for a usable pair
 */
export function pairErrors(ex: PreferenceExample): PairError[] {
  const out: PairError[] = [];
  if (ex.chosen.trim() === '') out.push({ field: 'chosen', code: 'EMPTY_FIELD', detail: 'chosen is empty' });
  if (ex.rejected.trim() === '') out.push({ field: 'rejected', code: 'EMPTY_FIELD', detail: 'rejected is empty' });
  if (ex.chosen.trim() === ex.rejected.trim()) out.push({ field: 'rejected', code: 'CHOSEN_EQUALS_REJECTED', detail: 'rejected is the same text as chosen' });
  return out;
}
