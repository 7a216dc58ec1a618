#!/usr/bin/env -S node --import tsx
// clipag command line: one entry, verbs live in cli/.
import { main } from '../cli/main.ts';

// `npm run clipag -- …` runs in the package root whatever folder it was typed in; npm names that
// folder INIT_CWD. Relative paths on the command line (-o out.png, --init photo.png) mean the
// caller's folder, so work from there. (`npm start` keeps the root: its .data/ lives there.)
if (process.env.npm_lifecycle_event === 'clipag' && process.env.INIT_CWD) process.chdir(process.env.INIT_CWD);

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (e) => {
    console.error(`clipag: ${(e as Error).message}`);
    process.exit(1);
  },
);
