// The CLI loses nothing and says what is wrong (a CLI review): the training verbs write bundles only
// where asked, whole or not at all (it found `train-toy` writing over the shipped models/toy, in place,
// without asking); output paths are checked before any work; a wrong command line exits 2.
import { execFileSync, spawnSync } from 'node:child_process';
import { chmodSync, cpSync, existsSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it, onTestFinished } from 'vitest';
import { REPO_ROOT, bundleOut, checkpointFile, outputFile, replaceFolder } from '../../cli/common.ts';
import { runMain } from '../helpers/cli.ts';
import { ClipEngine } from '../../gpu-worker/engine/engine.ts';
import { readSafetensors } from '../../gpu-worker/engine/io/safetensors.ts';

const dir = mkdtempSync(join(tmpdir(), 'clipag-train-cli-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const runCli = (argv: string[]) => runMain(argv, '\n');

const TINY = ['--variant', 'plain', '--steps', '2', '--batch', '2', '--no-prior', '--width', '16', '--layers', '1'];

describe('clipag train-toy --out', () => {
  it('refuses a folder that holds a bundle before training, and replaces it whole with --force', async () => {
    const victim = join(dir, 'victim');
    cpSync(join(REPO_ROOT, 'models', 'toy-plain'), victim, { recursive: true });
    const before = readFileSync(join(victim, 'weights.safetensors'));
    const ck = join(dir, 'plain.ckpt');
    const refused = await runCli(['train-toy', ...TINY, '--out', victim, '--checkpoint', ck]);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(/--out .*victim already holds files \(a bundle\?\); pass --force/);
    expect(existsSync(ck)).toBe(false); // refused before any training
    expect(readFileSync(join(victim, 'weights.safetensors')).equals(before)).toBe(true);

    const replaced = await runCli(['train-toy', ...TINY, '--out', victim, '--checkpoint', ck, '--force']);
    expect(replaced.code, replaced.stderr).toBe(0);
    expect(readFileSync(join(victim, 'weights.safetensors')).equals(before)).toBe(false);
    const engine = await ClipEngine.open(victim, { threads: 1 }); // a whole bundle: checksums match
    await engine.close();
    // The replaced bundle's own zero-shot figures (zeroShotAccuracy on its 512 images), each a fraction.
    const zeroShot = JSON.parse(readFileSync(join(victim, 'manifest.json'), 'utf8')).training.final.zero_shot as Record<string, number>;
    expect(Object.keys(zeroShot).sort()).toEqual(['colour', 'heldOut', 'images', 'position', 'seen', 'shape', 'size']);
    expect(zeroShot.images).toBe(512);
    for (const k of ['colour', 'heldOut', 'position', 'seen', 'shape', 'size']) {
      expect(zeroShot[k], k).toBeGreaterThanOrEqual(0);
      expect(zeroShot[k], k).toBeLessThanOrEqual(1);
    }
    expect(readdirSync(dir).filter((n) => n.startsWith('.victim.'))).toEqual([]); // no staging left behind
  }, 120_000);

  it('refuses a file as --out, and a bad --max-minutes, before training', async () => {
    const file = join(dir, 'afile');
    writeFileSync(file, 'keep');
    const ck = join(dir, 'f.ckpt');
    expect((await runCli(['train-toy', ...TINY, '--out', file, '--checkpoint', ck])).stderr).toMatch(/afile is a file, not a folder/);
    expect((await runCli(['train-toy', ...TINY, '--out', join(dir, 'new'), '--checkpoint', ck, '--max-minutes', '0'])).stderr).toMatch(/--max-minutes must be a positive number/);
    expect(existsSync(ck)).toBe(false);
    expect(readFileSync(file, 'utf8')).toBe('keep');
  });

  it('refuses a --checkpoint that is a folder, or under a file, naming the flag (train-toy and train-judge), before training', async () => {
    const folder = join(dir, 'ckdir');
    mkdirSync(folder);
    const file = join(dir, 'ckfile');
    writeFileSync(file, 'keep');
    for (const verb of [['train-toy', ...TINY], ['train-judge', '--steps', '1']]) {
      expect((await runCli([...verb, '--out', join(dir, 'new-ck'), '--checkpoint', folder])).stderr).toMatch(/--checkpoint .*ckdir is a folder; give a file name/);
      expect((await runCli([...verb, '--out', join(dir, 'new-ck'), '--checkpoint', join(file, 'x.ckpt')])).stderr).toMatch(/--checkpoint .*ckfile\/x\.ckpt: cannot make its folder .*\(EEXIST|ENOTDIR/);
    }
    expect(readdirSync(folder)).toEqual([]);
    expect(readFileSync(file, 'utf8')).toBe('keep');
    expect(existsSync(join(dir, 'new-ck'))).toBe(false);
  });
});

describe('--checkpoint that is a symbolic link (train-toy, train-judge)', () => {
  it('is followed to its file; one that leads nowhere (dangling, a loop) is refused before training, naming the flag', async () => {
    const target = join(dir, 'ck-target.ckpt');
    writeFileSync(target, 'a checkpoint');
    symlinkSync(target, join(dir, 'ck-link.ckpt'));
    expect(checkpointFile(join(dir, 'ck-link.ckpt'))).toBe(target);
    symlinkSync(join(dir, 'ck-nowhere.ckpt'), join(dir, 'ck-dangling.ckpt'));
    expect(() => checkpointFile(join(dir, 'ck-dangling.ckpt'))).toThrow(/--checkpoint .*ck-dangling\.ckpt is a symbolic link that leads nowhere \(ENOENT\)/);
    symlinkSync(join(dir, 'ck-loop2'), join(dir, 'ck-loop1'));
    symlinkSync(join(dir, 'ck-loop1'), join(dir, 'ck-loop2'));
    for (const verb of [['train-toy', ...TINY], ['train-judge', '--steps', '1']]) {
      const r = await runCli([...verb, '--out', join(dir, 'never'), '--checkpoint', join(dir, 'ck-loop1')]);
      expect(r.code).toBe(1);
      expect(r.stderr).toMatch(/--checkpoint .*ck-loop1 is a symbolic link that leads nowhere \(ELOOP\)/);
    }
    expect(existsSync(join(dir, 'ck-nowhere.ckpt'))).toBe(false);
    expect(existsSync(join(dir, 'never'))).toBe(false);
  });
});

describe('clipag train-judge below the accuracy bar', () => {
  it('advises a command that trains longer, and that command is accepted (not refused for its --steps)', async () => {
    const ck = join(dir, 'weak-judge.ckpt');
    const args = ['--steps', '1', '--batch', '2', '--check', '32', '--out', join(dir, 'weak-judge'), '--checkpoint', ck];
    const weak = await runCli(['train-judge', ...args]);
    expect(weak.code, weak.stderr).toBe(1);
    const advised = /To train longer, .*: clipag train-judge (.*)$/m.exec(weak.stderr);
    expect(advised, weak.stderr).not.toBeNull();
    const argv = advised![1].split(' ');
    expect(argv).toEqual(['--batch', '2', '--check', '32', '--out', join(dir, 'weak-judge'), '--checkpoint', ck, '--no-resume', '--steps', '2']);
    const again = await runCli(['train-judge', ...argv]);
    expect(again.stderr).not.toMatch(/different steps|refused|\[invalid/);
    expect(again.stderr).toMatch(/accuracy on 32 fresh world images/);
    expect(readSafetensors(ck).metadata?.step).toBe('2');
  }, 60_000);
});

describe('bundleOut', () => {
  it('--force replaces a bundle, never another folder; a link is followed to its folder', () => {
    const repo = join(dir, 'repo');
    mkdirSync(join(repo, '.git'), { recursive: true });
    writeFileSync(join(repo, 'manifest.json'), '{}');
    expect(() => bundleOut(repo, true)).toThrow(/repo is not a bundle \(it holds \.git\): --force replaces a bundle, never another folder/);
    const notes = join(dir, 'notes');
    mkdirSync(notes);
    writeFileSync(join(notes, 'reading-list.txt'), 'x');
    expect(() => bundleOut(notes, true)).toThrow(/not a bundle \(no manifest\.json\)/);
    const bundle = join(dir, 'a-bundle');
    mkdirSync(bundle);
    writeFileSync(join(bundle, 'manifest.json'), '{}');
    expect(bundleOut(bundle, true)).toBe(bundle);
    symlinkSync(bundle, join(dir, 'bundle-link'));
    expect(bundleOut(join(dir, 'bundle-link'), true)).toBe(bundle);
    expect(bundleOut(join(dir, 'empty-or-new'), false)).toBe(join(dir, 'empty-or-new'));
  });
});

describe('replaceFolder', () => {
  it('a write that fails leaves the previous folder as it was, and no staging folder', async () => {
    const out = join(dir, 'kept');
    mkdirSync(out);
    writeFileSync(join(out, 'a.txt'), 'old');
    await expect(replaceFolder(out, async (d) => {
      writeFileSync(join(d, 'a.txt'), 'half');
      throw new Error('interrupted');
    })).rejects.toThrow('interrupted');
    expect(readFileSync(join(out, 'a.txt'), 'utf8')).toBe('old');
    expect(readdirSync(dir).filter((n) => n.startsWith('.kept.'))).toEqual([]);
    const { chmodSync, statSync } = await import('node:fs');
    chmodSync(out, 0o750);
    await replaceFolder(out, async (d) => writeFileSync(join(d, 'b.txt'), 'new'));
    expect(readdirSync(out)).toEqual(['b.txt']);
    expect(statSync(out).mode & 0o777).toBe(0o750); // the replaced folder's mode is kept
  });

  it('a run killed between the two renames of its swap loses nothing: the next one puts the previous folder back, then replaces it', async () => {
    const out = join(dir, 'swapped');
    // What such a run leaves: `out` gone, the previous folder at `.<out>.writing-<pid>-<x>.old`, the new one half-moved.
    let pid = 900_000;
    for (;; pid++) {
      try {
        process.kill(pid, 0);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'ESRCH') break;
      }
    }
    const old = join(dir, `.swapped.writing-${pid}-abc123.old`);
    mkdirSync(old);
    writeFileSync(join(old, 'manifest.json'), 'previous');
    mkdirSync(join(dir, `.swapped.writing-${pid}-abc123`));
    let seen: string[] = [];
    await expect(replaceFolder(out, async () => {
      seen = readdirSync(out); // the previous folder is back before the new one is written
      throw new Error('interrupted again');
    })).rejects.toThrow('interrupted again');
    expect(seen).toEqual(['manifest.json']);
    expect(readFileSync(join(out, 'manifest.json'), 'utf8')).toBe('previous');
    expect(readdirSync(dir).filter((n) => n.startsWith('.swapped.'))).toEqual([]);
  });
});

describe('outputFile', () => {
  it('refuses a link that loops or leads nowhere before the run, and writes through one that leads to a file', () => {
    const loop = join(dir, 'loopA');
    symlinkSync(join(dir, 'loopB'), loop);
    symlinkSync(loop, join(dir, 'loopB'));
    expect(() => outputFile(loop, '-o')).toThrow(/-o .*loopA is a symbolic link that leads nowhere \(ELOOP\)/);
    const dangling = join(dir, 'dangling.png');
    symlinkSync('/nonexistent/x.png', dangling);
    expect(() => outputFile(dangling, '-o')).toThrow(/leads nowhere \(ENOENT\)/);
    const target = join(dir, 'target.png');
    writeFileSync(target, 'x');
    symlinkSync(target, join(dir, 'link.png'));
    expect(outputFile(join(dir, 'link.png'), '-o')).toBe(target);
    symlinkSync(join(dir, 'not-yet.png'), join(dir, 'ahead.png')); // a link to a file not made yet, in a folder that exists
    expect(outputFile(join(dir, 'ahead.png'), '-o')).toBe(join(dir, 'not-yet.png'));
  });
});

describe('outputFile refuses what a rename would destroy', () => {
  it('a pipe (or a device: -o /dev/null once replaced the machine\'s /dev/null) is refused before the run and left as it was', async () => {
    const fifo = join(dir, 'pipe.png');
    execFileSync('mkfifo', [fifo]);
    expect(() => outputFile(fifo, '-o')).toThrow(/-o .*pipe\.png is not a regular file \(a device, a pipe or a socket\)/);
    expect(() => outputFile('/dev/null', '-o')).toThrow(/-o \/dev\/null is not a regular file/);
    const r = await runCli(['generate', 'a red circle', '--steps', '1', '-o', fifo]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/is not a regular file/);
    expect(lstatSync(fifo).isFIFO()).toBe(true);
    expect(statSync('/dev/null').isCharacterDevice()).toBe(true);
  });

  it('"-" is refused as a usage error, not written as a file named "-"', async () => {
    expect(() => outputFile('-', '-o')).toThrow(/-o - \(standard output\) is not supported; give a file name/);
    const r = await runCli(['generate', 'a red circle', '--steps', '1', '-o', '-']);
    expect(r.code).toBe(2);
    expect(existsSync(join(process.cwd(), '-'))).toBe(false);
  });

  it('a read-only file (no write bit) is refused whoever runs it, root included, its bytes kept', () => {
    const locked = join(dir, 'locked-for-all.png');
    writeFileSync(locked, 'keep me');
    chmodSync(locked, 0o444);
    expect(() => outputFile(locked, '-o')).toThrow(/-o .*locked-for-all\.png is read-only; make it writable or give another file name/);
    expect(readFileSync(locked, 'utf8')).toBe('keep me');
  });

  // A file another user may not write though its mode has write bits (its owner's 0644): seen only by
  // that user, a child run as nobody.
  const canRunAsNobody = process.getuid?.() === 0 && spawnSync('true', [], { uid: 65534, gid: 65534 }).error === undefined;
  it.skipIf(!canRunAsNobody)('a file the user may not write is refused, its bytes and mode kept', () => {
    // Under /tmp itself: the test run's own temporary folder is private, and nobody could not reach it.
    const folder = mkdtempSync(join('/tmp', 'clipag-ro-'));
    onTestFinished(() => rmSync(folder, { recursive: true, force: true }));
    const locked = join(folder, 'locked.png');
    writeFileSync(locked, 'keep me');
    chmodSync(locked, 0o644);
    const script = `import { outputFile } from ${JSON.stringify(join(REPO_ROOT, 'cli', 'common.ts'))}; try { outputFile(${JSON.stringify(locked)}, '-o'); console.log('accepted'); } catch (e) { console.log(e.message); }`;
    // nobody may write the folder (and tsx its cache there), only not the file
    chmodSync(folder, 0o777);
    const r = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { cwd: REPO_ROOT, encoding: 'utf8', env: { ...process.env, TMPDIR: folder }, uid: 65534, gid: 65534 });
    expect(r.stdout, r.stderr).toMatch(/-o .*locked\.png is read-only; make it writable or give another file name/);
    expect(readFileSync(locked, 'utf8')).toBe('keep me');
    expect(statSync(locked).mode & 0o777).toBe(0o644);
  });
});

describe('clipag generate', () => {
  it('a prompt too long to run is refused before it is echoed', async () => {
    const r = await runCli(['generate', 'x'.repeat(5000)]);
    expect(r.code).toBe(2); // a usage error, as any other argument out of its range
    expect(r.stderr).toMatch(/a prompt is 5000 characters; the limit is 1000/);
    // Not echoed (the usage that follows a usage error is printed, the prompt is not).
    expect(r.stderr).not.toContain('x'.repeat(100));
  });

  it('--size, --views and the number of --negative are checked before the model loads, naming the flag', async () => {
    for (const [args, message] of [
      [['--size', '100x64'], /--size 100x64: each side must be a multiple of 8 in \[16, 2048\]/],
      [['--size', '2048x2048'], /--size 2048x2048 is 4194304 pixels; the limit is 1048576/],
      [['--views', '0,0'], /--views 0,0: each count at most 256, and at least one view/],
      [['--negative', 'a', '--negative', 'b', '--negative', 'c', '--negative', 'd', '--negative', 'e', '--negative', 'f', '--negative', 'g', '--negative', 'h'], /--negative: at most 7/],
    ] as const) {
      const r = await runCli(['generate', 'a red circle', '--model', join(dir, 'no-such-model'), ...args]);
      expect(r.stderr, args.join(' ')).toMatch(message); // not the missing model: checked first
    }
  });

  it('a --model that is a file (the manifest, say) is named as such', async () => {
    expect((await runCli(['generate', 'a red circle', '--model', join(REPO_ROOT, 'models', 'toy', 'manifest.json')])).stderr).toMatch(/--model .*manifest\.json is a file; pass the bundle's folder/);
  });

  it('refuses -o that is the --init image, names the file of an init that does not decode, and goes on without a frame it cannot write', async () => {
    const init = join(dir, 'init.png');
    const notPng = join(dir, 'notpng.png');
    writeFileSync(notPng, 'hello');
    const made = await runCli(['generate', 'a red circle', '--steps', '1', '--seed', '1', '-o', init]);
    expect(made.code, made.stderr).toBe(0);
    const before = readFileSync(init);
    expect((await runCli(['generate', 'a red circle', '--steps', '1', '--init', init, '-o', init])).stderr).toMatch(/-o .*init\.png is the --init image/);
    expect(readFileSync(init).equals(before)).toBe(true);
    const { linkSync } = await import('node:fs');
    linkSync(init, join(dir, 'hard-link.png')); // the same file under another name
    expect((await runCli(['generate', 'a red circle', '--steps', '1', '--init', init, '-o', join(dir, 'hard-link.png')])).stderr).toMatch(/is the --init image/);
    expect((await runCli(['generate', 'a red circle', '--steps', '1', '--init', notPng, '-o', join(dir, 'x.png')])).stderr).toMatch(/--init .*notpng\.png: /);
    // A frame path taken by a folder: a warning, and the image is still written.
    const frames = join(dir, 'frames');
    mkdirSync(join(frames, 'frame-0000.png'), { recursive: true });
    const out = join(dir, 'with-frames.png');
    const run = await runCli(['generate', 'a red circle', '--steps', '2', '--seed', '1', '--frames', frames, '-o', out]);
    expect(run.code, run.stderr).toBe(0);
    expect(run.stderr).toMatch(/warning: --frames: cannot write .*frame-0000\.png \(EISDIR\); frame skipped/);
    expect(existsSync(out)).toBe(true);
  }, 60_000);
});

describe('clipag generate keeps what was there', () => {
  it('Ctrl-C mid-run: exit 130, said on stderr, no image, and the frames folder it made removed, so the same command runs again', async () => {
    const { spawn } = await import('node:child_process');
    const frames = join(dir, 'interrupted-frames', 'inner');
    const out = join(dir, 'interrupted.png');
    const child = spawn(process.execPath, ['--import', 'tsx', 'bin/clipag.ts', 'generate', 'a red circle', '--steps', '1000', '--seed', '1', '--frames', frames, '-o', out], { cwd: REPO_ROOT, stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d) => (stderr += String(d)));
    const exited = new Promise<number | null>((res) => child.on('exit', (code) => res(code)));
    // Interrupted once the run has written frames (no clock: the frames are the evidence it is running).
    while (child.exitCode === null && !(existsSync(frames) && readdirSync(frames).length >= 2)) await new Promise((r) => setTimeout(r, 50));
    expect(child.exitCode, `the run ended before it wrote two frames: ${stderr}`).toBe(null);
    child.kill('SIGINT');
    expect(await exited, stderr).toBe(130);
    expect(stderr).toMatch(/clipag generate: interrupted after \d+ steps; .*interrupted\.png was not written, and the \d+ frames it wrote were removed/);
    expect(existsSync(out)).toBe(false);
    expect(existsSync(join(dir, 'interrupted-frames'))).toBe(false); // both folders it made
  }, 120_000);

  it('--negative "" is a usage error before the model loads; a failed write with no earlier file says nothing was written', async () => {
    const r = await runCli(['generate', 'a red circle', '--negative', '', '--model', join(dir, 'no-such-model')]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/--negative is empty/);
    const { spawnSync } = await import('node:child_process');
    const out = join(dir, 'never-there.png');
    const w = spawnSync('bash', ['-c', `trap '' XFSZ; ulimit -f 8; exec node --import tsx bin/clipag.ts generate "a large red circle on the left" --steps 1 --seed 2 -o "${out}"`], { cwd: REPO_ROOT, encoding: 'utf8' });
    expect(w.status, w.stderr).toBe(1);
    expect(w.stderr).toMatch(/cannot write .*never-there\.png: EFBIG; nothing was written \[runtime_failed\]/);
    expect(existsSync(out)).toBe(false);
  }, 60_000);

  it('a write that fails (a file-size limit, a full disk) leaves the earlier image whole, and says so', async () => {
    const out = join(dir, 'keep.png');
    const made = await runCli(['generate', 'a red circle', '--steps', '1', '--seed', '1', '-o', out]);
    expect(made.code, made.stderr).toBe(0);
    const before = readFileSync(out);
    // A file-size limit, as `ulimit -f` sets, in a child: the write fails past 8 KiB (SIGXFSZ ignored, so EFBIG).
    const { spawnSync } = await import('node:child_process');
    const r = spawnSync('bash', ['-c', `trap '' XFSZ; ulimit -f 8; exec node --import tsx bin/clipag.ts generate "a large red circle on the left" --steps 2 --seed 2 -o "${out}"`], { cwd: REPO_ROOT, encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(1);
    expect(r.stderr).toMatch(/cannot write .*keep\.png: EFBIG; the file that was there is as it was \[runtime_failed\]/);
    expect(readFileSync(out).equals(before)).toBe(true);
    expect(readdirSync(dir).filter((n) => n.startsWith('.keep.png.'))).toEqual([]); // no temporary file left
  }, 60_000);

  it('--frames into a folder holding an earlier run\'s frames is refused before the run; a withheld run removes the folder it made', async () => {
    const frames = join(dir, 'old-frames');
    mkdirSync(frames);
    writeFileSync(join(frames, 'frame-0010.png'), 'an earlier run');
    const r = await runCli(['generate', 'a red circle', '--steps', '1', '--frames', frames, '-o', join(dir, 'f.png')]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/--frames .*old-frames holds 1 frame of an earlier run \(frame-0010\.png…\): give an empty or new folder/);
    expect(existsSync(join(dir, 'f.png'))).toBe(false);
    // An operator policy whose output rule withholds every image of the prompt: no image, no frames, no folder.
    const policy = join(dir, 'withhold.json');
    writeFileSync(policy, JSON.stringify({ version: 1, rules: [], output_rules: [{ id: 'all', category: 'copyright', action: 'withhold', message: 'kept back', concepts: ['a red circle'], above_prompt_by: -0.0001 }] }));
    const fresh = join(dir, 'new-frames', 'inner');
    const withheld = await runCli(['generate', 'a red circle', '--steps', '2', '--frames', fresh, '--policy', policy, '-o', join(dir, 'w.png')]);
    expect(withheld.code, withheld.stderr).toBe(3);
    expect(existsSync(join(dir, 'new-frames'))).toBe(false);
  }, 60_000);

  it('an empty prompt, a missing --init file and --style without --init are refused before the model loads; a prompt\'s control characters are shown quoted', async () => {
    // Bad input exits 1; flags that need another flag, and a blank prompt, are a wrong command line: exit 2, with the usage.
    for (const [argv, message, code] of [
      [['generate', '   '], /the prompt is empty/, 2],
      [['generate', 'a red circle', '--init', join(dir, 'missing.png')], /cannot read init image .*missing\.png/, 1],
      [['generate', 'a red circle', '--style'], /--style needs an init image/, 2],
      [['generate', 'a red circle', '--strength', '0.5'], /--strength needs an init image/, 2],
      [['generate', 'a red circle', '--content-weight', '3'], /--content-weight needs an init image/, 2],
    ] as const) {
      const r = await runCli([...argv, '--model', join(dir, 'no-such-model'), '-o', join(dir, 'never.png')]);
      expect(r.stderr).toMatch(message); // not the missing model: checked before it would load
      expect(r.code, argv.join(' ')).toBe(code);
      if (code === 2) expect(r.stderr).toMatch(/usage: clipag generate/);
    }
    // A name the file system refuses: said before the run, in the verb's format (not a raw ENAMETOOLONG).
    const long = await runCli(['generate', 'a red circle', '-o', join(dir, `${'a'.repeat(300)}.png`)]);
    expect(long.code).toBe(1);
    expect(long.stderr).toMatch(/clipag generate: -o .*…: cannot be written \(ENAMETOOLONG\) \[invalid_input\]/);
    const r = await runCli(['generate', 'a red circle\u001b[2J', '--steps', '1', '-o', join(dir, 'esc.png')]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toContain('clipag: "a red circle\\u001b[2J"');
    expect(r.stderr).not.toContain('\u001b[2J');
  }, 60_000);
});

describe('a wrong command line', () => {
  it.each([
    [['generate'], /give exactly one prompt/],
    [['embed', '--text', 'a', '--image', 'b.png'], /give exactly one of --text or --image/],
    [['prior', 'fit', 'folder'], /prior fit needs -o/],
    [['models', 'import', 'x.safetensors'], /models import needs -o DIR/],
    [['generate', 'a red circle', '--frames', ''], /--frames needs a folder/],
  ])('%j exits 2 with the usage, as an unknown flag does', async (argv, message) => {
    const r = await runCli(argv);
    expect(r.stderr).toMatch(message);
    expect(r.stderr).toMatch(/usage: clipag/);
    expect(r.code).toBe(2);
  });
});

describe('clipag generate with a model that ships no GMM prior (models/toy-plain)', () => {
  it('starts from noise and says so, as the API does: on stderr, and in --json warnings', async () => {
    const plain = join(REPO_ROOT, 'models', 'toy-plain');
    const r = await runCli(['generate', 'a red circle', '--model', plain, '--steps', '1', '--seed', '5', '-o', join(dir, 'plain.png')]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/warning: model toy-plain ships no GMM prior: the image started from noise \(init "gmm" needs one; see clipag prior fit\)/);
    const j = await runCli(['generate', 'a red circle', '--model', plain, '--steps', '1', '--seed', '5', '-o', join(dir, 'plain.png'), '--json']);
    expect(j.code, j.stderr).toBe(0);
    expect(JSON.parse(j.stdout).warnings).toContainEqual(expect.stringMatching(/^model toy-plain ships no GMM prior/));
    // --init noise asked for: nothing to say. The shipped toy has its prior: nothing either.
    for (const argv of [['--model', plain, '--init', 'noise'], []]) {
      const quiet = await runCli(['generate', 'a red circle', ...argv, '--steps', '1', '--seed', '5', '-o', join(dir, 'plain.png')]);
      expect(quiet.code, quiet.stderr).toBe(0);
      expect(quiet.stderr).not.toMatch(/ships no GMM prior/);
    }
  }, 60_000);

  it('-o with an extension that names no format it writes: written as a PNG, with a warning saying so', async () => {
    const r = await runCli(['generate', 'a red circle', '--steps', '1', '--seed', '5', '-o', join(dir, 'photo.gif')]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/warning: -o .*photo\.gif: the image is written as a PNG whatever the file's extension \(\.gif\)/);
    expect(readFileSync(join(dir, 'photo.gif')).subarray(1, 4).toString()).toBe('PNG');
    // -o FILE.webp names a format it writes (ADR 0043): a WebP, no warning; --quality applies to it.
    const webp = await runCli(['generate', 'a red circle', '--steps', '1', '--seed', '5', '--quality', '70', '-o', join(dir, 'photo.webp'), '--json']);
    expect(webp.code, webp.stderr).toBe(0);
    expect(webp.stderr).not.toMatch(/whatever the file's extension/);
    expect([JSON.parse(webp.stdout).output_format, JSON.parse(webp.stdout).output_quality]).toEqual(['webp', 70]);
    const bytes = readFileSync(join(dir, 'photo.webp'));
    expect([bytes.toString('latin1', 0, 4), bytes.toString('latin1', 8, 16)]).toEqual(['RIFF', 'WEBPVP8X']);
    expect(bytes.includes('trainedAlgorithmicMedia')).toBe(true);
  }, 60_000);

  it('-o FILE.jpg writes a JPEG (ADR 0041), --quality sets its quality; --format png over a .jpg name is a PNG with a warning; --quality without JPEG is a usage error', async () => {
    const q90 = await runCli(['generate', 'a red circle', '--steps', '1', '--seed', '5', '-o', join(dir, 'photo.jpg'), '--json']);
    expect(q90.code, q90.stderr).toBe(0);
    expect(q90.stderr).not.toMatch(/whatever the file's extension/);
    expect(JSON.parse(q90.stdout).output_format).toBe('jpeg');
    const jpeg = readFileSync(join(dir, 'photo.jpg'));
    expect([jpeg[0], jpeg[1]]).toEqual([0xff, 0xd8]);
    expect(jpeg.includes('trainedAlgorithmicMedia')).toBe(true);
    const q20 = await runCli(['generate', 'a red circle', '--steps', '1', '--seed', '5', '--format', 'jpeg', '--quality', '20', '-o', join(dir, 'rough.jpeg')]);
    expect(q20.code, q20.stderr).toBe(0);
    expect(readFileSync(join(dir, 'rough.jpeg')).length).toBeLessThan(jpeg.length);
    const png = await runCli(['generate', 'a red circle', '--steps', '1', '--seed', '5', '--format', 'png', '-o', join(dir, 'asked.jpg')]);
    expect(png.code, png.stderr).toBe(0);
    expect(png.stderr).toMatch(/warning: -o .*asked\.jpg: the image is written as a PNG whatever the file's extension \(\.jpg\)/);
    expect(readFileSync(join(dir, 'asked.jpg')).subarray(1, 4).toString()).toBe('PNG');
    const bad = await runCli(['generate', 'a red circle', '--quality', '50', '-o', join(dir, 'never.png')]);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain('--quality applies only to JPEG or WebP');
  }, 120_000);
});

describe('clipag embed --text', () => {
  it('warns about words the model does not know, as generate does (the embedding still printed)', async () => {
    const r = await runCli(['embed', '--text', 'a purple elephant', '--json']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/warning: .*does not know the word "elephant"/);
    expect(JSON.parse(r.stdout).kind).toBe('text');
  }, 60_000);
});
