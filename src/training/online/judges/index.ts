/**
 * The judges of online DPO: `rule` (keywords, regex, length), `reward_model` (a Hugging Face
 * *ForSequenceClassification checkpoint) and `http` (a signed POST to a scoring service).
 */
import type { JudgeSettings } from '../schema.js';
import { createHttpJudge } from './http.js';
import { createRewardModelJudge } from './reward-model.js';
import { createRuleJudge } from './rule.js';
import type { Judge } from './types.js';

export { createHttpJudge, validateJudgeResponse, DEFAULT_JUDGE_SECRET_ENV } from './http.js';
export { createRewardModelJudge, loadRewardModel, rewardScores, lastNonPadIndex, type RewardModel } from './reward-model.js';
export { createRuleJudge, loadRules, parseRules, ruleScorer } from './rule.js';
export { JudgeError, type Judge, type JudgeErrorCode, type JudgeItem } from './types.js';

/**
 * The judge of `settings`.
 * @throws JudgeError (INVALID_JUDGE_CONFIG, UNSUPPORTED_REWARD_MODEL); model-layer errors for a reward model
 */
export async function createJudge(settings: JudgeSettings): Promise<Judge> {
  switch (settings.type) {
    case 'rule':
      return createRuleJudge(settings);
    case 'http':
      return createHttpJudge(settings);
    case 'reward_model':
      return createRewardModelJudge(settings);
  }
}
