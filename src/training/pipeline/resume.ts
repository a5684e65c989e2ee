/**
 * Pipeline phase: `resume_from_checkpoint` — find the checkpoint (`latest` under `<output_dir>/checkpoints`,
 * or a directory), read it, restore the run's config from it, and hand each stage the part it continues from.
 *
 * A resume continues the checkpoint's saved config: settings not given on the resume command come from the
 * checkpoint (so `resume_from_checkpoint=latest output_dir=runs/x` alone continues the original run, data
 * included). A given setting may change only what is safe to change mid-run ({@link RESUME_SAFE_KEYS}); any
 * other given setting that differs from the checkpoint's fails with a ConfigError naming each key and both
 * values, unless `resume_strict: false` (then it is used, with a warning).
 */
import { readFileSync } from 'node:fs';
import type { Logger } from 'pino';
import stringify from 'safe-stable-stringify';
import YAML from 'yaml';
import { ConfigError, loadConfig, parseOverride, type TrainConfig } from '../../config/index.js';
import { canonicalSha256 } from '../data/hash.js';
import { readCheckpoint, resolveCheckpoint, type CheckpointState } from '../trainer/checkpoint.js';
import type { OptimizerState } from '../trainer/optimizer.js';
import type { StagePosition } from '../trainer/stage.js';
import type { F32Tensor } from '../trainer/tensorfile.js';

/** A checkpoint read from disk (host tensors). */
export interface ResumePoint {
  /** The checkpoint directory. */
  dir: string;
  state: CheckpointState;
  policy: Map<string, F32Tensor>;
  optimizer: OptimizerState;
  /** The frozen reference model's weights (DPO checkpoints with a separate reference). */
  reference: Map<string, F32Tensor> | null;
  /** Precomputed reference log-probs (`train_chosen`, `train_rejected`, `eval_chosen`, `eval_rejected`, each `[N]`). */
  refLogps: Map<string, F32Tensor> | null;
}

/** What one stage continues from: the weights, the optimizer state and the loop position. */
export interface StageResume {
  policy: Map<string, F32Tensor>;
  optimizer: OptimizerState;
  position: StagePosition;
}

/**
 * Hash of the training-relevant settings (every key but resume/output/progress/log cadence), stored in each
 * checkpoint's state.
 */
export function configHash(cfg: TrainConfig): string {
  const relevant = { ...cfg, resume_from_checkpoint: null, output_dir: null, progress_bar: null, log_every: null };
  return canonicalSha256(relevant).slice(0, 16);
}

/**
 * Resolve and read `resume_from_checkpoint` (null setting, or `latest` with no checkpoint yet: a fresh start).
 * @throws CheckpointError when an explicit path is not a checkpoint, or its state / tensors cannot be read
 */
export async function loadResumePoint(cfg: Pick<TrainConfig, 'resume_from_checkpoint'>, outputDir: string, logger: Logger): Promise<ResumePoint | null> {
  if (!cfg.resume_from_checkpoint) return null;
  const dir = await resolveCheckpoint(cfg.resume_from_checkpoint, outputDir);
  if (!dir) {
    logger.info({ output_dir: outputDir }, 'resume_from_checkpoint=latest: no checkpoint yet, starting fresh');
    return null;
  }
  const ckpt = await readCheckpoint(dir);
  logger.info({ checkpoint: dir, stage: ckpt.state.stage, step: ckpt.state.step }, 'resuming from checkpoint');
  return { dir, ...ckpt };
}

/** The loop position stored in a checkpoint state. */
export function stagePosition(s: CheckpointState): StagePosition {
  return { step: s.step, examples: s.examples, numTokens: s.numTokens, rng: s.rng, lastMetrics: s.lastMetrics, lastEval: s.lastEval };
}

/** The part of `point` that `stage` continues from; null when there is no resume point or it is in the other stage. */
export function resumeFor(point: ResumePoint | null, stage: 'sft' | 'dpo'): StageResume | null {
  if (!point || point.state.stage !== stage) return null;
  return { policy: point.policy, optimizer: point.optimizer, position: stagePosition(point.state) };
}

/**
 * Settings a resume may change (a key covers its children): stopping criteria, save / log / eval cadence,
 * the progress bar and the output settings.
 */
export const RESUME_SAFE_KEYS = [
  'max_steps',
  'n_epochs',
  'n_examples',
  'sft.max_steps',
  'sft.n_epochs',
  'sft.n_examples',
  'save_steps',
  'save_total_limit',
  'log_every',
  'eval_every',
  'progress_bar',
  'output_dir',
  'exp_name',
  'tensorboard',
  'plot',
  'save_dtype',
  'resume_from_checkpoint',
  'resume_strict',
] as const;

type Path = string[];
type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => v !== null && typeof v === 'object' && !Array.isArray(v);

function getAt(o: unknown, path: Path): unknown {
  let cur = o;
  for (const p of path) cur = isObj(cur) ? cur[p] : undefined;
  return cur;
}

function setAt(o: Obj, path: Path, value: unknown): void {
  let cur = o;
  for (const p of path.slice(0, -1)) {
    if (!isObj(cur[p])) cur[p] = {};
    cur = cur[p] as Obj;
  }
  const last = path[path.length - 1];
  if (last !== undefined) cur[last] = value;
}

/** Leaf paths of a settings object; `model` / `loss` given as group names are one leaf each. */
function leafPaths(o: Obj, prefix: Path = []): Path[] {
  const out: Path[] = [];
  for (const [k, v] of Object.entries(o)) {
    // webhook shorthands: top-level beta / label_smoothing are loss settings
    const path = prefix.length === 0 && (k === 'beta' || k === 'label_smoothing') ? ['loss', k] : [...prefix, k];
    if (isObj(v)) out.push(...leafPaths(v, path));
    else out.push(path);
  }
  return out;
}

/** Where two values differ, as leaf paths under `path` (arrays and scalars compare whole). */
function differences(a: unknown, b: unknown, path: Path): Path[] {
  if (isObj(a) && isObj(b)) return [...new Set([...Object.keys(a), ...Object.keys(b)])].flatMap((k) => differences(a[k], b[k], [...path, k]));
  return stringify(a) === stringify(b) ? [] : [path];
}

/** What the caller gave for this run (the layers over config/config.yaml). */
export interface GivenSettings {
  configFile?: string;
  config?: Record<string, unknown>;
  overrides?: string[];
}

/**
 * The settings a caller gave explicitly: the keys of the config file, the config object and the overrides,
 * plus every setting whose resolved value differs from the defaults (aliases and group expansions).
 * @param defaults loadConfig of config/config.yaml alone
 */
export function givenPaths(given: GivenSettings, requested: TrainConfig, defaults: TrainConfig): Path[] {
  const paths: Path[] = [];
  if (given.configFile) {
    const doc: unknown = YAML.parse(readFileSync(given.configFile, 'utf8'));
    if (isObj(doc)) paths.push(...leafPaths(doc));
  }
  if (given.config) paths.push(...leafPaths(given.config));
  for (const text of given.overrides ?? []) paths.push(parseOverride(text).path.map(String));
  paths.push(...differences(requested, defaults, []));
  return [...new Map(paths.map((p) => [p.join('.'), p])).values()];
}

/** One given setting that differs from the checkpoint's. */
export interface ResumeConflict {
  key: string;
  checkpoint: unknown;
  given: unknown;
  safe: boolean;
}

const isSafe = (key: string): boolean => RESUME_SAFE_KEYS.some((k) => key === k || key.startsWith(`${k}.`));

/**
 * The config a resumed run continues with: the checkpoint's, with the given settings applied where they
 * differ and are safe (or everywhere when `requested.resume_strict` is false).
 * @returns the merged settings (not yet validated) and every difference found
 */
export function mergeResumeConfig(saved: TrainConfig, requested: TrainConfig, paths: Path[]): { merged: Obj; conflicts: ResumeConflict[] } {
  const merged: Obj = structuredClone(saved);
  const conflicts: ResumeConflict[] = [];
  const always: Path[] = [['output_dir'], ['resume_from_checkpoint'], ['resume_strict']];
  for (const p of always) setAt(merged, p, getAt(requested, p));
  const seen = new Set<string>();
  for (const p of paths) {
    for (const d of differences(getAt(requested, p), getAt(saved, p), p)) {
      const key = d.join('.');
      if (seen.has(key) || always.some((a) => a.join('.') === key)) continue;
      seen.add(key);
      const conflict = { key, checkpoint: getAt(saved, d), given: getAt(requested, d), safe: isSafe(key) };
      conflicts.push(conflict);
      if (conflict.safe || !requested.resume_strict) setAt(merged, d, conflict.given);
    }
  }
  return { merged, conflicts };
}

/**
 * The resolved config of a resumed run (see the module doc); `requested` itself when the checkpoint predates
 * saved configs (then a changed config hash is only warned about).
 * @throws ConfigError naming each unsafe given setting that differs (`loss.beta: the checkpoint has 0.1, the
 *   resume command gives 0.3; ...`) when `resume_strict` is true; ConfigError when the saved config is invalid
 */
export function resumedConfig(requested: TrainConfig, point: ResumePoint, given: GivenSettings, logger: Logger): TrainConfig {
  const saved = point.state.config;
  if (!saved) {
    if (point.state.configHash !== configHash(requested))
      logger.warn({ checkpoint: point.dir }, 'the checkpoint (no saved config) was written with different settings; resuming anyway');
    return requested;
  }
  const paths = givenPaths(given, requested, loadConfig());
  const { merged, conflicts } = mergeResumeConfig(saved, requested, paths);
  const unsafe = conflicts.filter((c) => !c.safe);
  const show = (c: ResumeConflict) => `${c.key}: the checkpoint has ${stringify(c.checkpoint)}, the resume command gives ${stringify(c.given)}`;
  if (unsafe.length && requested.resume_strict) {
    throw new ConfigError(
      unsafe[0]!.key,
      `cannot change on resume (${point.dir}): ${unsafe.map(show).join('; ')}. Drop these settings to continue the checkpoint's run, or set resume_strict=false to resume with them`,
    );
  }
  if (unsafe.length)
    logger.warn(
      { checkpoint: point.dir, changed: unsafe.map((c) => c.key) },
      `resume_strict=false: resuming with changed settings: ${unsafe.map(show).join('; ')}`,
    );
  const changed = conflicts.filter((c) => c.safe).map((c) => c.key);
  if (changed.length) logger.info({ checkpoint: point.dir, changed }, "resume: continuing the checkpoint's config with changed cadence/output settings");
  return loadConfig({ object: merged });
}

/**
 * Check that a resumed run trains on the checkpoint's data.
 * @throws ConfigError (`datasets`) when the data's sha256 differs and `resume_strict` is true (warns otherwise)
 */
export function checkResumeData(point: ResumePoint | null, sha256: string, cfg: Pick<TrainConfig, 'resume_strict' | 'datasets'>, logger: Logger): void {
  const saved = point?.state.dataSha256;
  if (!point || saved === undefined || saved === sha256) return;
  const detail = `the training data differs from the checkpoint's (sha256 ${saved.slice(0, 12)}… vs ${sha256.slice(0, 12)}…, datasets ${stringify(cfg.datasets)})`;
  if (cfg.resume_strict) throw new ConfigError('datasets', `${detail}; resume with the original data or set resume_strict=false`);
  logger.warn({ checkpoint: point.dir }, `resume_strict=false: ${detail}`);
}
