#!/usr/bin/env node
// The `dpo` command. From a source checkout it runs src/cli/main.ts through tsx's ESM loader (no build step);
// when tsx or the sources are absent (a production install) it runs the built dist/src/cli/main.js.
// DPO_CLI_DIST=1 forces the built copy.
import { existsSync } from 'node:fs';

const src = new URL('../src/cli/main.ts', import.meta.url);
const dist = new URL('../dist/src/cli/main.js', import.meta.url);

let entry = dist;
if (process.env.DPO_CLI_DIST !== '1' && existsSync(src)) {
  try {
    const { register } = await import('tsx/esm/api');
    register();
    entry = src;
  } catch {
    entry = dist;
  }
}
if (!existsSync(entry)) {
  console.error('dpo: neither the sources with tsx nor a build (dist/) were found; run `npm ci` or `npm run build`');
  process.exit(1);
}
const { main } = await import(entry.href);
await main(process.argv);
