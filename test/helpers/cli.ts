// The `clipag` CLI run in-process, with what it prints captured (console and stderr writes).
import { vi } from 'vitest';
import { main } from '../../cli/main.ts';

/**
 * Runs `clipag ARGV`: its exit code, console.log lines (joined by "\n"), and its stderr (console.error
 * lines and process.stderr writes, joined by `stderrJoin`: "" keeps writes as written).
 */
export async function runMain(argv: string[], stderrJoin = ''): Promise<{ code: number; stdout: string; stderr: string }> {
  const out: string[] = [];
  const err: string[] = [];
  const log = vi.spyOn(console, 'log').mockImplementation((...a) => void out.push(a.join(' ')));
  const error = vi.spyOn(console, 'error').mockImplementation((...a) => void err.push(a.join(' ')));
  const write = vi.spyOn(process.stderr, 'write').mockImplementation((chunk) => (err.push(String(chunk)), true));
  try {
    const code = await main(argv);
    return { code, stdout: out.join('\n'), stderr: err.join(stderrJoin) };
  } finally {
    log.mockRestore();
    error.mockRestore();
    write.mockRestore();
  }
}
