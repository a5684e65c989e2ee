/**
 * The `dpo` command line (commander): registers every command module in `src/cli/commands/` (each exports
 * `register(program)`): train, generate, score, export, validate, serve, worker — whichever exist.
 */
import { readdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { Command } from 'commander';

const ORDER = ['train', 'generate', 'score', 'export', 'validate', 'serve', 'worker'];

/** Build the program with every available command registered. */
export async function buildProgram(): Promise<Command> {
  const program = new Command();
  program
    .name('dpo')
    .description('Preference fine-tuning (SFT then DPO) of causal LMs with TensorFlow.js, and its service')
    .showHelpAfterError()
    .enablePositionalOptions();
  const dir = join(dirname(fileURLToPath(import.meta.url)), 'commands');
  const files = readdirSync(dir).filter((f) => /\.(ts|js)$/.test(f) && !f.endsWith('.d.ts') && !f.includes('.test.'));
  const names = [...new Set(files.map((f) => f.replace(/\.(ts|js)$/, '')))];
  names.sort((a, b) => (ORDER.indexOf(a) + 1 || 99) - (ORDER.indexOf(b) + 1 || 99) || a.localeCompare(b));
  for (const name of names) {
    const file = files.find((f) => f === `${name}.js`) ?? files.find((f) => f === `${name}.ts`)!;
    const mod = (await import(pathToFileURL(join(dir, file)).href)) as { register?: (p: Command) => void };
    if (typeof mod.register === 'function') mod.register(program);
  }
  return program;
}

/** Run the CLI with `argv` (process.argv layout). */
export async function main(argv: string[] = process.argv): Promise<void> {
  const program = await buildProgram();
  await program.parseAsync(argv);
}

const invoked = process.argv[1] ? pathToFileURL(process.argv[1]).href : '';
if (invoked === import.meta.url) {
  main().catch((e: unknown) => {
    console.error((e as Error)?.message ?? e);
    process.exit(1);
  });
}
