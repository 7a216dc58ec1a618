/**
 * docs/settings.md lists every setting the processes read, with the defaults the code gives in each mode:
 * a setting added to shared/config.ts without a row, or a default changed without the table, fails here.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ENV_VARS, parseConfig } from '../../shared/config.ts';
import { REPO_ROOT } from '../helpers/reference.ts';

const rows = readFileSync(join(REPO_ROOT, 'docs/settings.md'), 'utf8')
  .split('\n')
  .filter((line) => /^\| `[A-Z0-9_]+` \|/.test(line))
  .map((line) => line.split('|').slice(1, -1).map((cell) => cell.trim()));

/** A default as the table writes it. */
function shown(value: unknown): string {
  if (value === undefined) return 'unset';
  if (Array.isArray(value)) return `\`${value.join(',')}\``;
  return `\`${String(value)}\``;
}

const AWS_REQUIRED = { AWS_REGION: 'eu-west-1', CLIPAG_BUCKET: 'clipag-test', CLIPAG_QUEUE_URL: 'https://sqs.eu-west-1.amazonaws.com/1/q' };

describe('docs/settings.md', () => {
  it('has one row per setting, none extra', () => {
    const names = rows.map((cells) => cells[0]!.replace(/`/g, ''));
    expect([...names].sort()).toEqual(Object.keys(ENV_VARS).sort());
  });

  it("gives each mode's default as the code does", () => {
    const local = parseConfig({}) as Record<string, unknown>;
    const aws = parseConfig({ CLIPAG_MODE: 'aws', ...AWS_REQUIRED }) as Record<string, unknown>;
    const localFields = new Set(Object.keys(local));
    const awsFields = new Set(Object.keys(aws));
    for (const [cellName, localCell, awsCell] of rows) {
      const name = cellName!.replace(/`/g, '') as keyof typeof ENV_VARS;
      const field = ENV_VARS[name];
      for (const [mode, cell, parsed, fields] of [['local', localCell, local, localFields], ['aws', awsCell, aws, awsFields]] as const) {
        if (cell === '—') {
          // Not read in that mode: setting it changes nothing.
          const withIt = mode === 'local' ? parseConfig({ [name]: 'x' }) : parseConfig({ CLIPAG_MODE: 'aws', ...AWS_REQUIRED, [name]: 'x' });
          expect(withIt, `${name} in ${mode}`).toEqual(parsed);
          continue;
        }
        if (cell === 'required') {
          expect(name in AWS_REQUIRED && mode === 'aws', `${name} in ${mode}`).toBe(true);
          continue;
        }
        if (cell === 'unset') {
          expect(parsed[field], `${name} in ${mode}`).toBeUndefined();
          continue;
        }
        expect(fields.has(field) && cell, `${name} in ${mode}`).toBe(shown(parsed[field]));
      }
    }
  });
});
