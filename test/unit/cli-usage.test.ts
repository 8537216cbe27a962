/**
 * The built CLI's own flags and usage errors (dist/, `npm run build`): --version, and
 * commander's errors (unknown option, missing argument) as one JSON event under
 * --log-format json, as plain text otherwise; exit 2 either way.
 */
import { execa } from 'execa';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { REPO } from './helpers.js';

const CLI = join(REPO, 'dist/cli.js');
const run = (...args: string[]) => execa('node', [CLI, ...args], { reject: false });

describe('keylessgo CLI usage', () => {
  it('--version prints the package version', async () => {
    const { version } = JSON.parse(await readFile(join(REPO, 'package.json'), 'utf8')) as { version: string };
    const result = await run('--version');
    expect(result.exitCode).toBe(0);
    expect(result.stdout).toBe(version);
  });

  it.each([
    [['inspect', 'x.img', '--bogus', '--log-format', 'json'], "unknown option '--bogus'"],
    [['inspect', '--log-format=json'], "missing required argument 'image'"],
    [['boot-test', 'x.img', '--log-format=json'], "required option '--key <file>' not specified"],
  ])('%j: one JSON error event, exit 2', async (args, message) => {
    const result = await run(...args);
    expect(result.exitCode).toBe(2);
    const lines = result.stderr.split('\n');
    expect(lines).toHaveLength(1);
    expect(JSON.parse(lines[0]!)).toMatchObject({ level: 'error', event: 'error', message });
  });

  it('without --log-format json a usage error stays text with the help after it', async () => {
    const result = await run('inspect', 'x.img', '--bogus');
    expect(result.exitCode).toBe(2);
    expect(result.stderr).toMatch(/^error: unknown option '--bogus'\n\nUsage: keylessgo inspect/);
  });
});
