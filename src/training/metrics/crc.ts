/**
 * CRC-32C (Castagnoli) as TFRecord frames require, from @google-cloud/storage's `CRC32C` (the same
 * implementation the storage client uses to check uploads), and TFRecord's masking of it.
 */
import { CRC32C } from '@google-cloud/storage';

/** CRC-32C of `data` as an unsigned 32-bit integer (check value: "123456789" → 0xE3069283). */
export function crc32c(data: Uint8Array): number {
  const c = new CRC32C();
  c.update(Buffer.from(data.buffer, data.byteOffset, data.byteLength));
  return c.valueOf() >>> 0;
}

/** TFRecord's masked CRC-32C: ((crc >>> 15) | (crc << 17)) + 0xa282ead8 (mod 2^32) (tensorflow/core/lib/hash/crc32c.h). */
export function maskedCrc32c(data: Uint8Array): number {
  const c = crc32c(data);
  return ((((c >>> 15) | (c << 17)) >>> 0) + 0xa282ead8) >>> 0;
}
