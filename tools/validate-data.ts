/**
 * tools/validate-data: the same checks as `dpo validate` without the rest of the CLI.
 * Usage: npx tsx tools/validate-data.ts FILE [--format F] [--tokenizer PATH|none] [--max-length N] [--json]
 */
import { Command } from 'commander';
import { register } from '../src/cli/commands/validate.js';

const program = new Command('validate-data');
register(program);
await program.parseAsync(['node', 'validate-data', 'validate', ...process.argv.slice(2)]);
