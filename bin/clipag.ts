#!/usr/bin/env -S node --import tsx
// clipag command line: one entry, verbs live in cli/.
import { main } from '../cli/main.ts';

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (e) => {
    console.error(`clipag: ${(e as Error).message}`);
    process.exit(1);
  },
);
