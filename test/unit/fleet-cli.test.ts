/**
 * The built CLI's fleet commands against local stand-ins (dist/, `npm run build`): an
 * inventory of one host whose SSH port answers as OpenSSH (skipped: already up) and one
 * where nothing listens (failed), JSON lines on stdout, exit codes; bad input exits 2.
 */
import { execa } from 'execa';
import { readFile, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:net';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { REPO, tempDir } from './helpers.js';

const CLI = join(REPO, 'dist/cli.js');
const run = (...args: string[]) => execa('node', [CLI, ...args], { reject: false });

const servers: Server[] = [];
afterEach(() => servers.splice(0).forEach((server) => server.close()));

/** A TCP port that sends `banner` to every connection (`at`: that port); or, without one, a port nothing listens on. */
async function port(banner?: string, at = 0): Promise<number> {
  const server = createServer((socket) => socket.end(banner ?? ''));
  await new Promise<void>((resolve) => server.listen(at, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  if (banner) servers.push(server);
  else await new Promise((resolve) => server.close(resolve));
  return port;
}

async function inputs() {
  const dir = await tempDir();
  await execa('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', join(dir, 'key')]);
  await writeFile(join(dir, 'passphrase'), 'bootstrap-passphrase\n', { mode: 0o600 });
  await writeFile(join(dir, 'known_hosts'), '');
  return dir;
}

describe('keylessgo unlock/status over an inventory', () => {
  it('skips a host already up, fails one that does not answer, exits 1, one JSON line per host', async () => {
    const dir = await inputs();
    const inventory = join(dir, 'hosts.yml');
    await writeFile(inventory, `all:\n  hosts:\n    up:\n      ansible_host: 127.0.0.1\n      ansible_port: ${await port('SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n')}\n    down:\n      ansible_host: 127.0.0.1\n      ansible_port: ${await port()}\n`);
    const result = await run('unlock', '--inventory', inventory, '--key', join(dir, 'key'), '--passphrase-file', join(dir, 'passphrase'), '--known-hosts', join(dir, 'known_hosts'), '--json');
    expect(result.exitCode).toBe(1);
    const records = result.stdout.split('\n').map((line) => JSON.parse(line) as Record<string, unknown>);
    expect(records.find((r) => r.host === 'up')).toMatchObject({ result: 'skipped', summary: 'already up (OpenSSH answers)' });
    expect(records.find((r) => r.host === 'down')).toMatchObject({ result: 'failed', error: expect.stringMatching(/^no SSH server answers on 127\.0\.0\.1:\d+: connection refused \(5 attempts\)$/) });
    expect(result.stderr).toMatch(/^up: reading the SSH banner$/m);
    expect(result.stderr).not.toContain('bootstrap-passphrase');

    // The failed host goes to the retry file beside the inventory; --limit @FILE runs only it.
    const retry = join(dir, 'hosts.unlock.retry');
    expect(await readFile(retry, 'utf8')).toBe('down\n');
    expect(result.stderr).toContain(`retry file: ${retry} (1 host(s) not done); only those: --limit @${retry}`);
    const downPort = records.find((r) => r.host === 'down')!.port as number;
    await port('SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n', downPort);
    const again = await run('unlock', '--inventory', inventory, '--limit', `@${retry}`, '--key', join(dir, 'key'), '--passphrase-file', join(dir, 'passphrase'), '--known-hosts', join(dir, 'known_hosts'), '--json');
    expect(again.stdout.split('\n').map((line) => JSON.parse(line) as Record<string, unknown>)).toEqual([expect.objectContaining({ host: 'down', result: 'skipped' })]);
    expect(again.exitCode).toBe(0);
    // Nothing left to retry: the old file is gone.
    await expect(readFile(retry, 'utf8')).rejects.toThrow(/ENOENT/);
  }, 60_000);

  it('--limit narrows the inventory; all skipped exits 0 with the summary table', async () => {
    const dir = await inputs();
    const inventory = join(dir, 'hosts.ini');
    await writeFile(inventory, `[up]\nup1 ansible_host=127.0.0.1 ansible_port=${await port('SSH-2.0-OpenSSH_9.2\r\n')}\n[down]\ndown1 ansible_host=127.0.0.1 ansible_port=${await port()}\n`);
    const result = await run('unlock', '--inventory', inventory, '--limit', '!down', '--key', join(dir, 'key'), '--passphrase-file', join(dir, 'passphrase'), '--known-hosts', join(dir, 'known_hosts'));
    expect(result.exitCode).toBe(0);
    expect(result.stdout).toMatch(/^host +address +result +time +details\nup1 +127\.0\.0\.1:\d+ +skipped +\d+\.\d s +already up \(OpenSSH answers\)$/);
  }, 60_000);

  it.each([
    [['status', '--inventory', 'INV', '--key', 'KEY'], /^error: .*hosts\.ini:2: expected key=value, found "oops"$/m],
    [['unlock', '--host', 'h', '--key', 'KEY', '--passphrase-file', 'PASS'], /error: give --manifest FILE .* or --known-hosts FILE/],
    [['status', '--host', 'h', '--inventory', 'INV', '--key', 'KEY'], /error: give either --host or --inventory, not both/],
    [['status', '--host', 'h', '--key', 'KEY', '--parallel', '0'], /--parallel must be a whole number from 1/],
    [['status', '--inventory', 'INV', '--limit', '@nothing.retry', '--key', 'KEY'], /^error: --limit @nothing\.retry: cannot read the retry file: no such file$/m],
  ])('%j exits 2', async (args, message) => {
    const dir = await inputs();
    await writeFile(join(dir, 'hosts.ini'), '[web]\nh1 oops\n');
    const result = await run(...args.map((a) => ({ INV: join(dir, 'hosts.ini'), KEY: join(dir, 'key'), PASS: join(dir, 'passphrase') })[a] ?? a));
    expect(result.stderr).toMatch(message);
    expect(result.exitCode).toBe(2);
  }, 60_000);
});
