// Entry for pool workers when the engine runs from TypeScript sources (tsx, vitest).
// On Node 20, `--import tsx` registers its loader only on the main thread, so a worker started on a
// .ts file fails with "Unknown file extension .ts"; registering tsx's ESM hooks here works on 20 and 22.
import { workerData } from 'node:worker_threads';
import { register } from 'tsx/esm/api';

register();
await import(workerData.entry);
