// THIRD_PARTY_NOTICES.md lists the production tree of package-lock.json with each package's licence
// (a dependency review: nothing said what the Lambda bundles and the worker image carry). A dependency
// added, removed or updated without the list rewritten fails here, as does one with no licence or a
// copyleft one.
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { expectedNotices, licenceProblems, NOTICES_FILE, productionPackages } from '../../scripts/third-party-notices.ts';

describe('THIRD_PARTY_NOTICES.md', () => {
  it('lists the locked production tree as it is (else: node --import tsx scripts/third-party-notices.ts --write)', () => {
    expect(readFileSync(NOTICES_FILE, 'utf8')).toBe(expectedNotices());
  });

  it('carries the full text of the Apache License 2.0, which ftfy (rewritten in shared/text-clean.ts) asks to be given with it', () => {
    const text = readFileSync(NOTICES_FILE, 'utf8');
    const section = text.slice(text.indexOf('## The Apache License, Version 2.0'));
    expect(section).toContain('TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION');
    expect(section).toContain('END OF TERMS AND CONDITIONS');
    expect(section).toContain('9. Accepting Warranty or Additional Liability.');
  });

  it('every production package declares a licence, and none is copyleft', () => {
    const lock = JSON.parse(readFileSync(new URL('../../package-lock.json', import.meta.url), 'utf8'));
    const packages = productionPackages(lock);
    expect(packages.map((p) => p.name)).toEqual(expect.arrayContaining(['hono', 'onnxruntime-node', 'zod', '@aws-sdk/client-s3']));
    expect(licenceProblems(packages)).toEqual([]);
  });
});

describe('productionPackages and licenceProblems', () => {
  const lock = {
    lockfileVersion: 3,
    packages: {
      '': { version: '0.1.0' },
      'node_modules/a': { version: '1.0.0', license: 'MIT' },
      'node_modules/devonly': { version: '1.0.0', license: 'MIT', dev: true },
      'node_modules/dev-and-optional': { version: '1.0.0', license: 'MIT', devOptional: true },
      'node_modules/a/node_modules/@s/b': { version: '2.0.0', license: 'GPL-3.0-only' },
      'node_modules/c': { version: '1.0.0' },
      'node_modules/d': { version: '1.0.0', license: '(MIT OR GPL-2.0)' },
      'node_modules/e': { version: '1.0.0', license: 'LGPL-2.1' },
    },
  };

  it('takes every package an install without dev dependencies can hold (devOptional ones too) once, named without its nesting, sorted', () => {
    expect(productionPackages(lock).map((p) => `${p.name}@${p.version}`)).toEqual(['@s/b@2.0.0', 'a@1.0.0', 'c@1.0.0', 'd@1.0.0', 'dev-and-optional@1.0.0', 'e@1.0.0']);
  });

  it('names a copyleft licence (unless offered beside another) and a missing one', () => {
    expect(licenceProblems(productionPackages(lock))).toEqual(['@s/b@2.0.0 is GPL-3.0-only (copyleft)', 'c@1.0.0 declares no licence', 'e@1.0.0 is LGPL-2.1 (copyleft)']);
  });

  it('refuses a lockfile it cannot read the licences from', () => {
    expect(() => productionPackages({ lockfileVersion: 2, packages: {} })).toThrow(/not lockfile version 3/);
  });
});
