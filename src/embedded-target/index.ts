/** The embedded NVMe/TCP target: public API. */
export {
  NvmeTarget, DISCOVERY_NQN, DEFAULT_TARGET_NQN, DEFAULT_NAMESPACE_SIZE, DEFAULT_LISTEN,
  type NvmeTargetOptions, type SubsystemConfig, type NamespaceConfig, type NamespaceBacking,
  type SubsystemInfo, type TargetNamespaceInfo,
} from './target';
export type { TargetStats, TargetLogger, TargetLogLevel } from './context';
export { C2hSuccessMode } from './context';
export type { StorageBackend } from './storage';
export { MemoryBackend, MEMORY_CHUNK_SIZE } from './storage-memory';
export { FileBackend } from './storage-file';
export { MAX_ANA_GROUPS, DEFAULT_ANA_GROUP, type TargetPortConfig, type TargetPortInfo, type AnaStateInput } from './ports';
