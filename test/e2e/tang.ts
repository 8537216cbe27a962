/**
 * A Tang server for tests, on the host's loopback only. tangd speaks HTTP on stdin/stdout,
 * so socat listens on 127.0.0.1 and runs one tangd per connection; a QEMU guest with user
 * networking reaches it as 10.0.2.2. Every request is logged to show when Tang was asked.
 */
import { execa, type ResultPromise } from 'execa';
import { mkdir, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { join } from 'node:path';

export interface TangFixture {
  keyDir: string;
  port: number;
  /** The URL as a QEMU user-networking guest reaches the host's loopback. */
  guestUrl: string;
  /** The advertisement saved at setup: builds bind offline with it. */
  advFile: string;
  logFile: string;
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
  });
}

/** Creates Tang keys and saves the advertisement without any listener (tangd on a pipe). */
export async function createTang(dir: string): Promise<TangFixture> {
  const keyDir = join(dir, 'tang-keys');
  await mkdir(keyDir);
  await execa('/usr/libexec/tangd-keygen', [keyDir]);
  const { stdout } = await execa('/usr/libexec/tangd', [keyDir], { input: 'GET /adv HTTP/1.1\r\nHost: tang\r\n\r\n', stderr: 'ignore' });
  const body = stdout.slice(stdout.indexOf('\r\n\r\n') + 4);
  const advFile = join(dir, 'tang.adv');
  await writeFile(advFile, body);
  const port = await freePort();
  return { keyDir, port, guestUrl: `http://10.0.2.2:${port}`, advFile, logFile: join(dir, 'tang.log') };
}

/** Serves the fixture's keys on 127.0.0.1:port until stopped. */
export function serveTang(tang: TangFixture): { process: ResultPromise; stop: () => Promise<void> } {
  const child = execa('socat', [`TCP-LISTEN:${tang.port},bind=127.0.0.1,reuseaddr,fork`, `SYSTEM:exec /usr/libexec/tangd ${tang.keyDir} 2>>${tang.logFile}`], { reject: false });
  return {
    process: child,
    stop: async () => {
      child.kill('SIGTERM');
      await child;
    },
  };
}
