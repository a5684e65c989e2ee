/**
 * `dpo worker`: consumes the finetune queue and trains (SFT → DPO → upload), one forked training process
 * per job. Configured by the environment (src/config/env.ts); flags override WORKER_CONCURRENCY and
 * TFJS_BACKEND.
 */
import type { Command } from 'commander';

export function register(program: Command): void {
  program
    .command('worker')
    .description('run a training worker for the finetune queue; needs Redis (REDIS_URL)')
    .option('--concurrency <n>', 'jobs trained at once (WORKER_CONCURRENCY, default 1)')
    .option('--backend <name>', 'tfjs backend: auto | tensorflow | tensorflow-gpu | wasm | cpu (TFJS_BACKEND)')
    .action(async (opts: { concurrency?: string; backend?: string }) => {
      if (opts.concurrency !== undefined) process.env.WORKER_CONCURRENCY = opts.concurrency;
      if (opts.backend !== undefined) process.env.TFJS_BACKEND = opts.backend;
      const { loadEnv } = await import('../../config/env.js');
      const { runWorkerProcess } = await import('../../worker/main.js');
      try {
        await runWorkerProcess(loadEnv());
      } catch (err) {
        console.error(`dpo worker: ${(err as Error).message}`);
        process.exit(1);
      }
    });
}
