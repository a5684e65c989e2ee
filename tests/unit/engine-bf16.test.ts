/**
 * The repo's one float32 -> bfloat16 conversion (engine/lowp.ts toBfloat16, also models/safetensors.ts'
 * f32ToBf16Bits): round to nearest, ties to even, checked against an independent rounding of the exact value
 * (fast-check, fixed seed); every NaN becomes torch's canonical 0x7fc0, infinities and signed zeros stay.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { toBfloat16 } from '../../src/training/engine/lowp.js';
import { f32ToBf16Bits } from '../../src/training/models/safetensors.js';

/** bfloat16 bits of a finite float32 by comparing the distances to its two bfloat16 neighbours (ties to even). */
function nearestEven(x: number): number {
  const u = new Uint32Array(new Float32Array([x]).buffer)[0]!;
  const lo = u >>> 16;
  const below = new Float32Array(new Uint32Array([lo << 16]).buffer)[0]!;
  const above = new Float32Array(new Uint32Array([((lo + 1) << 16) >>> 0]).buffer)[0]!;
  const dBelow = Math.abs(x - below);
  // past the largest finite bfloat16 the next value is infinity: round as if it were 2^128 (IEEE overflow)
  const dAbove = Math.abs((Number.isFinite(above) ? above : Math.sign(above) * 2 ** 128) - x);
  if (dBelow < dAbove) return lo;
  if (dAbove < dBelow) return (lo + 1) & 0xffff;
  return lo % 2 === 0 ? lo : (lo + 1) & 0xffff;
}

test('toBfloat16 rounds to nearest even, NaN -> 0x7fc0, infinities and zeros kept; f32ToBf16Bits is the same function', () => {
  assert.equal(f32ToBf16Bits, toBfloat16);
  fc.assert(
    fc.property(fc.array(fc.float({ noNaN: true, noDefaultInfinity: true }), { minLength: 1, maxLength: 64 }), (xs) => {
      const got = toBfloat16(new Float32Array(xs));
      xs.forEach((x, i) => assert.equal(got[i], nearestEven(x), `x = ${x}`));
    }),
    { seed: 1616, numRuns: 300 },
  );
  // ties: 1 + 2^-8 lies halfway between bf16 1 and 1 + 2^-7 and goes to the even one (1); 1 + 3 * 2^-8 to 1 + 2^-6
  const ties = toBfloat16(new Float32Array([1 + 2 ** -8, 1 + 3 * 2 ** -8]));
  assert.deepEqual([...ties], [0x3f80, 0x3f82]);
  const nanPayload = new Float32Array(new Uint32Array([0xffc00001, 0x7f800001]).buffer);
  const special = toBfloat16(new Float32Array([Number.NaN, nanPayload[0]!, nanPayload[1]!, Infinity, -Infinity, 0, -0]));
  assert.deepEqual([...special], [0x7fc0, 0x7fc0, 0x7fc0, 0x7f80, 0xff80, 0x0000, 0x8000]);
});
