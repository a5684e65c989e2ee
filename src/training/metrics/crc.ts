/**
 * CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), masked as TFRecord frames require, and CRC-32
 * (ISO-HDLC, reflected polynomial 0xEDB88320) as PNG chunks require. Table-driven, one byte at a time.
 */

function makeTable(poly: number): Uint32Array {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ poly : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
}

const T32C = makeTable(0x82f63b78);
const T32 = makeTable(0xedb88320);

function crcWith(table: Uint32Array, data: Uint8Array, seed = 0): number {
  let c = (seed ^ 0xffffffff) >>> 0;
  for (let i = 0; i < data.length; i++) c = table[(c ^ data[i]!) & 0xff]! ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

/** CRC-32C of `data` (check value: "123456789" → 0xE3069283). */
export function crc32c(data: Uint8Array): number {
  return crcWith(T32C, data);
}

/** TFRecord's masked CRC-32C: ((crc >>> 15) | (crc << 17)) + 0xa282ead8 (mod 2^32) (tensorflow/core/lib/hash/crc32c.h). */
export function maskedCrc32c(data: Uint8Array): number {
  const c = crc32c(data);
  return ((((c >>> 15) | (c << 17)) >>> 0) + 0xa282ead8) >>> 0;
}

/** CRC-32 as used by PNG chunks and zlib (check value: "123456789" → 0xCBF43926); `seed` continues a CRC. */
export function crc32(data: Uint8Array, seed = 0): number {
  return crcWith(T32, data, seed);
}
