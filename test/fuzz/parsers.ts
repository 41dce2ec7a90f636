/**
 * The parser targets of `npm run fuzz`: every decoder that sees bytes from a peer or a file.
 * Each seed is a valid input built with the project's own encoders; the harness mutates them.
 */
import {
  PduParser, encodeC2HData, encodeCapsuleCmd, encodeCapsuleResp, encodeH2CData, encodeIcReq, encodeIcResp, encodeR2T, encodeTermReq,
} from '../../src/wire/pdu';
import { encodeCqe, parseCqe } from '../../src/wire/cqe';
import { encodeConnectData, parseConnectData, parseSqe, sqeConnect, sqeRead, sqeWrite } from '../../src/wire/sqe';
import {
  encodeIdentifyController, encodeIdentifyNamespace, encodeNamespaceList, parseIdentifyController, parseIdentifyNamespace, parseNamespaceList,
} from '../../src/wire/identify';
import { encodeDiscoveryLog, parseDiscoveryLogEntries, parseDiscoveryLogHeader } from '../../src/wire/discovery-log';
import { parseNsIdDescriptors } from '../../src/wire/ns-descriptors';
import { encodeAnaLog, parseAnaLog } from '../../src/wire/ana';
import { parseAnaStateFile } from '../../src/config/ana-states';
import {
  Cmd, Opt, NbdOptionParser, NbdRequestParser, encodeExportNameReply, encodeGreeting, encodeInfoExport, encodeInfoRequest, encodeMetaContextRequest,
  encodeOffsetDataHeader, encodeOption, encodeRepAck, encodeRepServer, encodeRequest, encodeSimpleReply, parseInfoRequest, parseMetaContextRequest,
} from '../../src/wire/nbd';
import { NbdClientStream, NbdServerStream } from '../../src/wire/nbd-relay';
import { encodeRequest as encodeControlRequest, encodeResponse as encodeControlResponse, parseRequest, parseResponse } from '../../src/wire/control';
import { validateState } from '../../src/engine/state-file';
import { parseConfigJson } from '../../src/config/config-json';
import { parseDiscoveryConf } from '../../src/config/discovery-conf';
import { chunks, type ParserTarget, type Rng } from './lib';

const cat = (parts: Buffer[]): Buffer => Buffer.concat(parts);
const NO = { hdgst: false, ddgst: false, pda: 0 };
const DG = { hdgst: true, ddgst: true, pda: 0 };

/** Feed a PDU stream in random chunks; digests on for seeds built with them. */
function pduTarget(name: string, role: 'host' | 'controller', seeds: Buffer[]): ParserTarget {
  return {
    name,
    seeds,
    run(input: Buffer, rng: Rng): void {
      const p = new PduParser({ role, maxData: 64 * 1024 });
      if (rng.below(2) === 0) p.setDigests(true, true);
      for (const c of chunks(rng, input)) p.push(c, () => undefined);
    },
  };
}

const data4k = Buffer.alloc(4096, 0xa5);

/** Controller → host PDUs (the host's parser). */
export const hostSeeds = (): Buffer[] => [
  encodeIcResp({ cpda: 0, hdgst: false, ddgst: false, maxh2cdata: 131072 }),
  cat(encodeCapsuleResp(encodeCqe({ cid: 3, sqhd: 2 }), NO)),
  cat(encodeCapsuleResp(encodeCqe({ cid: 3, sqhd: 2 }), DG)),
  cat(encodeC2HData({ cccid: 1, datao: 0, last: true, success: false }, data4k.subarray(0, 512), NO)),
  cat(encodeC2HData({ cccid: 1, datao: 0, last: true, success: true }, data4k.subarray(0, 512), DG)),
  cat(encodeR2T({ cccid: 2, ttag: 5, r2to: 0, r2tl: 8192 }, NO)),
  encodeTermReq(0x03, 1, 0),
  cat([...encodeCapsuleResp(encodeCqe({ cid: 1, sqhd: 1 }), NO), ...encodeC2HData({ cccid: 2, datao: 0, last: true, success: false }, data4k.subarray(0, 64), NO)]),
];

/** Host → controller PDUs (the embedded target's parser). */
export const targetSeeds = (): Buffer[] => [
  encodeIcReq({ hpda: 0, hdgst: false, ddgst: false, maxr2t: 0 }),
  cat(encodeCapsuleCmd(sqeConnect({ qid: 0, sqsize: 31, kato: 5000, disableSqFlowControl: false }),
    encodeConnectData({ hostid: Buffer.alloc(16, 1), cntlid: 0xffff, subnqn: 'nqn.x:sub', hostnqn: 'nqn.x:host' }), NO)),
  cat(encodeCapsuleCmd(sqeRead(1, 0n, 8), undefined, NO)),
  cat(encodeCapsuleCmd(sqeWrite(1, 0n, 1, false), data4k.subarray(0, 512), DG)),
  cat(encodeH2CData({ cccid: 4, ttag: 1, datao: 0, last: true }, data4k, NO)),
  encodeTermReq(0x02, 2, 0),
];

export function nbdClientBytes(): Buffer[] {
  const flags = Buffer.alloc(4);
  flags.writeUInt32BE(3);
  const read = encodeRequest({ type: Cmd.READ, cookie: 1n, offset: 0, length: 4096 });
  const write = encodeRequest({ type: Cmd.WRITE, cookie: 2n, offset: 512, length: 512, data: Buffer.alloc(512, 7) });
  const disc = encodeRequest({ type: Cmd.DISC, cookie: 3n, offset: 0, length: 0 });
  return [
    cat([flags, encodeOption(Opt.STRUCTURED_REPLY), encodeOption(Opt.GO, encodeInfoRequest('nvme0n1', [0, 3])), read, write, disc]),
    cat([flags, encodeOption(Opt.LIST), encodeOption(Opt.EXPORT_NAME, Buffer.from('nvme0n1')), read]),
    cat([flags, encodeOption(Opt.SET_META_CONTEXT, encodeMetaContextRequest('e', ['base:allocation'])), encodeOption(Opt.GO, encodeInfoRequest('e')), write]),
  ];
}

function nbdServerBytes(): Buffer[] {
  const greet = encodeGreeting();
  return [
    cat([greet, encodeRepServer(Opt.LIST, 'nvme0n1', 'disk'), encodeRepAck(Opt.LIST), encodeInfoExport(Opt.GO, 1 << 20, 1), encodeRepAck(Opt.GO),
      encodeSimpleReply(0, 0, 1), Buffer.alloc(4096), encodeSimpleReply(0, 0, 2)]),
    cat([greet, encodeExportNameReply(1 << 20, 1, true), encodeSimpleReply(0, 0, 1), Buffer.alloc(4096)]),
    cat([greet, encodeRepAck(Opt.STRUCTURED_REPLY), encodeInfoExport(Opt.GO, 1 << 20, 1), encodeRepAck(Opt.GO), encodeOffsetDataHeader(1, 0, 1, 0, 512), Buffer.alloc(512)]),
  ];
}

const text = (s: string): Buffer => Buffer.from(s, 'utf8');

/** Every parser target. */
export function parserTargets(): ParserTarget[] {
  const idCtrl = encodeIdentifyController({ nn: 4, mdts: 5, sn: 'S1', mn: 'M', fr: '1.0', subnqn: 'nqn.x:sub' } as Parameters<typeof encodeIdentifyController>[0]);
  const idNs = encodeIdentifyNamespace({ nsze: 2048n, ncap: 2048n, nuse: 2048n, lbaf: [{ ms: 0, lbads: 9, rp: 0 }], flbas: 0 } as unknown as Parameters<typeof encodeIdentifyNamespace>[0]);
  const dlog = encodeDiscoveryLog(3n, [{ subnqn: 'nqn.x:a', traddr: '10.0.0.1', trsvcid: '4420', adrfam: 1, portid: 1, asqsz: 32 }]);
  return [
    pduTarget('nvme-tcp PDU, host side (controller→host)', 'host', hostSeeds()),
    pduTarget('nvme-tcp PDU, target side (host→controller)', 'controller', targetSeeds()),
    {
      name: 'SQE / CQE / Connect data (target)',
      seeds: [sqeConnect({ qid: 1, sqsize: 31, kato: 0, disableSqFlowControl: false }), sqeRead(1, 7n, 8), encodeCqe({ cid: 1, sqhd: 1 }),
        encodeConnectData({ hostid: Buffer.alloc(16), cntlid: 1, subnqn: 'nqn.a', hostnqn: 'nqn.b' })],
      run(input: Buffer): void {
        if (input.length >= 64) parseSqe(input.subarray(0, 64));
        if (input.length >= 16) parseCqe(input.subarray(0, 16));
        if (input.length >= 1024) parseConnectData(input);
      },
    },
    {
      name: 'NBD handshake + requests (server side)',
      seeds: nbdClientBytes(),
      run(input: Buffer, rng: Rng): void {
        const o = new NbdOptionParser();
        for (const c of chunks(rng, input)) o.push(c);
        let ev;
        let n = 0;
        while ((ev = o.next()) !== undefined && n++ < 2048) {
          if (ev.kind === 'option') {
            if (ev.option === Opt.GO || ev.option === Opt.INFO) parseInfoRequest(ev.data);
            if (ev.option === Opt.SET_META_CONTEXT || ev.option === Opt.LIST_META_CONTEXT) parseMetaContextRequest(ev.data);
            if (ev.option === Opt.GO || ev.option === Opt.EXPORT_NAME) break;
          }
        }
        const rq = new NbdRequestParser(1 << 20);
        for (const c of o.drain()) rq.push(c);
        for (let k = 0; k < 4096 && rq.next() !== undefined; k++);
      },
    },
    {
      name: 'holder: NBD client stream (client→server)',
      seeds: nbdClientBytes(),
      run(input: Buffer, rng: Rng): void {
        const s = new NbdClientStream(1 << 20);
        for (const c of chunks(rng, input)) s.push(c);
      },
    },
    {
      name: 'holder + test client: NBD server stream (server→client)',
      seeds: nbdServerBytes(),
      run(input: Buffer, rng: Rng): void {
        const client = new NbdClientStream(1 << 20);
        const flags = Buffer.alloc(4);
        flags.writeUInt32BE(3);
        client.push(cat([flags, encodeOption(Opt.GO, encodeInfoRequest('nvme0n1'))]));
        const s = new NbdServerStream(client, (cookie) => (cookie < 4n ? { type: Cmd.READ, length: 4096 } : undefined));
        for (const c of chunks(rng, input)) s.push(c);
      },
    },
    {
      name: 'control protocol codec (request + response lines)',
      seeds: [
        encodeControlRequest({ id: 1, verb: 'connect' as never, args: { traddr: '127.0.0.1', trsvcid: 4420, nqn: 'nqn.x' } }),
        encodeControlRequest({ id: 2, verb: 'list' as never, args: {} }),
        encodeControlResponse({ id: 1, ok: true, result: { name: 'nvme0' } }),
        encodeControlResponse({ id: 1, ok: false, error: { code: 'NVMF_ERR_TIMEOUT', message: 'x' } } as never),
      ],
      run(input: Buffer): void {
        const line = input.toString('utf8').replace(/\n$/, '');
        try { parseRequest(line); } finally { parseResponse(line); }
      },
    },
    {
      name: 'Identify Controller / Namespace / NS list / NS descriptors',
      seeds: [idCtrl, idNs, encodeNamespaceList([1, 2, 5, 1000]), Buffer.from('0308000000000000' + '11'.repeat(8) + '0310000000000000' + '22'.repeat(16), 'hex')],
      run(input: Buffer): void {
        const page = Buffer.alloc(4096);
        input.copy(page);
        parseIdentifyController(page);
        parseIdentifyNamespace(page);
        parseNamespaceList(page);
        parseNsIdDescriptors(page);
      },
    },
    {
      name: 'ANA log page (LID 0Ch) and ANA state file',
      seeds: [
        encodeAnaLog({ chgcnt: 7n, groups: [{ grpid: 1, chgcnt: 3n, state: 1, nsids: [1, 2] }, { grpid: 2, chgcnt: 5n, state: 3, nsids: [3] }] }),
        encodeAnaLog({ chgcnt: 1n, groups: [{ grpid: 9, chgcnt: 1n, state: 0x0f, nsids: [] }] }, { groupsOnly: true }),
        text('1 1 optimized\n2 1 inaccessible # x\n'),
      ],
      run(input: Buffer): void {
        try { parseAnaLog(input); } finally { parseAnaStateFile(input.toString('utf8')); }
      },
    },
    {
      name: 'discovery log (header + entries)',
      seeds: [dlog],
      run(input: Buffer): void {
        if (input.length < 1024) return;
        const h = parseDiscoveryLogHeader(input);
        const n = Math.min(Number(h.numrec), Math.floor((input.length - 1024) / 1024));
        if (n > 0) parseDiscoveryLogEntries(input.subarray(1024), n);
      },
    },
    {
      name: 'state file (JSON → validateState)',
      seeds: [text(JSON.stringify({ version: 1, controllers: [{ name: 'nvme0', args: { transport: 'tcp', traddr: '127.0.0.1', trsvcid: 4420, nqn: 'nqn.x' } }] }))],
      run(input: Buffer): void {
        let v: unknown;
        try { v = JSON.parse(input.toString('utf8')); } catch { return; } // the JSON builtin, not ours
        validateState(v);
      },
    },
    {
      name: 'config files (config.json, discovery.conf)',
      seeds: [
        text(JSON.stringify([{ hostnqn: 'nqn.h', subsystems: [{ nqn: 'nqn.s', ports: [{ transport: 'tcp', traddr: '10.0.0.1', trsvcid: '4420' }] }] }])),
        text('# comment\n-t tcp -a 10.0.0.1 -s 8009 -q nqn.h\n--transport=tcp --traddr=10.0.0.2\n'),
      ],
      run(input: Buffer): void {
        const s = input.toString('utf8');
        if (/^\s*[[{]/.test(s)) parseConfigJson(s);
        else parseDiscoveryConf(s);
      },
    },
  ];
}
