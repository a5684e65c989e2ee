/**
 * `dpo serve`: the HTTP API (POST /trigger-finetune, GET|DELETE /jobs/:jobId, /health, /metrics, /docs,
 * /admin/queues). Configured by the environment (src/config/env.ts); flags override PORT and HOST.
 */
import type { Command } from 'commander';

export function register(program: Command): void {
  program
    .command('serve')
    .description('run the API (webhook + job status); needs Redis (REDIS_URL)')
    .option('--port <n>', 'listen port (PORT, default 8000)')
    .option('--host <addr>', 'listen address (HOST, default 0.0.0.0)')
    .action(async (opts: { port?: string; host?: string }) => {
      if (opts.port !== undefined) process.env.PORT = opts.port;
      if (opts.host !== undefined) process.env.HOST = opts.host;
      const { loadEnv } = await import('../../config/env.js');
      const { startServer } = await import('../../api/server.js');
      try {
        await startServer(loadEnv());
      } catch (err) {
        console.error(`dpo serve: ${(err as Error).message}`);
        process.exit(1);
      }
    });
}
