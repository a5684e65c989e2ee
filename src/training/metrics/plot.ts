/**
 * A PNG plot of a run's metrics.jsonl: one panel per stage and metric (loss for SFT; loss,
 * rewards/accuracies and rewards/margins for DPO), training values as a line, evaluation (`eval_` keys) as
 * dots joined by a thinner line. Like LLaMA-Factory's `plot_loss` (`training_loss.png`), in one image.
 *
 * Each panel is a Vega-Lite spec compiled to Vega and rendered headless to SVG (`View.toSVG()`, no canvas
 * package needed); the panels are laid out in one SVG, 2 per row, and rasterised with resvg.
 */
import { renameSync, writeFileSync } from 'node:fs';
import { Resvg } from '@resvg/resvg-js';
import * as vega from 'vega';
import { compile, type TopLevelSpec } from 'vega-lite';
import { type MetricsRecord, readMetricsJsonl } from './jsonl.js';

/** The metrics plotted per stage, in panel order. */
export const PLOT_KEYS = ['loss', 'rewards/accuracies', 'rewards/margins'] as const;

/** Series colours (matplotlib's tab:blue and tab:orange). */
export const TRAIN_COLOR = '#1f77b4';
export const EVAL_COLOR = '#ff7f0e';

interface Series {
  x: number[];
  y: number[];
}
export interface Panel {
  stage: string;
  key: string;
  train: Series;
  eval: Series;
}

export interface PlotOptions {
  /** Width of one panel in pixels (default 440). */
  panelWidth?: number;
  /** Height of one panel in pixels (default 280). */
  panelHeight?: number;
  /** Metrics to plot per stage (default {@link PLOT_KEYS}). */
  keys?: readonly string[];
}

/** Panels (stage × key) that have at least one finite value, stages in order of first appearance. */
export function plotPanels(records: MetricsRecord[], keys: readonly string[] = PLOT_KEYS): Panel[] {
  const stageOf = (r: MetricsRecord): string => (typeof r.stage === 'string' ? r.stage : 'train');
  const stages = [...new Set(records.map(stageOf))];
  const panels: Panel[] = [];
  for (const stage of stages) {
    for (const key of keys) {
      const p: Panel = { stage, key, train: { x: [], y: [] }, eval: { x: [], y: [] } };
      for (const r of records) {
        if (stageOf(r) !== stage || typeof r.step !== 'number') continue;
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

/** The Vega-Lite spec of one panel, exactly `width` x `height` pixels (autosize fit, padding included). */
export function panelSpec(p: Panel, width: number, height: number): TopLevelSpec {
  const rows = (s: Series, series: string) => s.x.map((x, i) => ({ step: x, value: s.y[i]!, series }));
  const y: Record<string, unknown> = { field: 'value', type: 'quantitative', title: null, scale: { zero: false } };
  if (p.key === 'rewards/accuracies') y.scale = { domain: [0, 1], clamp: false, nice: false };
  const layer = (series: 'train' | 'eval', strokeWidth: number, point: boolean) => ({
    transform: [{ filter: { field: 'series', equal: series } }],
    mark: { type: 'line' as const, strokeWidth, point: point ? { filled: true, size: 30 } : false },
    encoding: {
      x: { field: 'step', type: 'quantitative' as const, title: 'step', scale: { zero: false } },
      y,
      color: {
        field: 'series',
        type: 'nominal' as const,
        scale: { domain: present.map((x) => x[0]), range: present.map((x) => x[1]) },
        legend: { title: null, orient: 'top-right' as const, direction: 'horizontal' as const },
      },
    },
  });
  const present = (
    [
      ['train', TRAIN_COLOR, p.train.x.length],
      ['eval', EVAL_COLOR, p.eval.x.length],
    ] as const
  ).filter((x) => x[2] > 0);
  const layers = [];
  if (p.train.x.length > 0) layers.push(layer('train', 2, p.train.x.length === 1));
  if (p.eval.x.length > 0) layers.push(layer('eval', 1, true));
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v5.json',
    width,
    height,
    autosize: { type: 'fit', contains: 'padding' },
    padding: 8,
    background: 'white',
    title: { text: `${p.stage} ${p.key}`, anchor: 'start', fontSize: 13 },
    data: { values: [...rows(p.train, 'train'), ...rows(p.eval, 'eval')] },
    layer: layers,
    config: { view: { stroke: null }, axis: { gridColor: '#e1e1e1', labelColor: '#141414', domainColor: '#3c3c3c' } },
  } as TopLevelSpec;
}

async function panelSvg(p: Panel, width: number, height: number): Promise<string> {
  const spec = panelSpec(p, width, height);
  const view = new vega.View(vega.parse(compile(spec).spec), { renderer: 'none' });
  try {
    return await view.toSVG();
  } finally {
    view.finalize();
  }
}

const escapeXml = (s: string): string => s.replace(/[<>&"]/g, (c) => `&#${c.charCodeAt(0)};`);

/**
 * Render metrics records to one SVG: a grid of panels, 2 per row (1 when there is a single panel),
 * `panelWidth` x `panelHeight` pixels each. An empty record list gives a single panel saying "no metrics".
 * @returns the SVG text and its size in pixels
 */
export async function renderTrainingPlot(records: MetricsRecord[], opts: PlotOptions = {}): Promise<{ svg: string; width: number; height: number }> {
  const pw = opts.panelWidth ?? 440;
  const ph = opts.panelHeight ?? 280;
  const panels = plotPanels(records, opts.keys);
  const cols = panels.length <= 1 ? 1 : 2;
  const rows = Math.max(1, Math.ceil(panels.length / cols));
  const width = cols * pw;
  const height = rows * ph;
  const parts: string[] = [`<rect width="${width}" height="${height}" fill="white"/>`];
  if (panels.length === 0) {
    parts.push(`<text x="20" y="32" font-family="sans-serif" font-size="16" fill="#141414">${escapeXml('no metrics')}</text>`);
  }
  for (const [i, p] of panels.entries()) {
    const svg = await panelSvg(p, pw, ph);
    // place the panel's own <svg> element at its grid cell
    parts.push(svg.replace(/^<svg /, `<svg x="${(i % cols) * pw}" y="${Math.floor(i / cols) * ph}" `));
  }
  const svg = `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}">${parts.join('')}</svg>`;
  return { svg, width, height };
}

/**
 * Read `metricsJsonlPath` and write a PNG plot of loss, rewards/accuracies and rewards/margins over steps
 * (per stage: sft, dpo) to `pngPath` (written to a temporary file, then renamed). A missing or empty
 * metrics file gives a valid PNG saying "no metrics".
 * @returns the panels drawn (`<stage> <key>`) and the image size in pixels
 * @throws the fs error when the PNG cannot be written
 */
export async function writeTrainingPlot(
  metricsJsonlPath: string,
  pngPath: string,
  opts: PlotOptions = {},
): Promise<{ panels: string[]; width: number; height: number }> {
  const records = readMetricsJsonl(metricsJsonlPath);
  const { svg, width, height } = await renderTrainingPlot(records, opts);
  const png = new Resvg(svg, { fitTo: { mode: 'original' }, font: { loadSystemFonts: true } }).render().asPng();
  const tmp = `${pngPath}.tmp-${process.pid}`;
  writeFileSync(tmp, png);
  renameSync(tmp, pngPath);
  return { panels: plotPanels(records, opts.keys).map((p) => `${p.stage} ${p.key}`), width, height };
}
