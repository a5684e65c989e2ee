/**
 * TensorBoard event files: TFRecord framing (tensorflow/core/lib/io/record_writer.cc) around
 * `tensorflow.Event` protobuf messages (tensorflow/core/util/event.proto) whose `summary` holds
 * `Summary.Value{tag, simple_value}` (tensorflow/core/framework/summary.proto), encoded with protobufjs from
 * the message definitions below. `tensorboard --logdir DIR` shows the scalars (the scalars plugin reads
 * `simple_value` through its data-compat layer).
 *
 * Record layout: uint64 length (LE) | uint32 masked CRC-32C of the length bytes | data | uint32 masked
 * CRC-32C of the data.
 */
import { closeSync, fsyncSync, mkdirSync, openSync, writeSync } from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';
import protobuf from 'protobufjs';
import { maskedCrc32c } from './crc.js';

/** The subset of tensorflow's event.proto / summary.proto we write (field numbers as upstream). */
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
            Value: { fields: { tag: { type: 'string', id: 1 }, simple_value: { type: 'float', id: 2 } } },
          },
        },
      },
    },
  },
});
const EventType = root.lookupType('tensorflow.Event');

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
