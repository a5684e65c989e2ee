/**
 * A PNG plot of a run's metrics.jsonl: one panel per stage and metric (loss for SFT; loss,
 * rewards/accuracies and rewards/margins for DPO), training values as a line, evaluation (`eval_` keys) as
 * dots joined by a thinner line. Like LLaMA-Factory's `plot_loss` (`training_loss.png`), in one image.
 */
import { renameSync, writeFileSync } from 'node:fs';
import { Canvas, encodePng, type RGB } from './png.js';
import { readMetricsJsonl, type MetricsRecord } from './jsonl.js';

/** The metrics plotted per stage, in panel order. */
export const PLOT_KEYS = ['loss', 'rewards/accuracies', 'rewards/margins'] as const;

const TRAIN: RGB = [31, 119, 180];
const EVAL: RGB = [255, 127, 14];
const AXIS: RGB = [60, 60, 60];
const GRID: RGB = [225, 225, 225];
const TEXT: RGB = [20, 20, 20];

interface Series {
  x: number[];
  y: number[];
}
interface Panel {
  stage: string;
  key: string;
  train: Series;
  eval: Series;
}

function fmt(v: number): string {
  if (v === 0) return '0';
  const a = Math.abs(v);
  if (a >= 1e4 || a < 1e-3) return v.toExponential(1);
  return String(Number(v.toPrecision(3)));
}

/** Panels (stage × key) that have at least one finite value, stages in order of first appearance. */
export function plotPanels(records: MetricsRecord[], keys: readonly string[] = PLOT_KEYS): Panel[] {
  const stages: string[] = [];
  for (const r of records) {
    const s = typeof r.stage === 'string' ? r.stage : 'train';
    if (!stages.includes(s)) stages.push(s);
  }
  const panels: Panel[] = [];
  for (const stage of stages) {
    for (const key of keys) {
      const p: Panel = { stage, key, train: { x: [], y: [] }, eval: { x: [], y: [] } };
      for (const r of records) {
        if ((typeof r.stage === 'string' ? r.stage : 'train') !== stage || typeof r.step !== 'number') continue;
        const t = r[key];
        const e = r[`eval_${key}`];
        if (typeof t === 'number' && Number.isFinite(t)) {
          p.train.x.push(r.step);
          p.train.y.push(t);
        }
        if (typeof e === 'number' && Number.isFinite(e)) {
          p.eval.x.push(r.step);
          p.eval.y.push(e);
        }
      }
      if (p.train.x.length + p.eval.x.length > 0) panels.push(p);
    }
  }
  return panels;
}

function drawPanel(c: Canvas, p: Panel, ox: number, oy: number, w: number, h: number): void {
  const left = ox + 62;
  const right = ox + w - 14;
  const top = oy + 30;
  const bottom = oy + h - 34;
  c.text(ox + 12, oy + 8, `${p.stage} ${p.key}`, TEXT, 2);
  const xs = [...p.train.x, ...p.eval.x];
  const ys = [...p.train.y, ...p.eval.y];
  let xmin = Math.min(...xs);
  let xmax = Math.max(...xs);
  let ymin = Math.min(...ys);
  let ymax = Math.max(...ys);
  if (p.key === 'rewards/accuracies') {
    ymin = Math.min(0, ymin);
    ymax = Math.max(1, ymax);
  }
  if (xmax === xmin) {
    xmin -= 1;
    xmax += 1;
  }
  if (ymax === ymin) {
    const d = Math.abs(ymax) > 0 ? Math.abs(ymax) * 0.1 : 1;
    ymin -= d;
    ymax += d;
  } else {
    const pad = (ymax - ymin) * 0.05;
    ymin -= pad;
    ymax += pad;
  }
  const X = (x: number): number => left + ((x - xmin) / (xmax - xmin)) * (right - left);
  const Y = (y: number): number => bottom - ((y - ymin) / (ymax - ymin)) * (bottom - top);
  // grid and y tick labels (4 intervals)
  for (let i = 0; i <= 4; i++) {
    const v = ymin + ((ymax - ymin) * i) / 4;
    const yy = Y(v);
    c.line(left, yy, right, yy, GRID);
    const label = fmt(v);
    c.text(left - 6 - Canvas.textWidth(label), Math.round(yy) - 3, label, TEXT);
  }
  // x tick labels: first, middle, last step
  for (const v of [xmin, (xmin + xmax) / 2, xmax]) {
    const label = fmt(Math.round(v));
    const xx = X(v);
    c.line(xx, bottom, xx, bottom + 4, AXIS);
    c.text(xx - Canvas.textWidth(label) / 2, bottom + 8, label, TEXT);
  }
  c.text(right - Canvas.textWidth('step'), bottom + 20, 'step', TEXT);
  // axes
  c.line(left, top, left, bottom, AXIS);
  c.line(left, bottom, right, bottom, AXIS);
  // series
  const draw = (s: Series, color: RGB, thick: number, dots: boolean): void => {
    for (let i = 1; i < s.x.length; i++) c.line(X(s.x[i - 1]!), Y(s.y[i - 1]!), X(s.x[i]!), Y(s.y[i]!), color, thick);
    if (dots || s.x.length === 1) for (let i = 0; i < s.x.length; i++) c.fillRect(X(s.x[i]!) - 2, Y(s.y[i]!) - 2, 5, 5, color);
  };
  draw(p.train, TRAIN, 2, false);
  draw(p.eval, EVAL, 1, true);
  // legend
  let lx = right - 110;
  if (p.train.x.length > 0) {
    c.fillRect(lx, top + 4, 12, 4, TRAIN);
    c.text(lx + 16, top + 2, 'train', TEXT);
    lx += 56;
  }
  if (p.eval.x.length > 0) {
    c.fillRect(lx, top + 4, 12, 4, EVAL);
    c.text(lx + 16, top + 2, 'eval', TEXT);
  }
}

/**
 * Render metrics records to a canvas: a grid of panels, 2 per row, `panelWidth` x `panelHeight` pixels each.
 * An empty record list gives a single panel saying "no metrics".
 */
export function renderTrainingPlot(records: MetricsRecord[], opts: { panelWidth?: number; panelHeight?: number; keys?: readonly string[] } = {}): Canvas {
  const pw = opts.panelWidth ?? 440;
  const ph = opts.panelHeight ?? 280;
  const panels = plotPanels(records, opts.keys);
  const cols = panels.length <= 1 ? 1 : 2;
  const rows = Math.max(1, Math.ceil(panels.length / cols));
  const c = new Canvas(cols * pw, rows * ph);
  if (panels.length === 0) {
    c.text(20, 20, 'no metrics', TEXT, 2);
    return c;
  }
  panels.forEach((p, i) => drawPanel(c, p, (i % cols) * pw, Math.floor(i / cols) * ph, pw, ph));
  return c;
}

/**
 * Read `metricsJsonlPath` and write a PNG plot of loss, rewards/accuracies and rewards/margins over steps
 * (per stage: sft, dpo) to `pngPath` (written to a temporary file, then renamed).
 * @returns the panels drawn (`<stage> <key>`) and the image size
 * @throws the fs error when the PNG cannot be written
 */
export function writeTrainingPlot(
  metricsJsonlPath: string,
  pngPath: string,
  opts: { panelWidth?: number; panelHeight?: number; keys?: readonly string[] } = {},
): { panels: string[]; width: number; height: number } {
  const records = readMetricsJsonl(metricsJsonlPath);
  const canvas = renderTrainingPlot(records, opts);
  const tmp = `${pngPath}.tmp-${process.pid}`;
  writeFileSync(tmp, encodePng(canvas));
  renameSync(tmp, pngPath);
  return {
    panels: plotPanels(records, opts.keys).map((p) => `${p.stage} ${p.key}`),
    width: canvas.width,
    height: canvas.height,
  };
}
