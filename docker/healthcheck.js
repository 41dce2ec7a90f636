#!/usr/bin/env node
'use strict';
/**
 * Container HEALTHCHECK: exits 0 when the service named by $NVMF_NBD_HEALTH answers with its
 * protocol's first message, 1 otherwise (within $NVMF_NBD_HEALTH_TIMEOUT_MS, default 3000).
 *
 *   nbd:HOST:PORT       NBD server over TCP: expects the newstyle greeting "NBDMAGIC" "IHAVEOPT"
 *   nbd-unix:PATH       the same over a Unix socket (the default NBD endpoint is a 0600 socket)
 *   nvme-tcp:HOST:PORT  NVMe/TCP target (`nvmf-nbd target`): sends an ICReq, expects an ICResp
 *   control:PATH        the daemon's control socket: sends {"id":1,"verb":"list"}, expects ok:true
 *   tcp:HOST:PORT       plain TCP connect (anything listening)
 *   unix:PATH           plain Unix-socket connect
 *
 * Unset: `control:<socket>` when the daemon's control socket exists ($NVMF_NBD_CONTROL, else
 * $NVMF_NBD_STATE_DIR/control.sock, as `nvmf-nbd daemon` places it), else
 * nbd-unix:$NVMF_NBD_STATE_DIR/nbd/nvme0/nvme0n1.sock (where `connect` serves its first export by
 * default; NBD is not on loopback TCP by default, issue 14 finding 1).
 *
 * Plain JavaScript on Node built-ins so the check needs nothing but the image's node; it only
 * reads a few bytes and closes, which servers treat as a client that went away.
 */
const net = require('node:net');

const fs = require('node:fs');
const path = require('node:path');

/** The check to run when $NVMF_NBD_HEALTH is unset (see above). */
function defaultSpec(env) {
  const control = env.NVMF_NBD_CONTROL || path.join(env.NVMF_NBD_STATE_DIR || '/var/lib/nvmf-nbd', 'control.sock');
  try {
    if (fs.statSync(control).isSocket()) return `control:${control}`;
  } catch {
    // no daemon socket: fall through
  }
  return `nbd-unix:${path.join(env.NVMF_NBD_STATE_DIR || '/var/lib/nvmf-nbd', 'nbd', 'nvme0', 'nvme0n1.sock')}`;
}

const spec = process.env.NVMF_NBD_HEALTH || defaultSpec(process.env);
const timeoutMs = Number(process.env.NVMF_NBD_HEALTH_TIMEOUT_MS || 3000);

/** Splits "kind:rest" and "host:port" (IPv6 literals in brackets allowed). */
function parse(s) {
  const i = s.indexOf(':');
  if (i < 0) throw new Error(`bad NVMF_NBD_HEALTH '${s}'`);
  const kind = s.slice(0, i);
  const rest = s.slice(i + 1);
  if (kind === 'unix' || kind === 'nbd-unix' || kind === 'control') {
    if (rest === '') throw new Error(`bad socket path in NVMF_NBD_HEALTH '${s}'`);
    return { kind, connect: { path: rest } };
  }
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
    case 'control':
      // One JSON request line; the daemon answers each line with one JSON line in order.
      return {
        send: Buffer.from('{"id":1,"verb":"list"}\n'),
        need: -1,
        ok: (b) => {
          try {
            const r = JSON.parse(b.toString('utf8'));
            return r !== null && typeof r === 'object' && r.id === 1 && r.ok === true;
          } catch {
            return false;
          }
        },
      };
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
    if (exp.need < 0) {
      // Line-framed reply (control socket): up to the first newline, at most 1 MiB kept.
      got = Buffer.concat([got, chunk]);
      const nl = got.indexOf(0x0a);
      if (nl >= 0) finish(exp.ok(got.subarray(0, nl)), 'unexpected reply ' + got.subarray(0, Math.min(nl, 200)).toString('utf8'));
      else if (got.length > 1 << 20) finish(false, 'reply line too long');
      return;
    }
    // At most `need` bytes are kept: a peer that streams more cannot grow this.
    got = Buffer.concat([got, chunk]).subarray(0, exp.need);
    if (got.length >= exp.need) finish(exp.ok(got), 'unexpected first reply 0x' + got.toString('hex'));
  });
  sock.on('error', (err) => finish(false, err.code || err.message));
  sock.on('close', () => finish(false, 'closed before answering'));
}

main();
