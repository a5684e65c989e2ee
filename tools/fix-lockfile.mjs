#!/usr/bin/env node
// The npm registry mirror reachable from our build machines answers 404 for msgpackr-extract's prebuilt
// binaries of other platforms (darwin, win32, linux-arm), so `npm install` here leaves them out of
// package-lock.json and a later `npm ci` refuses the lockfile. This restores those optional entries
// (the versions the public registry publishes). Run it after any `npm install` on such a machine.
import { readFileSync, writeFileSync } from 'node:fs';
const path = new URL('../package-lock.json', import.meta.url);
const lock = JSON.parse(readFileSync(path, 'utf8'));
const parent = lock.packages['node_modules/msgpackr-extract'];
if (!parent) process.exit(0);
const version = parent.version;
let added = 0;
for (const name of Object.keys(parent.optionalDependencies ?? {})) {
  const key = `node_modules/${name}`;
  if (lock.packages[key]) continue;
  const suffix = name.split('/').pop().replace('msgpackr-extract-', '');
  const [os, cpu] = suffix.split('-');
  lock.packages[key] = {
    version,
    resolved: `https://registry.npmjs.org/${name}/-/${name.split('/').pop()}-${version}.tgz`,
    cpu: [cpu],
    license: 'MIT',
    optional: true,
    os: [os],
  };
  added++;
}
writeFileSync(path, JSON.stringify(lock, null, 2) + '\n');
process.stdout.write(`fix-lockfile: restored ${added} optional msgpackr-extract entries\n`);
