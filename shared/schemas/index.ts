export * from './common.ts';
export * from './generation.ts';
export * from './job.ts';
export * from './queue.ts';
export * from './error.ts';
export * from './apikey.ts';
