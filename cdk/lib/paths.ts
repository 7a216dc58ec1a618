import { fileURLToPath } from 'node:url';
import * as path from 'node:path';

/** Repository root, derived from this file's location (not from the environment or cwd). */
export const REPO_ROOT = fileURLToPath(new URL('../../', import.meta.url));

export const LAMBDA_ENTRY = path.join(REPO_ROOT, 'functions', 'lambda.ts');
export const SWEEP_LAMBDA_ENTRY = path.join(REPO_ROOT, 'functions', 'sweep-lambda.ts');
export const LOCKFILE = path.join(REPO_ROOT, 'package-lock.json');
export const WORKER_DOCKERFILE = 'gpu-worker/Dockerfile';
