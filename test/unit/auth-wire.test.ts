/**
 * DH-HMAC-CHAP wire codecs and crypto: byte fixtures for every message and the two Fabrics
 * commands, decode errors, the DHHC-1 key representation against nvme-cli's output, and
 * known-answer vectors for the transformation, the augmented challenge and R1/R2 computed here
 * straight from the spec's definitions (independently of src/wire/dhchap.ts).
 */
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as crypto from 'node:crypto';
import {
  AuthFailure, AuthMessageError, DhchapGroup, DhchapHash, authSqeFields, decodeAuthMessage, encodeChallenge, encodeFailure,
  encodeNegotiate, encodeReply, encodeSuccess1, encodeSuccess2, parseDhchapGroup, parseDhchapHash, sqeAuthReceive, sqeAuthSend,
} from '../../src/wire/auth';
import {
  augmentedChallenge, crc32, dhExchange, dhchapResponse, ffdhePrime, formatDhchapKey, generateDhchapKey, parseDhchapKey, transformDhchapKey,
} from '../../src/wire/dhchap';
import { FFDHE_PRIMES_HEX } from '../../src/wire/ffdhe';
import { ErrorCode } from '../../src/errors';
import { throwsCode } from '../helpers/assert-code';

const hex = (s: string): Buffer => Buffer.from(s.replace(/\s+/g, ''), 'hex');

test('Authentication Send / Receive SQEs: opcode 7Fh, fctype 05h/06h, SPSP0/1 01h, SECP E9h, TL/AL @44', () => {
  const s = sqeAuthSend(72);
  assert.equal(s.length, 64);
  assert.equal(s[0], 0x7f);
  assert.equal(s[4], 0x05);
  assert.deepEqual([...s.subarray(40, 48)], [0x00, 0x01, 0x01, 0xe9, 72, 0, 0, 0]);
  const r = sqeAuthReceive(4096);
  assert.equal(r[4], 0x06);
  assert.deepEqual([...r.subarray(40, 48)], [0x00, 0x01, 0x01, 0xe9, 0x00, 0x10, 0, 0]);
  const f = authSqeFields(r.readUInt32LE(40), r.readUInt32LE(44));
  assert.deepEqual(f, { secp: 0xe9, spsp0: 1, spsp1: 1, length: 4096 });
  throwsCode(() => sqeAuthSend(0), ErrorCode.INVALID_ARGUMENT);
});

test('AUTH_Negotiate: 8-byte header + one 64-byte descriptor, hash ids @4, DH ids @34 of the descriptor', () => {
  const b = encodeNegotiate({ tid: 0x0203, scc: 0, hashes: [1, 2, 3], dhgroups: [0, 1, 2, 3, 4, 5] });
  const want = Buffer.alloc(72);
  hex('0000 0000 0302 00 01').copy(want, 0);
  hex('01 00 03 06 010203').copy(want, 8);
  hex('000102030405').copy(want, 8 + 34);
  assert.deepEqual(b, want);
  const m = decodeAuthMessage(Buffer.concat([b, Buffer.alloc(100)]));
  assert.deepEqual(m, { kind: 'negotiate', tid: 0x0203, scc: 0, napd: 1, hashes: [1, 2, 3], dhgroups: [0, 1, 2, 3, 4, 5] });
});

test('DH-HMAC-CHAP_Challenge / _Reply / _Success1 / _Success2 / Failure: exact bytes and round trips', () => {
  const c1 = Buffer.alloc(32, 0xaa);
  const dhv = Buffer.alloc(256, 0x55);
  const ch = encodeChallenge({ tid: 7, hashId: 1, dhgroup: 1, seqnum: 0x11223344, challenge: c1, dhValue: dhv });
  assert.deepEqual(ch.subarray(0, 16), hex('0101 0000 0700 20 00 01 01 0001 44332211'));
  assert.equal(ch.length, 16 + 32 + 256);
  assert.deepEqual(decodeAuthMessage(Buffer.concat([ch, Buffer.alloc(7)])), { kind: 'challenge', tid: 7, hashId: 1, dhgroup: 1, seqnum: 0x11223344, challenge: c1, dhValue: dhv });

  const r1 = Buffer.alloc(48, 0x01);
  const c2 = Buffer.alloc(48, 0x02);
  const rep = encodeReply({ tid: 9, response: r1, challenge: c2, seqnum: 5, dhValue: Buffer.alloc(0) });
  assert.deepEqual(rep.subarray(0, 16), hex('0102 0000 0900 30 00 01 00 0000 05000000'));
  assert.equal(rep.length, 16 + 96);
  assert.deepEqual(decodeAuthMessage(rep), { kind: 'reply', tid: 9, response: r1, challenge: c2, seqnum: 5, dhValue: Buffer.alloc(0) });
  // Unidirectional: CVALID 0, C2 zero but present (Linux sends 16 + 2·HL + DHVLEN).
  const uni = encodeReply({ tid: 9, response: r1, challenge: undefined, seqnum: 0, dhValue: Buffer.alloc(0) });
  assert.equal(uni.length, 16 + 96);
  assert.equal(uni[8], 0);
  assert.equal((decodeAuthMessage(uni) as { challenge?: Buffer }).challenge, undefined);

  const s1 = encodeSuccess1({ tid: 9, hashLength: 64, response: Buffer.alloc(64, 3) });
  assert.deepEqual(s1.subarray(0, 16), hex('0103 0000 0900 40 00 01 00000000000000'));
  assert.deepEqual(decodeAuthMessage(s1), { kind: 'success1', tid: 9, hashLength: 64, response: Buffer.alloc(64, 3) });
  assert.deepEqual(decodeAuthMessage(encodeSuccess1({ tid: 9, hashLength: 32, response: undefined })), { kind: 'success1', tid: 9, hashLength: 32, response: undefined });

  assert.deepEqual(encodeSuccess2(0xbeef), hex('0104 0000 efbe 0000 00000000 00000000'));
  assert.deepEqual(decodeAuthMessage(encodeSuccess2(0xbeef)), { kind: 'success2', tid: 0xbeef });
  assert.deepEqual(encodeFailure('failure1', 3, AuthFailure.HASH_UNUSABLE), hex('00f1 0000 0300 01 04'));
  assert.deepEqual(encodeFailure('failure2', 3, AuthFailure.FAILED), hex('00f0 0000 0300 01 01'));
  assert.deepEqual(decodeAuthMessage(hex('00f1 0000 0300 01 06 0000')), { kind: 'failure1', tid: 3, reason: 1, explanation: 6 });
});

test('decode errors carry the Failure explanation: unknown ids, short messages, lengths beyond the buffer', () => {
  const expl = (b: Buffer): number => {
    try {
      decodeAuthMessage(b);
    } catch (err) {
      assert.ok(err instanceof AuthMessageError);
      assert.equal(err.code, ErrorCode.AUTH_FAILED);
      return err.explanation;
    }
    assert.fail('decoded');
  };
  assert.equal(expl(hex('01')), AuthFailure.INCORRECT_MESSAGE);
  assert.equal(expl(hex('0099 0000 0000 0000')), AuthFailure.INCORRECT_MESSAGE);
  assert.equal(expl(Buffer.concat([hex('0177'), Buffer.alloc(14)])), AuthFailure.INCORRECT_MESSAGE);
  assert.equal(expl(hex('0500')), AuthFailure.INCORRECT_MESSAGE);
  assert.equal(expl(hex('0101 0000 0100 20')), AuthFailure.INCORRECT_PAYLOAD);
  // HL 32 + DHVLEN 256 in a 100-byte message.
  const ch = encodeChallenge({ tid: 1, hashId: 1, dhgroup: 1, seqnum: 1, challenge: Buffer.alloc(32), dhValue: Buffer.alloc(256) });
  assert.equal(expl(ch.subarray(0, 100)), AuthFailure.INCORRECT_PAYLOAD);
  const rep = encodeReply({ tid: 1, response: Buffer.alloc(32), challenge: undefined, seqnum: 0, dhValue: Buffer.alloc(0) });
  assert.equal(expl(rep.subarray(0, 40)), AuthFailure.INCORRECT_PAYLOAD);
  const neg = encodeNegotiate({ tid: 1, scc: 0, hashes: [1], dhgroups: [0] });
  assert.equal(expl(neg.subarray(0, 40)), AuthFailure.INCORRECT_PAYLOAD);
  const badHalen = Buffer.from(neg);
  badHalen[10] = 31;
  assert.equal(expl(badHalen), AuthFailure.INCORRECT_PAYLOAD);
  const noDhchap = Buffer.from(neg);
  noDhchap[8] = 0x02;
  assert.equal(expl(noDhchap), AuthFailure.NOT_USABLE);
  assert.equal(expl(hex('00f1 0000')), AuthFailure.INCORRECT_PAYLOAD);
});

test('hash and group names parse as the CLI takes them', () => {
  assert.equal(parseDhchapHash('sha256'), DhchapHash.SHA256);
  assert.equal(parseDhchapHash('hmac(sha384)'), DhchapHash.SHA384);
  assert.equal(parseDhchapHash('SHA-512'), DhchapHash.SHA512);
  assert.equal(parseDhchapHash('md5'), undefined);
  assert.equal(parseDhchapGroup('null'), DhchapGroup.NULL);
  assert.equal(parseDhchapGroup('ffdhe8192'), DhchapGroup.FFDHE8192);
  assert.equal(parseDhchapGroup('3072'), DhchapGroup.FFDHE3072);
  assert.equal(parseDhchapGroup('ffdhe1024'), undefined);
});

test('DHHC-1 keys: nvme-cli 2.3 output reproduced byte for byte; CRC, length and hash checks', () => {
  // `nvme gen-dhchap-key --secret=000102…1f --hmac=1 --nqn=nqn.2014-08.org.example:host1` (nvme-cli 2.3).
  const secret = Buffer.from([...Array(32).keys()]);
  const fromNvmeCli = 'DHHC-1:01:1wWhDeGRxTcjvLIclMHvVmyLF4rH+aG7AtuOoUZmKwLX2OkT:';
  const k = generateDhchapKey({ secret, hmac: 1, nqn: 'nqn.2014-08.org.example:host1' });
  assert.equal(formatDhchapKey(k), fromNvmeCli);
  // The key bytes are HMAC-SHA-256(secret, NQN || "NVMe-over-Fabrics") and the CRC is zlib's crc32, little-endian.
  const hm = crypto.createHmac('sha256', secret).update('nqn.2014-08.org.example:host1NVMe-over-Fabrics').digest();
  assert.deepEqual(k.key, hm);
  assert.equal(crc32(hm), 0x13e9d8d7);
  assert.equal(crc32(Buffer.from('123456789')), 0xcbf43926);
  assert.deepEqual(parseDhchapKey(fromNvmeCli), k);
  assert.deepEqual(parseDhchapKey(fromNvmeCli.slice(0, -1)), k, 'the trailing colon is optional (as Linux)');
  // hmac 0: the secret unchanged.
  assert.deepEqual(generateDhchapKey({ secret, hmac: 0 }).key, secret);
  assert.equal(generateDhchapKey({ keyLength: 64 }).key.length, 64);
  const bad = (s: string): void => { throwsCode(() => parseDhchapKey(s), ErrorCode.DHCHAP_KEY_INVALID); };
  bad('DHHC-1:01:1wWhDeGRxTcjvLIclMHvVmyLF4rH+aG7AtuOoUZmKwLx2OkT:'); // one bit off: CRC
  bad('DHHC-1:04:1wWhDeGRxTcjvLIclMHvVmyLF4rH+aG7AtuOoUZmKwLX2OkT:'); // hash indicator
  bad('DHHC-1:02:1wWhDeGRxTcjvLIclMHvVmyLF4rH+aG7AtuOoUZmKwLX2OkT:'); // 32 bytes with SHA-384
  bad(`DHHC-1:00:${Buffer.alloc(20).toString('base64')}:`); // length
  bad('DHHC-2:00:AAAA:');
  throwsCode(() => generateDhchapKey({ hmac: 2, keyLength: 32, nqn: 'x' }), ErrorCode.DHCHAP_KEY_INVALID);
  throwsCode(() => generateDhchapKey({ keyLength: 40 }), ErrorCode.DHCHAP_KEY_INVALID);
  throwsCode(() => generateDhchapKey({ hmac: 1 }), ErrorCode.DHCHAP_KEY_INVALID, 'hmac needs an NQN');
  try {
    parseDhchapKey('DHHC-1:00:c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0Zm9v:');
  } catch (err) {
    assert.doesNotMatch((err as Error).message, /c2VjcmV0/, 'a rejected key is not echoed');
  }
});

test('known answers from the spec definitions: transformation, augmented challenge, R1 and R2', () => {
  const hostnqn = 'nqn.2014-08.org.example:host1';
  const subnqn = 'nqn.2014-08.org.example:sub1';
  const key = { hmac: 1 as const, key: Buffer.alloc(32, 0x01) };
  // Kh' = HMAC-SHA-256(Kh, NQNh || "NVMe-over-Fabrics")
  const kt = transformDhchapKey(key, hostnqn);
  assert.equal(kt.toString('hex'), 'ed8d6b6fd77c79327885f43711c9a82b1dfbb181676a6f9ed02c8c48320bbcd3');
  assert.deepEqual(transformDhchapKey({ hmac: 0, key: key.key }, hostnqn), key.key, 'hash indicator 0: no transformation');
  const c1 = Buffer.from([...Array(32).keys()]);
  // R1 = HMAC(Kh', C1 || LE32(S1) || LE16(T_ID) || 00h || "HostHost" || NQNh || 00h || NQNc)
  const r1 = dhchapResponse('host', { hashId: 1, key: kt, challenge: c1, seqnum: 0x12345678, tid: 0x0102, hostnqn, subnqn });
  assert.equal(r1.toString('hex'), '35044fb527eb2bcc228225721fbc3d714676621c62727655954ea03a1bf4b5a7');
  for (const [hashId, name, len] of [[1, 'sha256', 32], [2, 'sha384', 48], [3, 'sha512', 64]] as const) {
    const k = Buffer.alloc(len, 0x42);
    const c = Buffer.alloc(len, 0x17);
    const ks = Buffer.alloc(256, 0x99);
    const seq = Buffer.from([0x78, 0x56, 0x34, 0x12, 0x02, 0x01, 0x00]);
    // Ca = HMAC(H(Ks), C)
    const ca = crypto.createHmac(name, crypto.createHash(name).update(ks).digest()).update(c).digest();
    assert.deepEqual(augmentedChallenge(hashId, ks, c), ca);
    const expectR1 = crypto.createHmac(name, k).update(Buffer.concat([ca, seq, Buffer.from('HostHost'), Buffer.from(hostnqn), Buffer.alloc(1), Buffer.from(subnqn)])).digest();
    const expectR2 = crypto.createHmac(name, k).update(Buffer.concat([ca, seq, Buffer.from('Controller'), Buffer.from(subnqn), Buffer.alloc(1), Buffer.from(hostnqn)])).digest();
    const common = { hashId, key: k, challenge: c, sessionKey: ks, seqnum: 0x12345678, tid: 0x0102, hostnqn, subnqn };
    assert.deepEqual(dhchapResponse('host', common), expectR1, `R1 ${name}`);
    assert.deepEqual(dhchapResponse('controller', common), expectR2, `R2 ${name}`);
  }
});

test('ffdhe primes: RFC 7919 shape (64 leading/trailing one bits), size, and safe primes', () => {
  for (const bits of [2048, 3072, 4096, 6144, 8192] as const) {
    const p = Buffer.from(FFDHE_PRIMES_HEX[bits], 'hex');
    assert.equal(p.length * 8, bits);
    assert.ok(p.subarray(0, 8).equals(Buffer.alloc(8, 0xff)) && p.subarray(-8).equals(Buffer.alloc(8, 0xff)));
    // ffdhe2048 starts FFFFFFFF FFFFFFFF ADF85458 A2BB4A9A (RFC 7919 A.1): e in the middle.
    assert.equal(p.subarray(8, 16).toString('hex'), 'adf85458a2bb4a9a');
    if (bits <= 4096) {
      // p and (p-1)/2 prime (the bigger ones take seconds; same construction, checked by shape).
      const pn = BigInt(`0x${p.toString('hex')}`);
      assert.ok(crypto.checkPrimeSync(pn, { checks: 2 }), `ffdhe${bits} prime`);
      assert.ok(crypto.checkPrimeSync((pn - 1n) / 2n, { checks: 2 }), `ffdhe${bits} safe`);
    }
  }
});

test('DH exchange: both sides agree on a padded session key; bad peer values are refused', () => {
  for (const g of [DhchapGroup.FFDHE2048, DhchapGroup.FFDHE3072]) {
    const a = dhExchange(g);
    const b = dhExchange(g);
    const plen = ffdhePrime(g).length;
    assert.equal(a.publicValue.length, plen);
    assert.deepEqual(a.sessionKey(b.publicValue), b.sessionKey(a.publicValue));
    assert.equal(a.sessionKey(b.publicValue).length, plen);
    const one = Buffer.alloc(plen);
    one[plen - 1] = 1;
    throwsCode(() => a.sessionKey(one), ErrorCode.AUTH_FAILED);
    const pm1 = Buffer.from(ffdhePrime(g));
    pm1[plen - 1] = 0xfe;
    throwsCode(() => a.sessionKey(pm1), ErrorCode.AUTH_FAILED);
    throwsCode(() => a.sessionKey(Buffer.alloc(plen - 1, 7)), ErrorCode.AUTH_FAILED);
  }
});
