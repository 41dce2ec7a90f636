/** The embedded NVMe/TCP target: public API. */
export {
  NvmeTarget, DISCOVERY_NQN, DEFAULT_TARGET_NQN, DEFAULT_NAMESPACE_SIZE, DEFAULT_LISTEN,
  type NvmeTargetOptions, type SubsystemConfig, type NamespaceConfig, type NamespaceBacking,
  type SubsystemInfo, type NamespaceInfo,
} from './target';
export type { TargetStats, TargetLogger, TargetLogLevel } from './context';
export { C2hSuccessMode } from './context';
export type { NamespaceBackend } from './backend';
export { MemoryBackend, MEMORY_CHUNK_SIZE } from './backend-memory';
export { FileBackend } from './backend-file';
