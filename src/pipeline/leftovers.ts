/**
 * Reaping what builds that died without cleaning up (SIGKILL, the OOM killer, a CI runner
 * cancelled hard) left behind: their processes still running (mmdebstrap, a chroot), loop
 * devices on their disk files, mounts inside their work trees, the trees themselves, their
 * secret stores and partial outputs. A directory is a dead build's only if its owner file
 * names a process that is gone (PID and start time), so a build running in parallel keeps
 * everything. Runs at the start of every build and in `keylessgo cache prune`.
 *
 * Host commands: losetup (list, detach), umount (through removeTree).
 */
import { readdir, readFile, readlink, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, sep } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { mountsUnder, removeTree } from '../host/mounts.js';
import type { HostRunner } from '../host/run.js';
import type { Logger } from '../log.js';
import { formatOwner, OWNER_ENV, ownerAlive, readOwner, type Owner } from '../base/owner.js';
import { wipeSecretDir } from '../base/secrets.js';

/** Beside the owner file in a work tree: the output directory, where the build's *.partial files are. */
const OUT_DIR_FILE = '.keylessgo-out-dir';
const KILL_WAIT_MS = 5000;

export async function recordOutDir(workDir: string, outDir: string): Promise<void> {
  await writeFile(join(workDir, OUT_DIR_FILE), outDir, { mode: 0o600 });
}

const inside = (path: string, dir: string) => path === dir || path.startsWith(dir + sep);

/** Processes chrooted into `dir`, and with an owner those started by it (its environment marker). */
async function orphans(dir: string, owner?: Owner): Promise<number[]> {
  const marker = owner && `${OWNER_ENV}=${formatOwner(owner)}\0`;
  const found: number[] = [];
  for (const name of (await readdir('/proc')).filter((n) => /^\d+$/.test(n))) {
    const pid = Number(name);
    const environ = marker ? await readFile(`/proc/${pid}/environ`, 'latin1').catch(() => '') : '';
    const root = await readlink(`/proc/${pid}/root`).catch(() => '');
    if ((marker && `${environ}\0`.includes(marker)) || inside(root, dir)) found.push(pid);
  }
  return found.filter((pid) => pid !== process.pid);
}

/**
 * A build's own work tree at its cleanup: an interrupted mmdebstrap leaves dpkg and its
 * children running in the chroot, and they keep the tree's mounts busy until killed.
 */
export async function removeWorkTree(host: HostRunner, dir: string): Promise<void> {
  await killAll(await orphans(dir));
  await removeTree(host, dir);
}

async function killAll(pids: number[]): Promise<void> {
  for (const pid of pids) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // Already gone.
    }
  }
  const deadline = Date.now() + KILL_WAIT_MS;
  while (Date.now() < deadline && (await Promise.all(pids.map((pid) => stat(`/proc/${pid}`).then(() => true, () => false)))).some(Boolean)) await sleep(100);
}

/** Loop devices and the files backing them (a deleted file's name loses losetup's " (deleted)"). */
async function loopDevices(host: HostRunner): Promise<Array<{ device: string; file: string }>> {
  const text = await host.run('losetup', ['--list', '--noheadings', '--raw', '--output', 'NAME,BACK-FILE']).catch(() => '');
  return text
    .split('\n')
    .map((line) => /^(\S+) (.+)$/.exec(line.trim()))
    .filter((match) => match !== null)
    .map((match) => ({ device: match[1]!, file: match[2]!.replace(/ \(deleted\)$/, '').replace(/\\x20/g, ' ') }));
}

interface OwnedDir {
  dir: string;
  owner: Owner;
  outDir?: string;
}

/** keylessgo-* directories in the temp dir that name an owner. */
async function ownedDirs(): Promise<OwnedDir[]> {
  const root = tmpdir();
  const names = (await readdir(root).catch(() => [] as string[])).filter((name) => name.startsWith('keylessgo-'));
  const owned: OwnedDir[] = [];
  for (const name of names) {
    const dir = join(root, name);
    const owner = await readOwner(dir);
    if (!owner) continue;
    const outDir = await readFile(join(dir, OUT_DIR_FILE), 'utf8').catch(() => undefined);
    owned.push({ dir, owner, outDir });
  }
  return owned;
}

/**
 * Reaps everything of dead builds; returns one line per thing removed (also logged). Failures
 * to remove one thing are warnings: the build that calls this must not fail on a stranger's mess.
 */
export async function reapDeadBuilds(host: HostRunner, log: Logger): Promise<string[]> {
  const removed: string[] = [];
  const note = (line: string) => {
    removed.push(line);
    log.info(`reaped: ${line}`);
  };
  const all = await ownedDirs();
  const live = new Set<string>();
  const dead: OwnedDir[] = [];
  for (const owned of all) {
    if (await ownerAlive(owned.owner)) {
      if (owned.outDir) live.add(owned.outDir);
    } else dead.push(owned);
  }
  for (const { dir, owner, outDir } of dead) {
    const what = `of dead build process ${owner.pid}`;
    try {
      const pids = await orphans(dir, owner);
      if (pids.length > 0) {
        await killAll(pids);
        note(`killed process ${pids.join(', ')} left running ${what}`);
      }
      // Another live build writing to the same directory keeps its *.partial files and loop devices.
      const partialsOurs = outDir !== undefined && !live.has(outDir);
      for (const { device, file } of await loopDevices(host)) {
        if (inside(file, dir) || (partialsOurs && inside(file, outDir) && file.endsWith('.partial'))) {
          await host.run('losetup', ['--detach', device]);
          note(`detached ${device} (${file}) ${what}`);
        }
      }
      if (partialsOurs) {
        for (const name of (await readdir(outDir).catch(() => [] as string[])).filter((n) => n.endsWith('.partial'))) {
          await rm(join(outDir, name), { force: true });
          note(`removed ${join(outDir, name)} ${what}`);
        }
      }
      const isSecretStore = /^keylessgo-secrets-/.test(dir.slice(dir.lastIndexOf(sep) + 1));
      const mounts = await mountsUnder(dir);
      if (isSecretStore) await wipeSecretDir(dir);
      else await removeTree(host, dir);
      for (const mount of mounts) note(`unmounted ${mount} ${what}`);
      note(`removed ${isSecretStore ? 'secret store' : 'work tree'} ${dir} ${what}`);
    } catch (error) {
      log.warn(`could not reap ${dir} ${what}: ${error instanceof Error ? error.message.split('\n')[0] : String(error)}`);
    }
  }
  return removed;
}
