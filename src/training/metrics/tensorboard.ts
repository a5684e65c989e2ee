/**
 * TensorBoard event files: TFRecord framing (tensorflow/core/lib/io/record_writer.cc) around
 * `tensorflow.Event` protobuf messages (tensorflow/core/util/event.proto) whose `summary` holds
 * `Summary.Value{tag, simple_value}` (tensorflow/core/framework/summary.proto), encoded with protobufjs from
 * the message definitions below. `tensorboard --logdir DIR` shows the scalars (the scalars plugin reads
 * `simple_value` through its data-compat layer), text summaries (the text plugin: a DT_STRING tensor with
 * `plugin_name: text`) and hyper-parameters (the hparams plugin's session start/end summaries).
 *
 * Record layout: uint64 length (LE) | uint32 masked CRC-32C of the length bytes | data | uint32 masked
 * CRC-32C of the data.
 */
import { closeSync, fsyncSync, mkdirSync, openSync, writeSync } from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';
import protobuf from 'protobufjs';
import { maskedCrc32c } from './crc.js';

/** `map<string, google.protobuf.Value> hparams = 1` of SessionStartInfo. */
const hparamsMap: protobuf.IMapField = { keyType: 'string', type: 'HValue', id: 1 };

/**
 * The subset of tensorflow's event.proto / summary.proto / tensor.proto and of tensorboard's hparams
 * plugin_data.proto we write (field numbers as upstream; google.protobuf.Value as in struct.proto).
 */
const root = protobuf.Root.fromJSON({
  nested: {
    tensorflow: {
      nested: {
        Event: {
          fields: {
            wall_time: { type: 'double', id: 1 },
            step: { type: 'int64', id: 2 },
            file_version: { type: 'string', id: 3 },
            summary: { type: 'Summary', id: 5 },
          },
        },
        Summary: {
          fields: { value: { rule: 'repeated', type: 'Value', id: 1 } },
          nested: {
            Value: {
              fields: {
                tag: { type: 'string', id: 1 },
                simple_value: { type: 'float', id: 2 },
                tensor: { type: 'TensorProto', id: 8 },
                metadata: { type: 'SummaryMetadata', id: 9 },
              },
            },
          },
        },
        SummaryMetadata: {
          fields: {
            plugin_data: { type: 'PluginData', id: 1 },
            display_name: { type: 'string', id: 2 },
            summary_description: { type: 'string', id: 3 },
            data_class: { type: 'int32', id: 4 },
          },
          nested: { PluginData: { fields: { plugin_name: { type: 'string', id: 1 }, content: { type: 'bytes', id: 2 } } } },
        },
        TensorProto: {
          fields: {
            dtype: { type: 'int32', id: 1 },
            tensor_shape: { type: 'TensorShapeProto', id: 2 },
            string_val: { rule: 'repeated', type: 'bytes', id: 8 },
          },
        },
        TensorShapeProto: {
          fields: { dim: { rule: 'repeated', type: 'Dim', id: 2 } },
          nested: { Dim: { fields: { size: { type: 'int64', id: 1 }, name: { type: 'string', id: 2 } } } },
        },
      },
    },
    tensorboard: {
      nested: {
        HParamsPluginData: {
          oneofs: { data: { oneof: ['session_start_info', 'session_end_info'] } },
          fields: {
            version: { type: 'int32', id: 1 },
            session_start_info: { type: 'SessionStartInfo', id: 3 },
            session_end_info: { type: 'SessionEndInfo', id: 4 },
          },
        },
        SessionStartInfo: {
          fields: {
            hparams: hparamsMap,
            group_name: { type: 'string', id: 4 },
            start_time_secs: { type: 'double', id: 5 },
          },
        },
        SessionEndInfo: { fields: { status: { type: 'int32', id: 1 }, end_time_secs: { type: 'double', id: 2 } } },
        /** google.protobuf.Value (struct.proto), the kinds we use */
        HValue: {
          oneofs: { kind: { oneof: ['number_value', 'string_value', 'bool_value'] } },
          fields: { number_value: { type: 'double', id: 2 }, string_value: { type: 'string', id: 3 }, bool_value: { type: 'bool', id: 4 } },
        },
      },
    },
  },
});
const EventType = root.lookupType('tensorflow.Event');
const HParamsType = root.lookupType('tensorboard.HParamsPluginData');
/** tensorflow DataType DT_STRING; SummaryMetadata DataClass DATA_CLASS_TENSOR; hparams Status STATUS_SUCCESS */
const DT_STRING = 7;
const DATA_CLASS_TENSOR = 2;
const STATUS_SUCCESS = 1;

/** A decoded event (tests and tools): wall time, step, and the summary values as plain objects. */
export interface DecodedEvent {
  wall_time?: number;
  step?: number;
  file_version?: string;
  summary?: {
    value: Array<{
      tag: string;
      simple_value?: number;
      tensor?: { dtype: number; string_val?: Uint8Array[] };
      metadata?: { plugin_data?: { plugin_name: string; content?: Uint8Array } };
    }>;
  };
}

/** Decode one event record's data (the inverse of the writer's encoding). */
export function decodeEvent(data: Uint8Array): DecodedEvent {
  return EventType.toObject(EventType.decode(data), { longs: Number }) as DecodedEvent;
}

/** Decode the `content` of an hparams plugin summary. */
export function decodeHParams(content: Uint8Array): Record<string, unknown> {
  return HParamsType.toObject(HParamsType.decode(content), { longs: Number, oneofs: true });
}

function encodeEvent(fields: Record<string, unknown>): Buffer {
  return Buffer.from(EventType.encode(EventType.fromObject(fields)).finish());
}

/** One TFRecord frame around `data`. */
export function tfRecord(data: Uint8Array): Buffer {
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(data.length));
  const lenCrc = Buffer.alloc(4);
  lenCrc.writeUInt32LE(maskedCrc32c(len));
  const dataCrc = Buffer.alloc(4);
  dataCrc.writeUInt32LE(maskedCrc32c(data));
  return Buffer.concat([len, lenCrc, Buffer.from(data), dataCrc]);
}

/** Encoded `Event{wall_time, step, summary{value{tag, simple_value}}}`; `step` is an int64 (truncated). */
export function scalarEvent(tag: string, value: number, step: number, wallTime: number): Buffer {
  return encodeEvent({ wall_time: wallTime, step: Math.trunc(step), summary: { value: [{ tag, simple_value: value }] } });
}

/** Encoded `Event{wall_time, file_version: "brain.Event:2"}`, the first record of every event file. */
export function fileVersionEvent(wallTime: number): Buffer {
  return encodeEvent({ wall_time: wallTime, file_version: 'brain.Event:2' });
}

/**
 * Appends scalar summaries to a TensorBoard event file `DIR/events.out.tfevents.<secs>.<host>.<pid>.<n>`.
 * Records are buffered and written by {@link flush} (also every `flushEvery` records and at {@link close}).
 * Synchronous file IO: one small write per flush.
 */
export class TensorBoardWriter {
  /** Path of the event file. */
  readonly path: string;
  private fd: number | null;
  private pending: Buffer[] = [];
  private readonly flushEvery: number;
  private static counter = 0;

  /**
   * @param dir log directory (created if missing)
   * @param opts.flushEvery records buffered before an automatic flush (default 20)
   * @throws the fs error when the directory or file cannot be created
   */
  constructor(dir: string, opts: { flushEvery?: number } = {}) {
    mkdirSync(dir, { recursive: true });
    const secs = Math.floor(Date.now() / 1000);
    this.path = join(dir, `events.out.tfevents.${secs}.${hostname()}.${process.pid}.${TensorBoardWriter.counter++}`);
    this.fd = openSync(this.path, 'a');
    this.flushEvery = Math.max(1, opts.flushEvery ?? 20);
    this.pending.push(tfRecord(fileVersionEvent(Date.now() / 1000)));
    this.flush();
  }

  /**
   * Queue one scalar.
   * @param tag e.g. `dpo/rewards/accuracies` (TensorBoard groups by the part before the first `/`)
   * @param value the value (stored as float32, as TensorBoard's simple_value); non-finite values are skipped
   * @param step the global step (int64)
   * @param wallTime seconds since the epoch (default now)
   */
  scalar(tag: string, value: number, step: number, wallTime = Date.now() / 1000): void {
    if (this.fd === null) throw new Error(`TensorBoardWriter(${this.path}) is closed`);
    if (!Number.isFinite(value)) return;
    this.pending.push(tfRecord(scalarEvent(tag, value, step, wallTime)));
    if (this.pending.length >= this.flushEvery) this.flush();
  }

  /**
   * Queue a text summary (TensorBoard's text plugin renders it as markdown).
   * @param tag e.g. `samples/dpo`
   */
  text(tag: string, markdown: string, step: number, wallTime = Date.now() / 1000): void {
    if (this.fd === null) throw new Error(`TensorBoardWriter(${this.path}) is closed`);
    const value = {
      tag,
      metadata: { plugin_data: { plugin_name: 'text', content: new Uint8Array(0) }, data_class: DATA_CLASS_TENSOR },
      tensor: { dtype: DT_STRING, tensor_shape: { dim: [] }, string_val: [Buffer.from(markdown, 'utf8')] },
    };
    this.pending.push(tfRecord(encodeEvent({ wall_time: wallTime, step: Math.trunc(step), summary: { value: [value] } })));
    if (this.pending.length >= this.flushEvery) this.flush();
  }

  /**
   * Record the run's hyper-parameters for TensorBoard's HParams dashboard: a session start (tag
   * `_hparams_/session_start_info`) now and a session end (`_hparams_/session_end_info`, status success)
   * when `end` is true; the dashboard infers the experiment (columns and metrics) from the sessions, as for
   * PyTorch's `SummaryWriter.add_hparams` without an experiment summary.
   * @param hparams flat name → number | string | boolean (other values are written as JSON strings)
   */
  hparams(hparams: Record<string, unknown>, opts: { end?: boolean; wallTime?: number } = {}): void {
    if (this.fd === null) throw new Error(`TensorBoardWriter(${this.path}) is closed`);
    const wallTime = opts.wallTime ?? Date.now() / 1000;
    const values: Record<string, Record<string, unknown>> = {};
    for (const [k, v] of Object.entries(hparams)) {
      if (typeof v === 'number' && Number.isFinite(v)) values[k] = { number_value: v };
      else if (typeof v === 'boolean') values[k] = { bool_value: v };
      else if (typeof v === 'string') values[k] = { string_value: v };
      else values[k] = { string_value: JSON.stringify(v) ?? 'null' };
    }
    const summary = (tag: string, data: Record<string, unknown>) => {
      const content = HParamsType.encode(HParamsType.fromObject({ version: 0, ...data })).finish();
      const value = { tag, metadata: { plugin_data: { plugin_name: 'hparams', content } } };
      return tfRecord(encodeEvent({ wall_time: wallTime, step: 0, summary: { value: [value] } }));
    };
    this.pending.push(summary('_hparams_/session_start_info', { session_start_info: { hparams: values, group_name: '', start_time_secs: wallTime } }));
    if (opts.end) this.pending.push(summary('_hparams_/session_end_info', { session_end_info: { status: STATUS_SUCCESS, end_time_secs: wallTime } }));
    this.flush();
  }

  /** Write every `key: number` of a metrics record as `${prefix}${key}` scalars at `step`. */
  scalars(metrics: Record<string, unknown>, step: number, prefix = ''): void {
    for (const [k, v] of Object.entries(metrics)) if (typeof v === 'number') this.scalar(`${prefix}${k}`, v, step);
  }

  /** Write the buffered records to the file. */
  flush(): void {
    if (this.fd === null || this.pending.length === 0) return;
    const buf = Buffer.concat(this.pending);
    this.pending = [];
    let off = 0;
    while (off < buf.length) off += writeSync(this.fd, buf, off, buf.length - off);
  }

  /** Flush, fsync and close the file (idempotent). */
  close(): void {
    if (this.fd === null) return;
    this.flush();
    try {
      fsyncSync(this.fd);
    } finally {
      closeSync(this.fd);
      this.fd = null;
    }
  }
}
