#!/usr/bin/env node
'use strict';
/**
 * Container HEALTHCHECK: exits 0 when the service named by $NVMF_NBD_HEALTH answers with its
 * protocol's first message, 1 otherwise (within $NVMF_NBD_HEALTH_TIMEOUT_MS, default 3000).
 *
 *   nbd:HOST:PORT       NBD server over TCP: expects the newstyle greeting "NBDMAGIC" "IHAVEOPT"
 *   nbd-unix:PATH       the same over a Unix socket (the default NBD endpoint is a 0600 socket)
 *   nvme-tcp:HOST:PORT  NVMe/TCP target (`nvmf-nbd target`): sends an ICReq, expects an ICResp
 *   tcp:HOST:PORT       plain TCP connect (anything listening)
 *   unix:PATH           plain Unix-socket connect (e.g. the daemon's control socket)
 *
 * Plain JavaScript on Node built-ins so the check needs nothing but the image's node; it only
 * reads a few bytes and closes, which servers treat as a client that went away.
 */
const net = require('node:net');

const spec = process.env.NVMF_NBD_HEALTH || 'nbd:127.0.0.1:10809';
const timeoutMs = Number(process.env.NVMF_NBD_HEALTH_TIMEOUT_MS || 3000);

/** Splits "kind:rest" and "host:port" (IPv6 literals in brackets allowed). */
function parse(s) {
  const i = s.indexOf(':');
  if (i < 0) throw new Error(`bad NVMF_NBD_HEALTH '${s}'`);
  const kind = s.slice(0, i);
  const rest = s.slice(i + 1);
  if (kind === 'unix' || kind === 'nbd-unix') return { kind, connect: { path: rest } };
  const m = /^\[?([^\]]*?)\]?:(\d+)$/.exec(rest);
  if (!m) throw new Error(`bad host:port in NVMF_NBD_HEALTH '${s}'`);
  return { kind, connect: { host: m[1], port: Number(m[2]) } };
}

/** ICReq (NVMe/TCP TP 8000 §3.6.2.2): 128-byte header, pfv 0, hpda 0, no digests, maxr2t 0. */
function icReq() {
  const b = Buffer.alloc(128);
  b[0] = 0x00; // PDU type ICReq
  b[2] = 128; // hlen
  b.writeUInt32LE(128, 4); // plen
  return b;
}

/** Bytes the peer must send first, and what to send to make it answer. */
function expectation(kind) {
  switch (kind) {
    case 'nbd':
    case 'nbd-unix':
      return { send: null, need: 16, ok: (b) => b.subarray(0, 16).toString('latin1') === 'NBDMAGICIHAVEOPT' };
    case 'nvme-tcp':
      return { send: icReq(), need: 8, ok: (b) => b[0] === 0x01 && b[2] === 128 && b.readUInt32LE(4) === 128 };
    case 'tcp':
    case 'unix':
      return { send: null, need: 0, ok: () => true };
    default:
      throw new Error(`unknown health check kind '${kind}'`);
  }
}

function main() {
  let target;
  let exp;
  try {
    target = parse(spec);
    exp = expectation(target.kind);
  } catch (err) {
    process.stderr.write(`healthcheck: ${err.message}\n`);
    process.exit(2);
  }
  const finish = (ok, why) => {
    if (!ok) process.stderr.write(`healthcheck: ${spec}: ${why}\n`);
    process.exit(ok ? 0 : 1);
  };
  const timer = setTimeout(() => finish(false, `no answer within ${timeoutMs} ms`), timeoutMs);
  timer.unref();
  const sock = net.connect(target.connect);
  let got = Buffer.alloc(0);
  sock.on('connect', () => {
    if (exp.need === 0) finish(true);
    else if (exp.send) sock.write(exp.send);
  });
  sock.on('data', (chunk) => {
    // At most `need` bytes are kept: a peer that streams more cannot grow this.
    got = Buffer.concat([got, chunk]).subarray(0, exp.need);
    if (got.length >= exp.need) finish(exp.ok(got), 'unexpected first reply 0x' + got.toString('hex'));
  });
  sock.on('error', (err) => finish(false, err.code || err.message));
  sock.on('close', () => finish(false, 'closed before answering'));
}

main();
