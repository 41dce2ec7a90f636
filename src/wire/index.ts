/** Pure NVMe/TCP wire codecs: re-exports of every module in src/wire/. */
export * from './crc32c';
export * from './pdu';
export * from './sqe';
export * from './cqe';
export * from './status';
export * from './identify';
export * from './ana';
export * from './discovery-log';
export * from './properties';
export * from './nbd';
export * from './auth';
export * from './dhchap';
export * from './ffdhe';
