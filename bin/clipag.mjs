#!/usr/bin/env node
// The installed `clipag` command (package.json "bin"). `node --import tsx` would look for tsx in the
// caller's folder, so an `npm link`ed clipag run from anywhere else failed to start; this registers
// the tsx that sits next to this package, then runs the TypeScript entry.
import { register } from 'tsx/esm/api';

register();
await import('./clipag.ts');
