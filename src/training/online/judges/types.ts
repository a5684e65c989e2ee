/**
 * What every judge of online DPO is: given prompts and each prompt's sampled completions (text), one score
 * per completion, higher is better. The stage forms the chosen / rejected pair from the highest and lowest.
 */

/** One prompt and its completions (the text after the prompt, as decoded). */
export interface JudgeItem {
  prompt: string;
  completions: string[];
}

export interface Judge {
  /** `rule`, `reward_model` or `http`. */
  readonly type: string;
  /**
   * Scores of the completions, `scores[i][j]` for `items[i].completions[j]` (finite numbers).
   * @throws JudgeError
   */
  score(items: JudgeItem[]): Promise<number[][]>;
  /** Free what the judge holds (the reward model's weights). */
  dispose(): void;
}

export type JudgeErrorCode = 'INVALID_JUDGE_CONFIG' | 'JUDGE_REQUEST_FAILED' | 'INVALID_JUDGE_RESPONSE' | 'UNSUPPORTED_REWARD_MODEL';

/** A judge that cannot be built or did not give valid scores; `key` names the config setting when known. */
export class JudgeError extends Error {
  readonly code: JudgeErrorCode;
  readonly key: string;
  constructor(code: JudgeErrorCode, key: string, message: string, options?: { cause?: unknown }) {
    super(`${key}: ${message}`, options);
    this.name = 'JudgeError';
    this.code = code;
    this.key = key;
  }
}
