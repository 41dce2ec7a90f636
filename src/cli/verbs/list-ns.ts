/**
 * `nvmf-nbd list-ns`: list the active namespaces of a remote controller with size, LBA size and
 * whether the host can serve them (namespaces with metadata or protection information cannot).
 */
import type { Verb } from '../verb';
import { adminVerbOptions, connectAdminOnly } from './id-ctrl';
import { describeNamespace } from './connect';
import { formatBytes, formatJson, formatTable } from '../output';

export const verb: Verb = {
  name: 'list-ns',
  summary: 'list the active namespaces of a remote controller',
  usage: 'nvmf-nbd list-ns -t tcp -a ADDR [-s PORT] -n SUBNQN [-q HOSTNQN] [-I HOSTID] [-o normal|json]',
  options: adminVerbOptions(true),
  async run(opts) {
    const { ctrl, format } = await connectAdminOnly(opts);
    try {
      const list = [...ctrl.namespaces.values()];
      if (format === 'json') {
        process.stdout.write(formatJson({ subnqn: ctrl.options.subnqn, cntlid: ctrl.cntlid, namespaces: list.map(describeNamespace) }));
      } else {
        process.stdout.write(formatTable(['NSID', 'SIZE', 'LBA', 'BLOCKS', 'USABLE'], list.map((ns) => [
          String(ns.nsid), ns.usable ? formatBytes(Number(ns.nsze) * ns.lbaSize) : '-', String(ns.lbaSize), String(ns.nsze),
          ns.usable ? 'yes' : `no: ${ns.reasonIfNot ?? ''}`,
        ])));
      }
      return 0;
    } finally {
      await ctrl.close();
    }
  },
};
