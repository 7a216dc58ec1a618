export { LocalBlobStore, type LocalBlobStoreOptions } from './blobstore.ts';
export { LocalJobQueue, type LocalJobQueueOptions } from './queue.ts';
export { verifyLocalSignature, buildLocalSignedUrl, type LocalSignatureCheck, type LocalSignedGrant } from './signing.ts';
export { loadOrCreateSigningSecret } from './secret.ts';
export { MemoryRateCounter } from './rate-counter.ts';
