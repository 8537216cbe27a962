/**
 * Which process owns a build's things (work tree, secret store, cache lock), so that a later
 * build can tell leftovers of a dead build from the things of a live one. A PID alone is not
 * enough: after a reboot or a long time it names another process. The kernel's start time of
 * the process (/proc/PID/stat, field 22) makes the pair unique.
 */
import { chmod, mkdtemp, readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface Owner {
  pid: number;
  /** Clock ticks after boot at which the process started; '' where /proc does not tell. */
  startTime: string;
}

/** The file in each owned directory naming its owner. */
export const OWNER_FILE = '.keylessgo-owner';
/** Set in the build's environment: its child processes (mmdebstrap, chroot) carry it, so orphans can be found. */
export const OWNER_ENV = 'KEYLESSGO_BUILD_OWNER';

export async function processStartTime(pid: number): Promise<string | undefined> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => undefined);
  // The command name (field 2) may contain spaces and parentheses: count fields after its closing one.
  return stat?.slice(stat.lastIndexOf(')') + 2).split(' ')[19];
}

let self: Owner | undefined;
export async function currentOwner(): Promise<Owner> {
  self ??= { pid: process.pid, startTime: (await processStartTime(process.pid)) ?? '' };
  return self;
}

/** "PID START": the form lock files, owner files and the environment marker use. */
export function formatOwner(owner: Owner): string {
  return `${owner.pid} ${owner.startTime}`.trim();
}

/** Parses formatOwner's text; a bare PID (older lock files) parses with an empty start time. */
export function parseOwner(text: string): Owner | undefined {
  const [pid, startTime = ''] = text.trim().split(/\s+/);
  const number = Number(pid);
  return Number.isInteger(number) && number > 0 ? { pid: number, startTime } : undefined;
}

/** Whether the owner still runs: its PID exists and, if known, started when it did. */
export async function ownerAlive(owner: Owner): Promise<boolean> {
  const startTime = await processStartTime(owner.pid);
  if (startTime === undefined) return false;
  return owner.startTime === '' || owner.startTime === startTime;
}

/** Marks `dir` as owned by this process. */
export async function markOwned(dir: string): Promise<void> {
  await writeFile(join(dir, OWNER_FILE), `${formatOwner(await currentOwner())}\n`, { mode: 0o600 });
}

/**
 * A new 0700 directory `$TMPDIR/<prefix>XXXXXX` marked as this process's: if the process is
 * killed before it removes it, the next build (or `cache prune`) finds the owner gone and reaps it.
 */
export async function ownedTempDir(prefix: string): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), prefix));
  await chmod(dir, 0o700);
  await markOwned(dir);
  return dir;
}

/** Marks every process this one starts from now on (OWNER_ENV), so a reaper can find them if this one is killed. */
export async function markChildProcesses(): Promise<void> {
  process.env[OWNER_ENV] = formatOwner(await currentOwner());
}

export async function readOwner(dir: string): Promise<Owner | undefined> {
  const text = await readFile(join(dir, OWNER_FILE), 'utf8').catch(() => undefined);
  return text === undefined ? undefined : parseOwner(text);
}
