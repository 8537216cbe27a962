/**
 * SshRemote when the connection drops (sshd killed, network gone) in the middle of a command
 * or between commands: each command fails at once instead of waiting for an answer that
 * never comes; probeSshServer when connections close before the banner. The SSH server
 * here is ssh2's own, on 127.0.0.1.
 */
import { once } from 'node:events';
import { connect, createServer } from 'node:net';
import { writeFile } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import ssh2 from 'ssh2';
import { afterEach, describe, expect, it } from 'vitest';
import { probeSshServer, RETRY_ATTEMPTS } from '../../src/fleet/connect.js';
import { enrollCommand, rebindCommand } from '../../src/nbde/enroll-command.js';
import { SshRemote } from '../../src/nbde/remote.js';
import { ed25519KeyPair, exec, openSession, probeBanner } from '../../src/ssh/client.js';
import { sshFingerprint } from '../../src/recipe/authorized-keys.js';
import { captureLogger, tempDir } from './helpers.js';

const { Server } = ssh2;
let server: InstanceType<typeof Server> | undefined;

afterEach(() => server?.close());

/** Answers `true` with exit status 0; on `drop` it closes the client's connection without an answer. */
async function startServer(): Promise<number> {
  const hostKey = ed25519KeyPair().private;
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
    const key = ed25519KeyPair().private;
    const remote = await SshRemote.connect({ name: 'test', address: '127.0.0.1', port, user: 'root' }, key, new AbortController().signal);
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

  it('exec on a connection already closed rejects at once and leaves no timer behind (it kept a finished enroll alive)', async () => {
    const port = await startServer();
    const options = { host: '127.0.0.1', timeoutMs: 60 * 60 * 1000, signal: new AbortController().signal };
    const { client } = await openSession(port, { type: 'publickey', username: 'root', key: ed25519KeyPair().private }, options);
    client.end();
    await once(client, 'close');
    const timers = () => process.getActiveResourcesInfo().filter((kind) => kind === 'Timeout').length;
    const before = timers();
    await expect(exec(client, 'true', options)).rejects.toThrow(/Not connected/);
    expect(timers()).toBe(before);
  });
});

/** An SSH server that logs every login attempt and command, answering each command with exit 1 and no output. */
async function startRecordingServer(hostKey: string): Promise<{ port: number; seen: string[] }> {
  const seen: string[] = [];
  server = new Server({ hostKeys: [hostKey] }, (client) => {
    // A client that refuses the host key disconnects during key exchange.
    client.on('error', () => undefined);
    client.on('authentication', (context) => {
      seen.push(`login ${context.username}`);
      context.accept();
    });
    client.on('ready', () => {
      client.on('session', (accept) => {
        accept().on('exec', (acceptExec, _reject, info) => {
          seen.push(info.command);
          const channel = acceptExec();
          channel.exit(1);
          channel.end();
        });
      });
    });
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return { port: (server.address() as AddressInfo).port, seen };
}

describe('enroll and rebind check the booted system\'s host key', () => {
  async function setup() {
    const dir = await tempDir();
    const hostKey = ed25519KeyPair();
    const { port, seen } = await startRecordingServer(hostKey.private);
    const keyFile = join(dir, 'id');
    await writeFile(keyFile, ed25519KeyPair().private, { mode: 0o600 });
    const passphraseFile = join(dir, 'passphrase');
    await writeFile(passphraseFile, 'bootstrap secret', { mode: 0o600 });
    const knownHosts = async (name: string, publicKey: string) => {
      const file = join(dir, `known_hosts-${name}`);
      await writeFile(file, `[127.0.0.1]:${port} ${publicKey}\n`);
      return file;
    };
    const targets = [{ name: '127.0.0.1', address: '127.0.0.1', port, user: 'root', vars: {} }];
    const common = { keyFile, tangUrls: ['http://tang'], tangThps: ['sZIfPFzYp5tYmmV9xoZRmoV5EwvQjMvKuSk-wpa-SHg'], threshold: 1, trustFirstUse: false, json: true };
    const fingerprint = sshFingerprint(Buffer.from(hostKey.public.split(' ')[1]!, 'base64'));
    return { seen, targets, common, passphraseFile, fingerprint, listed: await knownHosts('listed', hostKey.public), other: await knownHosts('other', ed25519KeyPair().public) };
  }

  it('refuses a host whose key --known-hosts or --host-key-fingerprint does not vouch for during key exchange: no login, no command, no passphrase', async () => {
    const { seen, targets, common, passphraseFile, other } = await setup();
    const { log } = captureLogger();
    const enrolled = await enrollCommand(targets, { ...common, knownHosts: other, passphraseFile, dropbear: 'keep', log });
    expect(enrolled.exitCode).toBe(1);
    expect(enrolled.records[0]).toMatchObject({ result: 'failed', error: expect.stringMatching(/^refused, nothing sent: host key ssh-ed25519 SHA256:\S+ is not in .*known_hosts-other/) });
    const rebound = await rebindCommand(targets, { ...common, hostKeyFingerprint: 'SHA256:someOtherKey', log });
    expect(rebound.records[0]).toMatchObject({ result: 'failed', error: expect.stringMatching(/^refused, nothing sent: .*--host-key-fingerprint SHA256:someOtherKey/) });
    expect(seen).toEqual([]);
  });

  it('goes on with a host the file vouches for, and warns when nothing checks the key', async () => {
    const { seen, targets, common, passphraseFile, listed, fingerprint } = await setup();
    const checked = captureLogger();
    const enrolled = await enrollCommand(targets, { ...common, knownHosts: listed, passphraseFile, dropbear: 'keep', log: checked.log });
    // The server answers every command with exit 1: enroll stops at its first one, after logging in.
    expect(enrolled.records[0]).toMatchObject({ result: 'failed', error: expect.stringMatching(/find the root LUKS device/) });
    expect(seen).toEqual(expect.arrayContaining(['login root', 'findmnt -no SOURCE /']));
    expect(checked.lines.join('\n')).toContain(`host key ssh-ed25519 ${fingerprint} (vouched for by ${listed})`);
    const byFingerprint = captureLogger();
    await rebindCommand(targets, { ...common, hostKeyFingerprint: fingerprint, log: byFingerprint.log });
    expect(byFingerprint.lines.join('\n')).toContain('(vouched for by --host-key-fingerprint)');
    const unchecked = captureLogger();
    await rebindCommand(targets, { ...common, log: unchecked.log });
    expect(unchecked.lines.join('\n')).toMatch(/warning: .*host key ssh-ed25519 \S+ NOT checked \(no --known-hosts or --host-key-fingerprint\)/);
  });
});

/**
 * A TCP front for an SSH server that ends its first `drops` connections at once, as a booting
 * machine's forward may: closed, or reset (`reset`).
 */
async function flakyFront(sshPort: number, drops: number, reset = false): Promise<{ port: number; connections: () => number; close: () => void }> {
  let connections = 0;
  const front = createServer((socket) => {
    connections++;
    if (connections <= drops) {
      if (reset) socket.resetAndDestroy();
      else socket.destroy();
      return;
    }
    const upstream = connect(sshPort, '127.0.0.1');
    socket.pipe(upstream).pipe(socket);
    const end = () => {
      socket.destroy();
      upstream.destroy();
    };
    socket.on('error', end).on('close', end);
    upstream.on('error', end).on('close', end);
  });
  front.listen(0, '127.0.0.1');
  await once(front, 'listening');
  return { port: (front.address() as AddressInfo).port, connections: () => connections, close: () => front.close() };
}

describe('probeSshServer', () => {
  const target = (port: number) => ({ name: 'node', address: '127.0.0.1', port, user: 'root', vars: {} });

  it('asks again when connections close before the banner (unlock and status decide on one probe)', async () => {
    const front = await flakyFront(await startServer(), 2);
    try {
      expect(await probeSshServer(target(front.port), RETRY_ATTEMPTS)).toMatchObject({ server: 'other', banner: expect.stringMatching(/^SSH-2\.0-/) });
      expect(front.connections()).toBe(3);
    } finally {
      front.close();
    }
  });

  it('says none after its attempts, and probes once where a loop polls anyway', async () => {
    const front = await flakyFront(await startServer(), 100);
    try {
      expect(await probeSshServer(target(front.port), RETRY_ATTEMPTS)).toEqual({ server: 'none', why: `connection closed before the SSH banner (${RETRY_ATTEMPTS} attempts)` });
      expect(front.connections()).toBe(RETRY_ATTEMPTS);
      expect(await probeSshServer(target(front.port))).toEqual({ server: 'none', why: 'connection closed before the SSH banner' });
      expect(front.connections()).toBe(RETRY_ATTEMPTS + 1);
    } finally {
      front.close();
    }
  }, 30_000);
});

describe('probeBanner', () => {
  it('says why no banner came: refused, or accepted and silent; and stops at once when interrupted', async () => {
    const silent = createServer(() => undefined);
    silent.listen(0, '127.0.0.1');
    await once(silent, 'listening');
    const { port } = silent.address() as AddressInfo;
    try {
      expect(await probeBanner(port, 200, '127.0.0.1')).toEqual({ failure: 'connection accepted, no SSH banner within 0.2 s' });
      const controller = new AbortController();
      setTimeout(() => controller.abort(), 100);
      const started = performance.now();
      expect(await probeBanner(port, 60_000, '127.0.0.1', controller.signal)).toEqual({ failure: 'interrupted' });
      expect(performance.now() - started).toBeLessThan(5000);
    } finally {
      silent.close();
    }
    expect(await probeBanner(port, 1000, '127.0.0.1')).toEqual({ failure: 'connection refused' });
  });
});

describe('openSession', () => {
  const options = () => ({ host: '127.0.0.1', timeoutMs: 20_000, signal: new AbortController().signal });
  const auth = () => ({ type: 'publickey' as const, username: 'root', key: ed25519KeyPair().private });

  it('connects again after connections reset before the host key (nothing was sent)', async () => {
    const front = await flakyFront(await startServer(), 2, true);
    try {
      const { client } = await openSession(front.port, auth(), options());
      client.end();
      expect(front.connections()).toBe(3);
    } finally {
      front.close();
    }
  });

  it('never connects again after refusing the host key', async () => {
    const { port, seen } = await startRecordingServer(ed25519KeyPair().private);
    const front = await flakyFront(port, 0);
    try {
      await expect(openSession(front.port, auth(), { ...options(), acceptHostKey: () => false })).rejects.toThrow();
      expect(front.connections()).toBe(1);
      expect(seen).toEqual([]);
    } finally {
      front.close();
    }
  });
});

describe('ed25519KeyPair', () => {
  it('gives only pairs ssh2 reads back (its generator fails on about 1 in 256)', () => {
    for (let i = 0; i < 1024; i++) {
      const pair = ed25519KeyPair();
      expect(ssh2.utils.parseKey(pair.private)).not.toBeInstanceOf(Error);
      expect(ssh2.utils.parseKey(pair.public)).not.toBeInstanceOf(Error);
    }
  });
});
