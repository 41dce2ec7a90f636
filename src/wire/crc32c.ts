/**
 * CRC32C (Castagnoli, reflected polynomial 0x82F63B78), the digest of NVMe/TCP (TP 8000 §7.4.10:
 * HDGST and DDGST). Node's `zlib.crc32` is the IEEE polynomial, so this is our own
 * table-driven slice-by-8: 8 lookup tables of 256 entries, eight input bytes per step.
 */

const POLY = 0x82f63b78;

/** 8 tables of 256 entries, one flat array so lookups stay in one typed array. */
const T = buildTables();

function buildTables(): Int32Array {
  const t = new Int32Array(8 * 256);
  for (let i = 0; i < 256; i++) {
    let c = i;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ POLY : c >>> 1;
    t[i] = c;
  }
  for (let i = 0; i < 256; i++) {
    let c = t[i]!;
    for (let k = 1; k < 8; k++) {
      // Table k is table k-1 advanced by one zero byte.
      c = (c >>> 8) ^ t[c & 0xff]!;
      t[k * 256 + i] = c;
    }
  }
  return t;
}

/**
 * CRC32C of `data`. The initial value and final XOR (0xFFFFFFFF) are handled here, so a running
 * digest chains: `crc32c(b, crc32c(a)) === crc32c(a ++ b)`.
 * @param data bytes to digest
 * @param crc the CRC of the bytes before `data` (0 to start)
 * @returns the unsigned 32-bit CRC
 */
export function crc32c(data: Uint8Array, crc = 0): number {
  const t = T;
  let c = ~crc | 0;
  let i = 0;
  const n = data.length;
  const end8 = n - (n & 7);
  while (i < end8) {
    const lo = c ^ (data[i]! | (data[i + 1]! << 8) | (data[i + 2]! << 16) | (data[i + 3]! << 24));
    c =
      t[7 * 256 + (lo & 0xff)]! ^
      t[6 * 256 + ((lo >>> 8) & 0xff)]! ^
      t[5 * 256 + ((lo >>> 16) & 0xff)]! ^
      t[4 * 256 + (lo >>> 24)]! ^
      t[3 * 256 + data[i + 4]!]! ^
      t[2 * 256 + data[i + 5]!]! ^
      t[256 + data[i + 6]!]! ^
      t[data[i + 7]!]!;
    i += 8;
  }
  while (i < n) {
    c = (c >>> 8) ^ t[(c ^ data[i]!) & 0xff]!;
    i++;
  }
  return ~c >>> 0;
}
