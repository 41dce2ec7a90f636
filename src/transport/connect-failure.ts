/**
 * Why a Fabrics Connect was refused, in words (Connect Invalid Parameters names the field).
 */
import type { Cqe } from '../wire/cqe';

/** Connect data fields by offset (NVMe-oF Figure 20), for Connect Invalid Parameters. */
const CONNECT_DATA_FIELDS: Readonly<Record<number, string>> = { 0: 'host ID', 16: 'controller ID', 256: 'subsystem NQN', 512: 'host NQN' };
/** Connect SQE fields by offset. */
const CONNECT_SQE_FIELDS: Readonly<Record<number, string>> = { 40: 'record format', 42: 'queue ID', 44: 'queue size', 46: 'connect attributes', 48: 'keep alive timeout' };

/**
 * Explain a refused Connect: for Connect Invalid Parameters (SCT 1 SC 0x82) DW0 holds IATTR
 * (bit 16: 1 = in the Connect data) and IPO (bits 15:0, byte offset), as Linux nvmet encodes it.
 */
export function connectFailureDetail(cqe: Cqe, o: { readonly subnqn: string; readonly hostnqn: string }): string {
  if (cqe.status.sct !== 1) return '';
  switch (cqe.status.sc) {
    case 0x82: {
      const inData = ((cqe.dw0 >>> 16) & 1) === 1;
      const ipo = cqe.dw0 & 0xffff;
      const field = (inData ? CONNECT_DATA_FIELDS : CONNECT_SQE_FIELDS)[ipo];
      if (field === undefined) return '';
      const value = field === 'subsystem NQN' ? ` '${o.subnqn}'` : field === 'host NQN' ? ` '${o.hostnqn}'` : '';
      return `: the target rejected the ${field}${value}`;
    }
    case 0x84: return `: host '${o.hostnqn}' is not allowed to connect to this subsystem`;
    case 0x81: return ': the controller is busy';
    default: return '';
  }
}
