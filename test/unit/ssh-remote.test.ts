/**
 * SshRemote when the connection drops (sshd killed, network gone) in the middle of a command
 * or between commands: each command fails at once instead of waiting for an answer that
 * never comes. The SSH server here is ssh2's own, on 127.0.0.1.
 */
import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import ssh2 from 'ssh2';
import { afterEach, describe, expect, it } from 'vitest';
import { SshRemote } from '../../src/nbde/remote.js';

const { Server, utils } = ssh2;
let server: InstanceType<typeof Server> | undefined;

afterEach(() => server?.close());

/** Answers `true` with exit status 0; on `drop` it closes the client's connection without an answer. */
async function startServer(): Promise<number> {
  const hostKey = utils.generateKeyPairSync('ed25519').private;
  server = new Server({ hostKeys: [hostKey] }, (client) => {
    client.on('authentication', (context) => context.accept());
    client.on('ready', () => {
      client.on('session', (accept) => {
        accept().on('exec', (acceptExec, _reject, info) => {
          const channel = acceptExec();
          if (info.command === 'drop') {
            client.end();
            return;
          }
          channel.exit(0);
          channel.end();
        });
      });
    });
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return (server.address() as AddressInfo).port;
}

describe('SshRemote', () => {
  it('fails a command whose connection drops, and every command after it, at once', async () => {
    const port = await startServer();
    const key = utils.generateKeyPairSync('ed25519').private;
    const remote = await SshRemote.connect('127.0.0.1', port, { type: 'publickey', username: 'root', key }, new AbortController().signal);
    try {
      expect(await remote.run('true')).toEqual({ output: '', exitCode: 0 });
      const started = performance.now();
      await expect(remote.run('drop')).rejects.toThrow(/SSH connection to 127\.0\.0\.1:\d+ was lost/);
      await expect(remote.run('true')).rejects.toThrow(/was lost/);
      expect(performance.now() - started).toBeLessThan(5000);
    } finally {
      remote.close();
    }
  });
});
