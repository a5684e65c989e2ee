/**
 * The reward-model judge: a Hugging Face `*ForSequenceClassification` checkpoint of our families
 * (`LlamaForSequenceClassification`, `MistralForSequenceClassification`, `Qwen2ForSequenceClassification`,
 * `Qwen3ForSequenceClassification`, `GPT2ForSequenceClassification`): the decoder without its LM head plus a
 * bias-free linear `score` head `[num_labels, hidden]`, `num_labels` 1 (a scalar reward, as TRL's reward
 * models). The reward of `prompt + completion` is the score head applied to the final hidden state at the
 * last non-pad token, as transformers computes it (modeling_llama.py `LlamaForSequenceClassification.forward`:
 * `last_non_pad_token = (token_indices * (input_ids != pad_token_id)).argmax(-1)`; without a pad token, the
 * last token). Texts are encoded with the checkpoint's tokenizer, BOS first when it uses one.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import type { CausalLM, ModelConfig, Tokenizer } from '../../types.js';
import { hostToVariable, type BaseLM } from '../../models/base.js';
import { parseHFConfig } from '../../models/config.js';
import { canonicalGpt2Name, Gpt2Model, gpt2Shapes } from '../../models/gpt2.js';
import { isLlamaLinear, LlamaModel, llamaShapes } from '../../models/llama.js';
import { forEachTensor, readSafetensorsIndex } from '../../models/safetensors.js';
import { loadTokenizer, tokenizerAddsBos } from '../../tokenizers/index.js';
import type { RewardModelJudgeSettings } from '../schema.js';
import { JudgeError, type Judge, type JudgeItem } from './types.js';

const FAMILIES: Record<string, string[]> = {
  llama: ['LlamaForSequenceClassification'],
  mistral: ['MistralForSequenceClassification'],
  qwen2: ['Qwen2ForSequenceClassification'],
  qwen3: ['Qwen3ForSequenceClassification'],
  gpt2: ['GPT2ForSequenceClassification'],
};

/** A loaded sequence-classification reward model. */
export interface RewardModel {
  readonly config: ModelConfig;
  readonly tokenizer: Tokenizer;
  /** The decoder (no LM head is used). */
  readonly backbone: CausalLM;
  /** `score.weight` in internal layout `[hidden, 1]`. */
  readonly score: tf.Tensor2D;
  /** The pad id of config.json (null: none, the last token is scored). */
  readonly padTokenId: number | null;
  dispose(): void;
}

const KEY = 'online_dpo.judge.name_or_path';

/**
 * Load a `*ForSequenceClassification` directory (config.json, model.safetensors or shards, tokenizer files).
 * @throws JudgeError UNSUPPORTED_REWARD_MODEL (architecture not of our families, num_labels != 1, no `score`
 *   head); model-layer errors (ModelConfigError, WeightsError) for a bad config or weights
 */
export async function loadRewardModel(dir: string): Promise<RewardModel> {
  let raw: Record<string, unknown>;
  try {
    raw = JSON.parse(await readFile(join(dir, 'config.json'), 'utf8')) as Record<string, unknown>;
  } catch (e) {
    throw new JudgeError('UNSUPPORTED_REWARD_MODEL', KEY, `${dir}: cannot read config.json (${(e as Error).message})`);
  }
  const config = parseHFConfig(raw);
  const archs = Array.isArray(raw.architectures) ? (raw.architectures as unknown[]).filter((a): a is string => typeof a === 'string') : [];
  const allowed = FAMILIES[config.modelType] ?? [];
  if (!archs.some((a) => allowed.includes(a))) {
    throw new JudgeError(
      'UNSUPPORTED_REWARD_MODEL',
      KEY,
      `${dir}: config.json architectures ${JSON.stringify(archs)} is not a sequence classifier of model_type ${config.modelType}; expected ${allowed.join(' or ') || Object.values(FAMILIES).flat().join(', ')}`,
    );
  }
  const id2label = raw.id2label && typeof raw.id2label === 'object' ? Object.keys(raw.id2label as object).length : null;
  const numLabels = typeof raw.num_labels === 'number' ? raw.num_labels : (id2label ?? 2);
  if (numLabels !== 1) {
    throw new JudgeError('UNSUPPORTED_REWARD_MODEL', KEY, `${dir}: num_labels is ${numLabels}; a reward model has num_labels 1 (one scalar score)`);
  }
  // The backbone without an LM head: tied so that no lm_head tensor is expected.
  const backboneConfig: ModelConfig = { ...config, tieWordEmbeddings: true };
  const gpt2 = config.architecture === 'gpt2';
  const spec = gpt2 ? gpt2Shapes(backboneConfig) : llamaShapes(backboneConfig);
  const isLinear = gpt2 ? () => false : isLlamaLinear;
  const index = await readSafetensorsIndex(dir);
  const fileNameOf = new Map<string, string>();
  for (const name of index.keys()) {
    const c = gpt2 ? (name === 'score.weight' ? name : canonicalGpt2Name(name)) : name;
    if (c !== null) fileNameOf.set(c, name);
  }
  const scoreName = fileNameOf.get('score.weight');
  const scoreInfo = scoreName === undefined ? undefined : index.get(scoreName);
  if (scoreInfo?.shape.length !== 2 || scoreInfo.shape[0] !== 1 || scoreInfo.shape[1] !== config.hiddenSize) {
    throw new JudgeError(
      'UNSUPPORTED_REWARD_MODEL',
      KEY,
      `${dir}: needs a score.weight tensor of shape [1, ${config.hiddenSize}], found ${scoreInfo ? `[${scoreInfo.shape.join(', ')}]` : 'none'}`,
    );
  }
  const shapes = new Map(spec);
  for (const [name] of spec) {
    if (!fileNameOf.has(name)) throw new JudgeError('UNSUPPORTED_REWARD_MODEL', KEY, `${dir}: tensor "${name}" is missing from the checkpoint`);
  }
  const params = new Map<string, tf.Variable>();
  const held: { score?: tf.Tensor2D } = {};
  const wanted = [...spec.map(([n]) => fileNameOf.get(n)!), fileNameOf.get('score.weight')!];
  const canonicalOf = new Map([...fileNameOf].map(([c, f]) => [f, c]));
  try {
    await forEachTensor(index, wanted, (fileName, t) => {
      const name = canonicalOf.get(fileName)!;
      if (name === 'score.weight') held.score = tf.tidy(() => tf.transpose(tf.tensor2d(t.data, [1, config.hiddenSize])) as tf.Tensor2D);
      else params.set(name, hostToVariable(name, t, shapes.get(name)!, isLinear(name), false));
    });
  } catch (e) {
    for (const v of params.values()) v.dispose();
    throw e;
  }
  const ordered = new Map(spec.map(([n]) => [n, params.get(n)!]));
  const backbone: BaseLM = gpt2 ? new Gpt2Model(backboneConfig, ordered) : new LlamaModel(backboneConfig, ordered);
  const tokenizer = await loadTokenizer(dir);
  const head = held.score;
  if (!head) throw new JudgeError('UNSUPPORTED_REWARD_MODEL', KEY, `${dir}: score.weight was not read`);
  return {
    config,
    tokenizer,
    backbone,
    score: head,
    padTokenId: config.padTokenId,
    dispose: () => {
      backbone.dispose();
      head.dispose();
    },
  };
}

/**
 * The index transformers scores in each padded row: the rightmost token that is not `padId` (0 when every
 * token is pad); the last real token when `padId` is null.
 * @param ids `[rows * T]` right-padded ids; `lengths` real tokens per row
 */
export function lastNonPadIndex(ids: Int32Array, T: number, lengths: number[], padId: number | null): number[] {
  return lengths.map((len, r) => {
    if (padId === null) return Math.max(0, len - 1);
    let best = 0;
    for (let t = 0; t < T; t++) if (ids[r * T + t] !== padId) best = t;
    return best;
  });
}

/**
 * Rewards of texts, in batches: `[N]` floats.
 * @throws RangeError for an empty text list entry that encodes to no token and has no BOS
 */
export function rewardScores(rm: RewardModel, texts: string[], batchSize = 8): number[] {
  const tok = rm.tokenizer;
  const bos = tok.bosTokenId;
  const addBos = bos !== null && tokenizerAddsBos(tok);
  const maxLen = rm.config.maxPositionEmbeddings;
  const padFill = rm.padTokenId ?? tok.padTokenId ?? tok.eosTokenId ?? 0;
  const out: number[] = [];
  for (let i = 0; i < texts.length; i += batchSize) {
    const seqs = texts.slice(i, i + batchSize).map((t) => {
      const ids = tok.encode(t);
      const withBos = addBos ? [bos!, ...ids] : ids;
      if (withBos.length === 0) throw new RangeError('rewardScores: a text encodes to no token');
      return withBos.slice(-maxLen);
    });
    const T = Math.max(...seqs.map((s) => s.length));
    const ids = new Int32Array(seqs.length * T).fill(padFill);
    seqs.forEach((s, r) => ids.set(s, r * T));
    const rows = lastNonPadIndex(
      ids,
      T,
      seqs.map((s) => s.length),
      rm.padTokenId,
    ).map((t, r) => r * T + t);
    const scores = tf.tidy(() => {
      const h = rm.backbone.hidden(tf.tensor2d(ids, [seqs.length, T], 'int32'));
      const last = tf.gather(h, tf.tensor1d(rows, 'int32'));
      return tf.matMul(last, rm.score).dataSync() as Float32Array;
    });
    out.push(...scores);
  }
  return out;
}

/** The reward-model judge of `settings`. @throws as {@link loadRewardModel} */
export async function createRewardModelJudge(settings: RewardModelJudgeSettings): Promise<Judge> {
  const rm = await loadRewardModel(settings.name_or_path);
  const batch = settings.batch_size ?? 8;
  return {
    type: 'reward_model',
    score: async (items: JudgeItem[]) => {
      const texts = items.flatMap((it) => it.completions.map((c) => it.prompt + c));
      const flat = rewardScores(rm, texts, batch);
      let k = 0;
      return items.map((it) => it.completions.map(() => flat[k++]!));
    },
    dispose: () => rm.dispose(),
  };
}
