/**
 * Metrics writers: metrics.jsonl lines, TensorBoard event files, and a PNG plot of the run.
 */
export { MetricsLog, readMetricsJsonl, type MetricsRecord } from './jsonl.js';
export { TensorBoardWriter, tfRecord, scalarEvent, fileVersionEvent } from './tensorboard.js';
export { writeTrainingPlot, renderTrainingPlot, plotPanels, PLOT_KEYS } from './plot.js';
export { Canvas, encodePng, PNG_SIGNATURE, type RGB } from './png.js';
export { crc32, crc32c, maskedCrc32c } from './crc.js';
