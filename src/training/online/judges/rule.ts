/**
 * The rule judge: a completion's score is the sum of its rules, each a plain text feature —
 * - `keywords`: `weight` per whole-word, case-insensitive occurrence of any listed word or phrase
 *   (`count: presence`: once per listed word present);
 * - `regex`: `weight` when the pattern matches the completion (`count: occurrences`: per match);
 * - `length`: −`weight` per word (or char) the completion is shorter than `min` or longer than `max`.
 * Rules come inline (`judge.rules`) or from a YAML file `{rules: [...]}` (`judge.file`: a path, or a name of
 * config/judge/<name>.yaml). The prompt is not scored.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Value } from '@sinclair/typebox/value';
import YAML from 'yaml';
import { configDir } from '../../../config/paths.js';
import { JudgeRulesSchema, type JudgeRule, type RuleJudgeSettings } from '../schema.js';
import { JudgeError, type Judge, type JudgeItem } from './types.js';

const escapeRegex = (s: string): string => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

type Scorer = (text: string) => number;

function compile(rule: JudgeRule, where: string): Scorer {
  switch (rule.type) {
    case 'keywords': {
      const presence = rule.count === 'presence';
      const res = rule.words.map((w) => new RegExp(`(?<![\\p{L}\\p{N}_])${escapeRegex(w)}(?![\\p{L}\\p{N}_])`, 'giu'));
      return (text) => {
        let hits = 0;
        for (const re of res) {
          const n = text.match(re)?.length ?? 0;
          hits += presence ? Math.min(n, 1) : n;
        }
        return rule.weight * hits;
      };
    }
    case 'regex': {
      let re: RegExp;
      try {
        re = new RegExp(rule.pattern, `${rule.flags ?? ''}g`);
      } catch (e) {
        throw new JudgeError('INVALID_JUDGE_CONFIG', `${where}.pattern`, `is not a valid regular expression: ${(e as Error).message}`);
      }
      const occurrences = rule.count === 'occurrences';
      return (text) => {
        const n = text.match(re)?.length ?? 0;
        return rule.weight * (occurrences ? n : Math.min(n, 1));
      };
    }
    case 'length': {
      if (rule.min !== undefined && rule.max !== undefined && rule.min > rule.max) {
        throw new JudgeError('INVALID_JUDGE_CONFIG', `${where}.min`, `must not exceed max (${rule.max}), got ${rule.min}`);
      }
      const words = (rule.unit ?? 'words') === 'words';
      return (text) => {
        const len = words ? (text.trim() === '' ? 0 : text.trim().split(/\s+/u).length) : [...text].length;
        const short = rule.min !== undefined ? Math.max(0, rule.min - len) : 0;
        const long = rule.max !== undefined ? Math.max(0, len - rule.max) : 0;
        return -rule.weight * (short + long);
      };
    }
  }
}

/**
 * Validate rules (the YAML file's `rules`, or the config's) against the schema.
 * @throws JudgeError INVALID_JUDGE_CONFIG naming the first bad field
 */
export function parseRules(value: unknown, key: string): JudgeRule[] {
  if (Value.Check(JudgeRulesSchema, value)) return value;
  const first = [...Value.Errors(JudgeRulesSchema, value)][0];
  const at = first ? `${key}${first.path.replace(/\//g, '.')}` : key;
  throw new JudgeError('INVALID_JUDGE_CONFIG', at, `${first?.message ?? 'invalid'}; each rule is {type: keywords|regex|length, ...} (see docs/online-dpo.md)`);
}

/** The rules of a `rule` judge: inline, or read from `file` (a path or a config/judge/<name>.yaml name). */
export function loadRules(s: RuleJudgeSettings, key = 'online_dpo.judge'): JudgeRule[] {
  if (s.rules && s.file) throw new JudgeError('INVALID_JUDGE_CONFIG', `${key}.file`, 'give rules or file, not both');
  if (s.rules) return parseRules(s.rules, `${key}.rules`);
  if (!s.file) throw new JudgeError('INVALID_JUDGE_CONFIG', `${key}.rules`, 'a rule judge needs rules (inline) or file (YAML with rules: [...])');
  const named = join(configDir(), 'judge', `${s.file}.yaml`);
  const path = /^[A-Za-z0-9_.-]+$/.test(s.file) && existsSync(named) ? named : s.file;
  let doc: unknown;
  try {
    doc = YAML.parse(readFileSync(path, 'utf8'));
  } catch (e) {
    throw new JudgeError('INVALID_JUDGE_CONFIG', `${key}.file`, `cannot read rules from ${path}: ${(e as Error).message}`);
  }
  const rules = doc !== null && typeof doc === 'object' && !Array.isArray(doc) ? (doc as { rules?: unknown }).rules : doc;
  return parseRules(rules, `${key}.file(${s.file}).rules`);
}

/**
 * Score one text with rules (the sum of the rules' contributions).
 * @throws JudgeError for an invalid regular expression or length bounds
 */
export function ruleScorer(rules: JudgeRule[], key = 'online_dpo.judge.rules'): (text: string) => number {
  const scorers = rules.map((r, i) => compile(r, `${key}[${i}]`));
  return (text) => scorers.reduce((a, f) => a + f(text), 0);
}

/** The rule judge of `settings` (see the module doc). @throws JudgeError INVALID_JUDGE_CONFIG */
export function createRuleJudge(settings: RuleJudgeSettings): Judge {
  const score = ruleScorer(loadRules(settings));
  return {
    type: 'rule',
    score: async (items: JudgeItem[]) => items.map((it) => it.completions.map(score)),
    dispose: () => {},
  };
}
