/**
 * Where the engine keeps its state (daemon control socket, state file, NBD sockets, TLS key
 * store, kept host identity). One place, so the CLI and the daemon agree.
 */
import * as os from 'node:os';
import * as path from 'node:path';

/**
 * The engine's state directory: `$NVMF_NBD_STATE_DIR`, else /var/lib/nvmf-nbd for root, else
 * ~/.local/state/nvmf-nbd.
 */
export function stateDir(env: NodeJS.ProcessEnv = process.env): string {
  const fromEnv = env.NVMF_NBD_STATE_DIR;
  if (fromEnv !== undefined && fromEnv !== '') return fromEnv;
  if (typeof process.getuid === 'function' && process.getuid() === 0) return '/var/lib/nvmf-nbd';
  return path.join(os.homedir(), '.local', 'state', 'nvmf-nbd');
}
