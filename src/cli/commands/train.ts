/**
 * `dpo train [--config FILE] [--output-dir DIR] [key=value ...]`: SFT then DPO, like the reference
 * implementation's `python train.py model=... datasets=[...] loss=dpo loss.beta=0.1`. Prints the resolved config
 * (YAML) first, then a progress bar (TTY) or log lines; writes the artifact into `output_dir` (default
 * `runs/<exp_name>`). Ctrl-C stops between steps (with a checkpoint when save_steps is set; resume with
 * `resume_from_checkpoint=latest output_dir=<dir>`, which continues the checkpoint's config and data). Exit codes: 0 done, 2 bad config, 130 interrupted, 1 other errors.
 */
import { resolve } from 'node:path';
import type { Command } from 'commander';
import pino from 'pino';
import YAML from 'yaml';
import { ConfigError, loadConfig } from '../../config/index.js';
import { runTraining, TrainingAbortedError } from '../../training/run.js';
import { planRun } from '../../training/plan/dry-run.js';

export interface TrainCliOptions {
  config?: string;
  outputDir?: string;
  /** print the plan (stages, steps, tokens) and the memory estimate, train nothing */
  dryRun?: boolean;
}

/**
 * Run `dpo train`; returns the process exit code.
 * @param overrides `key=value` strings
 */
export async function runTrainCli(overrides: string[], o: TrainCliOptions): Promise<number> {
  let cfg;
  try {
    cfg = loadConfig({ configFile: o.config, overrides });
  } catch (e) {
    if (e instanceof ConfigError) {
      process.stderr.write(`dpo train: invalid config: ${e.message}\n`);
      return 2;
    }
    throw e;
  }
  const outputDir = resolve(o.outputDir ?? cfg.output_dir ?? `runs/${cfg.exp_name}`);
  if (o.dryRun) return dryRun(cfg);
  const tty = process.stderr.isTTY === true;
  const logger = tty
    ? pino({ level: process.env.LOG_LEVEL ?? 'info', transport: { target: 'pino-pretty', options: { destination: 2, ignore: 'pid,hostname' } } })
    : pino({ level: process.env.LOG_LEVEL ?? 'info' }, pino.destination(2));
  const ac = new AbortController();
  let interrupts = 0;
  const onSignal = (): void => {
    interrupts += 1;
    if (interrupts > 1) process.exit(130);
    process.stderr.write('\ndpo train: stopping after the current step (Ctrl-C again to quit now)\n');
    ac.abort();
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  try {
    const res = await runTraining({
      config: cfg,
      given: { configFile: o.config, overrides },
      outputDir,
      signal: ac.signal,
      logger,
      // printed once the run's config is known: a resume continues the checkpoint's
      onConfig: (c, dir) => process.stdout.write(`# resolved config (output_dir: ${dir})\n${YAML.stringify(c)}\n`),
    });
    const d = res.metrics.dpo;
    const pick = (k: string): string => (d[k] === undefined ? '-' : Number(d[k]).toPrecision(4));
    process.stdout.write(
      `artifact: ${res.artifactDir}\n` +
        `dpo: loss ${pick('loss')}  rewards/accuracies ${pick('rewards/accuracies')}  rewards/margins ${pick('rewards/margins')}  ` +
        `eval_rewards/accuracies ${pick('eval_rewards/accuracies')}  tokens/s ${pick('tokens/s')}\n`,
    );
    return 0;
  } catch (e) {
    if (e instanceof TrainingAbortedError) {
      process.stderr.write(`dpo train: ${e.message}; resume with resume_from_checkpoint=latest output_dir=${outputDir}\n`);
      return 130;
    }
    if (e instanceof ConfigError) {
      process.stderr.write(`dpo train: invalid config: ${e.message}\n`);
      return 2;
    }
    // typed errors (a stable `code`: INVALID_ENV, BACKEND_UNAVAILABLE, INSUFFICIENT_MEMORY, ...) are the
    // user's to fix: one line, no stack
    const code = (e as { code?: unknown }).code;
    if (e instanceof Error && typeof code === 'string' && /^[A-Z][A-Z0-9_]+$/.test(code)) {
      process.stderr.write(`dpo train: ${code}: ${e.message}\n`);
      return 1;
    }
    throw e;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    logger.flush?.();
  }
}

/** `--dry-run`: the plan as YAML on stdout; exit 0 when the estimate fits, 1 (INSUFFICIENT_MEMORY) when not. */
async function dryRun(cfg: Parameters<typeof planRun>[0]): Promise<number> {
  const plan = await planRun(cfg, pino({ level: process.env.LOG_LEVEL ?? 'warn' }, pino.destination(2)));
  const gib = (b: number): number => Math.round((b / 2 ** 30) * 100) / 100;
  const m = plan.memory;
  const memory = {
    estimate_gib: gib(m.totalBytes),
    available_gib: gib(m.availableBytes),
    fits: m.fits,
    parts_gib: {
      weights: gib(m.weights),
      gradients: gib(m.gradients),
      optimizer: gib(m.optimizer),
      reference: gib(m.reference),
      activations: gib(m.activations),
      runtime: gib(m.runtime),
    },
  };
  process.stdout.write(`# dry run: nothing trained
${YAML.stringify({ model: plan.model, data: plan.data, stages: plan.stages, reference: plan.reference, memory })}`);
  if (!plan.refusal) return 0;
  process.stderr.write(`dpo train: ${plan.refusal.code}: ${plan.refusal.message}\n`);
  return 1;
}

export function register(program: Command): void {
  program
    .command('train')
    .description('SFT then DPO; settings as key=value overrides of config/config.yaml (model=, loss=, datasets=[a,b], loss.beta=0.1, ...)')
    .option('-c, --config <file>', 'YAML config merged over config/config.yaml')
    .option('-o, --output-dir <dir>', 'artifact directory (default: output_dir or runs/<exp_name>)')
    .option('--dry-run', 'print the plan (stages, steps, tokens) and the memory estimate; train nothing')
    .argument('[overrides...]', 'key=value overrides (YAML values)')
    .allowExcessArguments(false)
    .action(async (overrides: string[], opts: TrainCliOptions) => {
      const code = await runTrainCli(overrides, opts);
      process.exitCode = code;
    });
}
