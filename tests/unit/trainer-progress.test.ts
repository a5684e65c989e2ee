/**
 * The progress bar (cli-progress) shows the steps, the epoch, the train metrics, the last evaluation and
 * elapsed<ETA; log lines carry the epoch when there is no TTY.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import pino from 'pino';
import { ProgressReporter } from '../../src/training/trainer/monitor.js';
import type { StageProgress } from '../../src/training/trainer/stage.js';

/** A writable that says it is a TTY, capturing what is drawn (ANSI escapes removed). */
function fakeTty(): Writable & { isTTY: boolean; columns: number; text(): string } {
  let out = '';
  const w = new Writable({
    write(chunk, _enc, cb) {
      out += String(chunk);
      cb();
    },
  }) as Writable & { isTTY: boolean; columns: number; text(): string; cursorTo(): boolean; clearLine(): boolean; moveCursor(): boolean };
  w.isTTY = true;
  w.columns = 300;
  w.cursorTo = () => true;
  w.clearLine = () => true;
  w.moveCursor = () => true;
  const ESC = String.fromCharCode(27);
  w.text = () => out.replace(new RegExp(`${ESC}\\[[0-9;?]*[A-Za-z]|${ESC}[78]`, 'g'), '');
  return w;
}

const step = (over: Partial<StageProgress>): StageProgress => ({
  stage: 'dpo',
  step: 1,
  totalSteps: 4,
  examples: 2,
  epoch: 0.25,
  metrics: { loss: 0.6931, 'rewards/accuracies': 0.5, 'rewards/margins': 0.01, 'tokens/s': 1000 },
  eval: null,
  ...over,
});

test('the bar shows epoch, metrics, the eval indicator, elapsed and ETA', () => {
  const tty = fakeTty();
  const r = new ProgressReporter(pino({ level: 'silent' }), true, undefined, { stream: tty });
  r.update(step({ step: 1, epoch: 0.5 }));
  r.update(step({ step: 2, epoch: 1, eval: { eval_loss: 0.69, 'eval_rewards/accuracies': 0.75 } }));
  r.update(step({ step: 3, epoch: 1.5 }));
  r.stop();
  const t = tty.text();
  assert.match(t, /DPO \|.*\| 3\/4 \| epoch 1\.50 \| loss 0\.6931 \| acc 0\.50 margin 0\.0100 \| 1000 tok\/s/);
  assert.match(t, /eval@2 acc 0\.75/, 'the last evaluation stays on the bar');
  assert.match(t, /\| \d+s<\d+s/, 'elapsed<ETA');
  assert.match(t, /0\/4 \| epoch - .*\| eval - \|/, 'no eval yet (the bar starts empty)');
});

test('without a TTY: log lines with the epoch', () => {
  const lines: Array<Record<string, unknown>> = [];
  const logger = pino({ level: 'info' }, { write: (l: string) => void lines.push(JSON.parse(l)) });
  const r = new ProgressReporter(logger, 'auto', undefined, { stream: new Writable({ write: (_c, _e, cb) => cb() }) });
  r.update(step({ step: 2, epoch: 0.5 }));
  assert.equal(lines[0]?.epoch, 0.5);
  assert.equal(lines[0]?.msg, 'dpo step 2/4');
});
