/**
 * A Tang server for tests, reachable only by the test VM: QEMU's guestfwd runs one tangd per
 * connection the guest opens to 10.0.2.100:80 (tangd speaks HTTP on stdin/stdout), so
 * nothing listens on the host at all. Keys are made at test time.
 */
import { execa } from 'execa';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

export interface TangFixture {
  keyDir: string;
  /** The URL as the guest reaches the guestfwd'ed tangd. */
  guestUrl: string;
  /** The advertisement saved at setup: builds bind offline with it. */
  advFile: string;
}

export const TANG_GUEST_URL = 'http://10.0.2.100';

/** Creates Tang keys and saves the advertisement (tangd on a pipe, no listener). */
export async function createTang(dir: string): Promise<TangFixture> {
  const keyDir = join(dir, 'tang-keys');
  await mkdir(keyDir);
  await execa('/usr/libexec/tangd-keygen', [keyDir]);
  const { stdout } = await execa('/usr/libexec/tangd', [keyDir], { input: 'GET /adv HTTP/1.1\r\nHost: tang\r\n\r\n', stderr: 'ignore' });
  const advFile = join(dir, 'tang.adv');
  await writeFile(advFile, stdout.slice(stdout.indexOf('\r\n\r\n') + 4));
  return { keyDir, guestUrl: TANG_GUEST_URL, advFile };
}

/** Epoch seconds of the connections a test Tang logged (`<epoch> served|refused|silent`, see src/qemu/vm.ts), of one kind or all. */
export function connectionTimes(log: string, what?: 'served' | 'refused' | 'silent'): number[] {
  return [...log.matchAll(/^(\d+\.\d+) (served|refused|silent)$/gm)].filter((m) => !what || m[2] === what).map((m) => Number(m[1]));
}
