/**
 * Metrics writers: metrics.jsonl lines, TensorBoard event files, and a PNG plot of the run.
 */
export { MetricsLog, readMetricsJsonl, type MetricsRecord } from './jsonl.js';
export { TensorBoardWriter, tfRecord, scalarEvent, fileVersionEvent } from './tensorboard.js';
export { writeTrainingPlot, renderTrainingPlot, plotPanels, panelSpec, PLOT_KEYS, TRAIN_COLOR, EVAL_COLOR, type PlotOptions } from './plot.js';
export { crc32c, maskedCrc32c } from './crc.js';
