/**
 * `discovery.json`: the persistent discovery controllers a restarted daemon brings back (next to
 * the state file; written without secrets, 0600, atomically).
 */
import { promises as fsp } from 'node:fs';
import { ErrorCode, NvmfNbdError } from '../errors';
import { isRecordArg } from './daemon-args';

/** One persistent discovery controller as the file keeps it. */
export interface DiscoveryFileEntry { name: string; discovery: Record<string, unknown>; connect: Record<string, unknown>; disconnectRemoved: boolean; watchOnly: boolean }

/**
 * The persistent discovery controllers a restarted daemon brings back (no secrets in it).
 * @throws CFG_ERR_STATE_FILE_INVALID
 */
export async function readDiscoveryFile(file: string): Promise<DiscoveryFileEntry[]> {
  let text: string;
  try {
    text = await fsp.readFile(file, 'utf8');
  } catch {
    return [];
  }
  let v: unknown;
  try {
    v = JSON.parse(text) as unknown;
  } catch (err) {
    throw new NvmfNbdError(ErrorCode.STATE_FILE_INVALID, `${file}: ${(err as Error).message}`);
  }
  const list = isRecordArg(v) && Array.isArray(v.discovery) ? (v.discovery as unknown[]) : undefined;
  if (list === undefined) throw new NvmfNbdError(ErrorCode.STATE_FILE_INVALID, `${file}: no discovery list`);
  return list.map((x, i) => {
    if (!isRecordArg(x) || typeof x.name !== 'string' || !/^disc\d+$/.test(x.name) || !isRecordArg(x.discovery) || !isRecordArg(x.connect)) {
      throw new NvmfNbdError(ErrorCode.STATE_FILE_INVALID, `${file}: entry ${i} is malformed`);
    }
    return { name: x.name, discovery: x.discovery, connect: x.connect, disconnectRemoved: x.disconnectRemoved === true, watchOnly: x.watchOnly === true };
  });
}

/** Replace the file (temp + rename, 0600). */
export async function writeDiscoveryFile(file: string, list: DiscoveryFileEntry[]): Promise<void> {
  const tmp = `${file}.${process.pid}.tmp`;
  await fsp.writeFile(tmp, `${JSON.stringify({ version: 1, discovery: list }, null, 2)}\n`, { mode: 0o600 });
  await fsp.rename(tmp, file);
}
