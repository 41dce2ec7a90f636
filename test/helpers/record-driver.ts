/**
 * The record path under load for tests: {@link RecordDriver} keeps `depth` request records in
 * flight on a block device until `total` completed (no promise per request), and
 * {@link startTargetProc} runs bench/target-proc in its own process (its promises not counted).
 */
import * as path from 'node:path';
import { spawn, type ChildProcess } from 'node:child_process';
import { BlockOpCode, type BlockDevice, type BlockHandler, type BlockRequest } from '../../src/block/types';
import type { NvmfNbdError } from '../../src/errors';

const TARGET_PROC = path.join(__dirname, '..', '..', 'bench', 'target-proc.js');

/** Start bench/target-proc with a namespace of `size` bytes; resolves with its port once READY. */
export async function startTargetProc(size: number): Promise<{ child: ChildProcess; port: number }> {
  const child = spawn(process.execPath, [TARGET_PROC, '--size', String(size)], { stdio: ['ignore', 'pipe', 'ignore'] });
  const port = await new Promise<number>((resolve, reject) => {
    let out = '';
    child.stdout?.on('data', (d: Buffer) => {
      out += d.toString();
      const m = /READY (\{.*\})/.exec(out);
      if (m !== null) resolve((JSON.parse(m[1] as string) as { port: number }).port);
    });
    child.once('exit', (code) => reject(new Error(`target-proc exited ${String(code)}`)));
  });
  return { child, port };
}

/** Keeps `depth` requests in flight until `total` completed, resubmitting each record. */
export class RecordDriver implements BlockHandler {
  done = 0;
  errors = 0;
  private submitted = 0;
  private finish: (() => void) | undefined;
  constructor(private readonly ns: BlockDevice, private readonly op: typeof BlockOpCode.READ | typeof BlockOpCode.WRITE, private readonly total: number, private readonly payload: Buffer) {}

  run(depth: number): Promise<void> {
    return new Promise((resolve) => {
      this.finish = resolve;
      for (let i = 0; i < depth; i++) this.next(this.ns.createRequest());
    });
  }

  private next(r: BlockRequest): void {
    if (this.submitted === this.total) return;
    const n = this.submitted++;
    r.op = this.op;
    r.offset = (n * 7919 % 4096) * 4096;
    r.length = 4096;
    r.data = this.op === BlockOpCode.WRITE ? this.payload : undefined;
    r.fua = false;
    r.handler = this;
    this.ns.submit(r);
  }

  onBlockComplete(r: BlockRequest): void {
    this.settle(r);
  }

  onBlockError(r: BlockRequest, _err: NvmfNbdError): void {
    this.errors++;
    this.settle(r);
  }

  private settle(r: BlockRequest): void {
    if (++this.done === this.total) this.finish?.();
    else this.next(r);
  }
}
