/**
 * `/etc/nvme/config.json` (libnvme's layout, `src/nvme/json.c`): an array of hosts
 * `{ hostnqn, hostid?, dhchap_key?, hostsymname?, persistent_discovery_ctrl?, subsystems: [
 * { nqn, application?, ports: [ { transport, traddr, trsvcid, host_traddr, …options } ] } ] }`.
 * Every port becomes one entry (a discovery controller when its subsystem is the discovery NQN
 * or it says `"discovery": true`). Pure: text in, entries or a {@link ConfigError} with the JSON
 * path out. Unknown keys are refused rather than ignored: a key this version does not know may
 * be a security setting the user relies on.
 *
 * {@link formatConfigJson} writes the same layout (for `--dump-config`), secrets left out.
 */
import { ErrorCode } from '../errors';
import { ConfigError, MAX_CONFIG_ENTRIES, checkParam, checkSize, finishEntry, isParamName, isSecretParam, setParam, DISCOVERY_SUBNQN } from './params';
import type { ConfigEntry, ConfigParams, ParamName } from './params';

const HOST_KEYS = new Set(['hostnqn', 'hostid', 'dhchap_key', 'hostsymname', 'persistent_discovery_ctrl', 'subsystems']);
const SUBSYS_KEYS = new Set(['nqn', 'application', 'ports']);

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** `line L column C` of a character offset, for JSON syntax errors. */
function lineCol(text: string, pos: number): string {
  let line = 1;
  let col = 1;
  for (let i = 0; i < pos && i < text.length; i++) {
    if (text.charCodeAt(i) === 10) {
      line++;
      col = 1;
    } else {
      col++;
    }
  }
  return `line ${line} column ${col}`;
}

/**
 * Offset of the first JSON syntax error (Node 20's JSON.parse does not always say where): one
 * iterative pass with an explicit stack of open containers, so deep nesting cannot overflow.
 */
export function jsonErrorOffset(t: string): number {
  let i = 0;
  const ws = (): void => {
    while (i < t.length && ' \t\r\n'.includes(t[i] as string)) i++;
  };
  const stack: Array<'[' | '{'> = [];
  // expect: 'value' | 'key' | 'after' (after a value: , or close)
  let expect: 'value' | 'key' | 'after' | 'value-or-close' | 'key-or-close' = 'value';
  for (;;) {
    ws();
    if (i >= t.length) return stack.length === 0 && expect === 'after' ? i : t.length;
    const c = t[i] as string;
    if (expect === 'after') {
      if (stack.length === 0) return i; // trailing garbage
      const top = stack[stack.length - 1];
      if (c === ',') { i++; expect = top === '{' ? 'key' : 'value'; continue; }
      if ((c === ']' && top === '[') || (c === '}' && top === '{')) { i++; stack.pop(); expect = 'after'; continue; }
      return i;
    }
    if (expect === 'key' || expect === 'key-or-close') {
      if (c === '}' && expect === 'key-or-close') { i++; stack.pop(); expect = 'after'; continue; }
      if (c !== '"') return i;
      const end = stringEnd(t, i);
      if (end < 0) return i;
      i = end;
      ws();
      if (t[i] !== ':') return i;
      i++;
      expect = 'value';
      continue;
    }
    if (c === ']' && expect === 'value-or-close') { i++; stack.pop(); expect = 'after'; continue; }
    if (c === '[') { i++; stack.push('['); expect = 'value-or-close'; continue; }
    if (c === '{') { i++; stack.push('{'); expect = 'key-or-close'; continue; }
    if (c === '"') {
      const end = stringEnd(t, i);
      if (end < 0) return i;
      i = end;
      expect = 'after';
      continue;
    }
    const lit = /^(?:true|false|null|-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?)/.exec(t.slice(i, i + 64));
    if (lit === null) return i;
    i += lit[0].length;
    expect = 'after';
  }
}

/** Index just past the string starting at `i` (a quote), or -1 when it is not a valid string. */
function stringEnd(t: string, i: number): number {
  for (let k = i + 1; k < t.length; k++) {
    const c = t.charCodeAt(k);
    if (c === 0x22) return k + 1;
    if (c < 0x20) return -1;
    if (c === 0x5c) k++;
  }
  return -1;
}

function mustArray(v: unknown, where: string, what: string): unknown[] {
  if (!Array.isArray(v)) throw new ConfigError(ErrorCode.CFG_BAD_VALUE, where, `${what} must be an array`);
  return v;
}

function mustRecord(v: unknown, where: string, what: string): Record<string, unknown> {
  if (!isRecord(v)) throw new ConfigError(ErrorCode.CFG_BAD_VALUE, where, `${what} must be an object`);
  return v;
}

function checkKeys(o: Record<string, unknown>, allowed: ReadonlySet<string>, where: string): void {
  for (const k of Object.keys(o)) if (!allowed.has(k)) throw new ConfigError(ErrorCode.CFG_UNKNOWN_KEY, `${where}.${k.slice(0, 64)}`, `unknown key '${k.slice(0, 64)}'`);
}

/**
 * Parse config.json text.
 * @param file name used in error locations (default `config.json`)
 * @throws ConfigError CFG_ERR_TOO_LARGE, CFG_ERR_SYNTAX (not JSON: line and column),
 *   CFG_ERR_BAD_VALUE (wrong type or range, at its JSON path), CFG_ERR_UNKNOWN_KEY,
 *   CFG_ERR_MISSING_KEY (hostnqn, nqn, transport, traddr)
 */
export function parseConfigJson(text: string, file = 'config.json'): ConfigEntry[] {
  checkSize(text, file);
  let root: unknown;
  try {
    root = JSON.parse(text) as unknown;
  } catch (err) {
    const m = /position (\d+)/.exec((err as Error).message);
    const at = m !== null ? Number(m[1]) : jsonErrorOffset(text);
    throw new ConfigError(ErrorCode.CFG_SYNTAX, file, `not JSON (${lineCol(text, at)}): ${(err as Error).message.slice(0, 120)}`);
  }
  const out: ConfigEntry[] = [];
  const hosts = mustArray(root, `${file}:$`, 'the top level (hosts)');
  hosts.forEach((h, hi) => {
    const hw = `${file}:$[${hi}]`;
    const host = mustRecord(h, hw, 'a host');
    checkKeys(host, HOST_KEYS, hw);
    const hostParams: ConfigParams = {};
    if (host.hostnqn === undefined) throw new ConfigError(ErrorCode.CFG_MISSING_KEY, `${hw}.hostnqn`, 'hostnqn is required');
    setParam(hostParams, 'hostnqn', host.hostnqn, `${hw}.hostnqn`);
    if (host.hostid !== undefined) setParam(hostParams, 'hostid', host.hostid, `${hw}.hostid`);
    if (host.dhchap_key !== undefined) setParam(hostParams, 'dhchap_key', host.dhchap_key, `${hw}.dhchap_key`);
    if (host.hostsymname !== undefined) checkParam('nqn', host.hostsymname, `${hw}.hostsymname`);
    if (host.persistent_discovery_ctrl !== undefined) checkParam('persistent', host.persistent_discovery_ctrl, `${hw}.persistent_discovery_ctrl`);
    const pdc = host.persistent_discovery_ctrl === true;
    const subs = host.subsystems === undefined ? [] : mustArray(host.subsystems, `${hw}.subsystems`, 'subsystems');
    subs.forEach((s, si) => {
      const sw = `${hw}.subsystems[${si}]`;
      const sub = mustRecord(s, sw, 'a subsystem');
      checkKeys(sub, SUBSYS_KEYS, sw);
      if (sub.nqn === undefined) throw new ConfigError(ErrorCode.CFG_MISSING_KEY, `${sw}.nqn`, 'nqn is required');
      const nqn = checkParam('nqn', sub.nqn, `${sw}.nqn`) as string;
      if (sub.application !== undefined) checkParam('nqn', sub.application, `${sw}.application`);
      const ports = sub.ports === undefined ? [] : mustArray(sub.ports, `${sw}.ports`, 'ports');
      ports.forEach((p, pi) => {
        const pw = `${sw}.ports[${pi}]`;
        const port = mustRecord(p, pw, 'a port');
        const params: ConfigParams = { ...hostParams };
        for (const [k, v] of Object.entries(port)) {
          if (!isParamName(k) || k === 'nqn' || k === 'hostnqn' || k === 'hostid') throw new ConfigError(ErrorCode.CFG_UNKNOWN_KEY, `${pw}.${k.slice(0, 64)}`, `unknown port key '${k.slice(0, 64)}'`);
          // A port's own key overrides the host's (libnvme: per-controller dhchap_key).
          if (k === 'dhchap_key') delete params.dhchap_key;
          setParam(params, k, v, `${pw}.${k}`);
        }
        params.nqn = nqn;
        if (pdc && (nqn === DISCOVERY_SUBNQN || params.discovery === true) && params.persistent === undefined) params.persistent = true;
        out.push(finishEntry(pw, params, false));
        if (out.length > MAX_CONFIG_ENTRIES) throw new ConfigError(ErrorCode.CFG_TOO_LARGE, pw, `more than ${MAX_CONFIG_ENTRIES} ports`);
      });
    });
  });
  return out;
}

/** Port keys in the order libnvme writes them. */
const PORT_ORDER: readonly ParamName[] = [
  'transport', 'traddr', 'host_traddr', 'host_iface', 'trsvcid', 'tls', 'keyring', 'tls_key_identity',
  'nr_io_queues', 'queue_size', 'keep_alive_tmo', 'reconnect_delay', 'ctrl_loss_tmo', 'fast_io_fail_tmo', 'tos',
  'duplicate_connect', 'disable_sqflow', 'hdr_digest', 'data_digest', 'concat', 'persistent', 'discovery',
];

/**
 * Render entries as config.json (grouped by host NQN, then subsystem NQN), libnvme's layout.
 * Secrets (`dhchap_key`, `dhchap_ctrl_key`, `tls_key`) are never written. Pure.
 */
export function formatConfigJson(entries: ReadonlyArray<{ params: ConfigParams }>): string {
  const hosts = new Map<string, { hostid?: string; subs: Map<string, Array<Record<string, unknown>>> }>();
  for (const e of entries) {
    const p = e.params;
    const hostnqn = p.hostnqn ?? '';
    let h = hosts.get(hostnqn);
    if (h === undefined) {
      h = { ...(p.hostid !== undefined ? { hostid: p.hostid } : {}), subs: new Map() };
      hosts.set(hostnqn, h);
    }
    const nqn = p.nqn ?? DISCOVERY_SUBNQN;
    const port: Record<string, unknown> = {};
    for (const k of PORT_ORDER) {
      const v = p[k];
      if (v === undefined || isSecretParam(k)) continue;
      // trsvcid is a string in libnvme's files.
      port[k] = k === 'trsvcid' ? String(v) : v;
    }
    const list = h.subs.get(nqn) ?? [];
    list.push(port);
    h.subs.set(nqn, list);
  }
  const json = [...hosts.entries()].map(([hostnqn, h]) => ({
    hostnqn,
    ...(h.hostid !== undefined ? { hostid: h.hostid } : {}),
    subsystems: [...h.subs.entries()].map(([nqn, ports]) => ({ nqn, ports })),
  }));
  return `${JSON.stringify(json, null, 2)}\n`;
}
