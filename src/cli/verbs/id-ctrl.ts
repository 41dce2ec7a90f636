/**
 * `nvmf-nbd id-ctrl`: connect the admin queue of a controller, print Identify Controller, close.
 * `id-ctrl nvmeX` asks the daemon's already connected controller instead.
 */
import type { OptionSpec } from '../args';
import type { Verb } from '../verb';
import { Controller } from '../../controller/controller';
import { ADDRESS_OPTIONS, addressFromArgs, requireString } from './connect';
import { formatFields, formatJson, outputFormat } from '../output';
import { usageError } from '../args';
import { parseIdentifyController } from '../../wire';
import type { IdentifyController } from '../../wire';
import { stateDir } from '../../config/state-dir';
import { ControlVerb } from '../../wire/control';
import { CONTROL_OPTION, requestDaemon } from '../daemon-client';

/** `nvmeX` when the first positional names a daemon controller (else undefined). */
export function daemonControllerArg(positionals: readonly string[]): string | undefined {
  if (positionals.length === 0) return undefined;
  const name = positionals[0] as string;
  if (positionals.length > 1 || !/^nvme\d+$/.test(name)) usageError(`expected one controller name nvmeX, got '${positionals.join(' ')}'`);
  return name;
}

function printIdCtrl(id: IdentifyController, cntlid: number, format: 'normal' | 'json'): void {
  if (format === 'json') {
    process.stdout.write(formatJson(id));
  } else {
    const fields = Object.entries(id).filter(([, v]) => typeof v !== 'object') as Array<[string, string | number | boolean]>;
    process.stdout.write(`NVMe Identify Controller (cntlid ${cntlid}):\n` + formatFields(fields));
  }
}

/** Connection flags of the admin-only verbs: `--nqn` plus the address flags. */
export function adminVerbOptions(nqnShort: boolean): OptionSpec[] {
  return [
    ...ADDRESS_OPTIONS.slice(0, 3),
    nqnShort
      ? { long: 'nqn', short: 'n', type: 'string', metavar: 'SUBNQN', help: 'subsystem NQN (required)' }
      : { long: 'nqn', type: 'string', metavar: 'SUBNQN', help: 'subsystem NQN (required)' },
    ...ADDRESS_OPTIONS.slice(3),
  ];
}

/** Connect the admin queue only (no I/O queues, no keep-alive) for a one-shot admin verb. */
export async function connectAdminOnly(opts: Record<string, unknown>): Promise<{ ctrl: Controller; format: 'normal' | 'json' }> {
  const a = addressFromArgs(opts);
  const subnqn = requireString(opts, 'nqn', '--nqn');
  const ctrl = await Controller.connect({
    traddr: a.traddr, trsvcid: a.trsvcid, subnqn, hostnqn: a.hostnqn, hostid: a.hostid, hdgst: a.hdgst, ddgst: a.ddgst,
    nrIoQueues: 0, kato: 0,
    ...(a.dhchap !== undefined ? { dhchap: a.dhchap } : {}),
  });
  return { ctrl, format: a.format };
}

export const verb: Verb = {
  name: 'id-ctrl',
  summary: 'print Identify Controller of a remote controller',
  usage: 'nvmf-nbd id-ctrl -t tcp -a ADDR [-s PORT] -n SUBNQN [-q HOSTNQN] [-I HOSTID] [-o normal|json]  |  nvmf-nbd id-ctrl nvmeX [-o normal|json]',
  options: [...adminVerbOptions(true), CONTROL_OPTION],
  positionals: true,
  async run(opts, positionals) {
    const name = daemonControllerArg(positionals);
    if (name !== undefined) {
      const format = outputFormat(opts['output-format'], usageError);
      const r = (await requestDaemon(opts, stateDir(), ControlVerb.ID_CTRL, { name })) as { cntlid: number; raw: string };
      printIdCtrl(parseIdentifyController(Buffer.from(r.raw, 'base64')), r.cntlid, format);
      return 0;
    }
    const { ctrl, format } = await connectAdminOnly(opts);
    try {
      printIdCtrl(ctrl.identify, ctrl.cntlid, format);
      return 0;
    } finally {
      await ctrl.close();
    }
  },
};
