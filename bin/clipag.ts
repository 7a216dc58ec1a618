#!/usr/bin/env -S node --import tsx
// clipag command line: one entry, verbs live in cli/.
import { resolve } from 'node:path';
import { main } from '../cli/main.ts';
import { endProcess } from '../gpu-worker/engine/runtime/pool.ts';

// `npm run clipag -- …` runs in the package root whatever folder it was typed in; npm names that
// folder INIT_CWD. Relative paths on the command line (-o out.png, --init photo.png) mean the
// caller's folder, so work from there. (`npm start` keeps the root: its .data/ lives there.)
if (process.env.npm_lifecycle_event === 'clipag' && process.env.INIT_CWD) {
  // The local store stays the package root's, where `npm start` has it. Unset or blank (what a compose
  // file or a systemd unit gives for a variable it leaves empty), as the config reads it. The models
  // folder needs nothing here: every verb defaults to the package's own (cli/common.ts PACKAGE_MODELS_DIR).
  if ((process.env.CLIPAG_DATA_DIR ?? '').trim() === '') process.env.CLIPAG_DATA_DIR = resolve('.data');
  process.chdir(process.env.INIT_CWD);
}

// endProcess, not process.exit: an engine run that a stop gave up on (a hung device) would make
// process.exit wait for it and then abort.
main(process.argv.slice(2)).then(
  (code) => endProcess(code, { warn: (m) => console.error(`clipag: ${m}`) }),
  (e) => {
    console.error(`clipag: ${(e as Error).message}`);
    return endProcess(1, { warn: (m) => console.error(`clipag: ${m}`) });
  },
);
