/**
 * `nvmf-nbd id-ns`: print Identify Namespace of one namespace of a remote controller.
 * `-n` is the namespace ID here, as in nvme-cli; the subsystem is given with `--nqn`.
 * `id-ns nvmeX -n NSID` asks the daemon's already connected controller instead.
 */
import { usageError } from '../args';
import type { Verb } from '../verb';
import { adminVerbOptions, connectAdminOnly, daemonControllerArg } from './id-ctrl';
import { formatFields, formatJson, outputFormat } from '../output';
import { ErrorCode, NvmfNbdError } from '../../errors';
import { classifyNamespace } from '../../controller/controller';
import type { NamespaceInfo } from '../../controller/controller';
import { stateDir } from '../../config/state-dir';
import { ControlVerb } from '../../wire/control';
import { CONTROL_OPTION, requestDaemon } from '../daemon-client';

function printIdNs(nsid: number, ns: NamespaceInfo, format: 'normal' | 'json'): void {
  const { lbaf, nguid, eui64, ...scalars } = ns.identify;
  if (format === 'json') {
    process.stdout.write(formatJson({ nsid, usable: ns.usable, reason: ns.reasonIfNot, ...ns.identify }));
  } else {
    const fields: Array<[string, string | number | bigint | boolean]> = Object.entries(scalars).map(([k, v]) => [k, v as string | number | bigint | boolean]);
    fields.push(['nguid', nguid.toString('hex')], ['eui64', eui64.toString('hex')]);
    lbaf.forEach((f, i) => fields.push([`lbaf ${i}`, `ms:${f.ms} lbads:${f.lbads} rp:${f.rp}${i === ns.identify.formatIndex ? ' (in use)' : ''}`]));
    fields.push(['usable', ns.usable ? 'yes' : `no: ${ns.reasonIfNot ?? ''}`]);
    process.stdout.write(`NVMe Identify Namespace ${nsid}:\n` + formatFields(fields));
  }
}

export const verb: Verb = {
  name: 'id-ns',
  summary: 'print Identify Namespace of a namespace of a remote controller',
  usage: 'nvmf-nbd id-ns -t tcp -a ADDR [-s PORT] --nqn SUBNQN -n NSID [-o normal|json]  |  nvmf-nbd id-ns nvmeX -n NSID [-o normal|json]',
  options: [
    ...adminVerbOptions(false),
    { long: 'namespace-id', short: 'n', type: 'int', metavar: 'NSID', min: 1, max: 0xfffffffe, help: 'namespace ID (required)' },
    CONTROL_OPTION,
  ],
  positionals: true,
  async run(opts, positionals) {
    const nsid = opts['namespace-id'];
    if (typeof nsid !== 'number') usageError('-n/--namespace-id is required');
    const name = daemonControllerArg(positionals);
    if (name !== undefined) {
      const format = outputFormat(opts['output-format'], usageError);
      const r = (await requestDaemon(opts, stateDir(), ControlVerb.ID_NS, { name, nsid })) as { raw: string };
      printIdNs(nsid, classifyNamespace(nsid, Buffer.from(r.raw, 'base64')), format);
      return 0;
    }
    const { ctrl, format } = await connectAdminOnly(opts);
    try {
      const ns = ctrl.namespaces.get(nsid);
      if (ns === undefined) throw new NvmfNbdError(ErrorCode.NAMESPACE_NOT_FOUND, `namespace ${nsid} is not active on ${ctrl.options.subnqn}`);
      printIdNs(nsid, ns, format);
      return 0;
    } finally {
      await ctrl.close();
    }
  },
};
