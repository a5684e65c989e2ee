/** The queue module: names, payload types, producer service, status mapping, failure codes. */
export * from './types.js';
export * from './errors.js';
export * from './status.js';
export * from './connection.js';
export * from './finetune-queue.js';
export * from './stats.js';
