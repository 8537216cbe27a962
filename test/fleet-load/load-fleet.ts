/**
 * A fleet of stand-in machines for the fleet load test (test/e2e/fleet-load.test.ts) and
 * `make bench`: each host a real dropbear or OpenSSH daemon on its own 127.0.0.1 port with
 * its own host keys, run by machine.sh in a mount namespace of its own. Hosts "at dropbear"
 * run a stand-in cryptroot-unlock that checks the passphrase and then starts the host's
 * booted OpenSSH on the same port; booted hosts answer `keylessgo status`'s commands from
 * stand-in tools (bin/) that read per-host state files. Faults are spread over the fleet:
 * silent hosts (dropbear stopped: connections accepted, nothing said), a reset mid-session,
 * a changed host key, a refused passphrase, hosts 2 s late.
 *
 * Stand-ins are for load only: what a machine really does is proven in QEMU (fleet.test.ts).
 * Needs root (mount namespaces, sshd), dropbear-bin and openssh-server (install-deps.sh);
 * nothing listens beyond 127.0.0.1, and stop() leaves no process or file behind.
 */
import { execa } from 'execa';
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { access, mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { constants, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { HostRecord } from '../../src/fleet/run.js';
import { ed25519KeyPair } from '../../src/ssh/client.js';

const HERE = import.meta.dirname;
const CLI = resolve(HERE, '../../dist/cli.js');
const MACHINE = join(HERE, 'machine.sh');
const STANDINS = join(HERE, 'bin');

const FAULTS = ['silent', 'reset', 'changed-host-key', 'refused-passphrase', 'late'] as const;
export type Fault = (typeof FAULTS)[number];

export interface LoadHost {
  /** The inventory name: node001, node002, ... */
  name: string;
  port: number;
  /** The host's state directory (state, fault, passphrase, keys, sshd_config, log). */
  dir: string;
  /** Past the initramfs when the fleet starts: OpenSSH answers. */
  booted: boolean;
  fault?: Fault;
  /** Its Tang is unreachable: `clevis luks pass` fails on it. */
  tangDown: boolean;
}

/**
 * Which host gets what: in every 20 hosts one of each fault and one already booted, spread
 * apart; every 7th host's Tang is down.
 */
function planHost(index: number): Pick<LoadHost, 'booted' | 'fault' | 'tangDown'> {
  const slot = index % 20;
  const fault = FAULTS[[2, 5, 8, 11, 14].indexOf(slot)];
  return { booted: slot === 17, ...(fault ? { fault } : {}), tangDown: index % 7 === 3 };
}

/** A LUKS2 JSON header as `cryptsetup luksDump --dump-json-metadata` prints it: bootstrap slot 0, a Tang binding in slot 1. */
function luksHeader(): string {
  const signing = { kty: 'EC', crv: 'P-256', x: 'f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU', y: 'x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0', key_ops: ['verify'] };
  const clevis = { alg: 'ECDH-ES', clevis: { pin: 'tang', tang: { url: 'http://tang.example', adv: { keys: [signing, { kty: 'EC', key_ops: ['deriveKey'] }] } } } };
  return JSON.stringify({
    keyslots: { '0': { type: 'luks2' }, '1': { type: 'luks2' } },
    tokens: { '0': { type: 'clevis', keyslots: ['1'], jwe: { protected: Buffer.from(JSON.stringify(clevis)).toString('base64url') } } },
    digests: { '0': { type: 'pbkdf2', keyslots: ['0', '1'], salt: randomBytes(32).toString('base64'), digest: randomBytes(32).toString('base64') } },
  });
}

/** Free 127.0.0.1 ports: each bound once by the kernel's choice, then released for a daemon. */
async function freePorts(count: number): Promise<number[]> {
  const servers = await Promise.all(
    Array.from({ length: count }, () => new Promise<ReturnType<typeof createServer>>((resolve) => {
      const server = createServer();
      server.listen(0, '127.0.0.1', () => resolve(server));
    })),
  );
  const ports = servers.map((server) => (server.address() as { port: number }).port);
  await Promise.all(servers.map((server) => new Promise((resolve) => server.close(resolve))));
  return ports;
}

/** Ports with a socket listening on 127.0.0.1 (/proc/net/tcp, state 0A). */
async function listeningPorts(): Promise<Set<number>> {
  const table = await readFile('/proc/net/tcp', 'utf8');
  const ports = new Set<number>();
  for (const line of table.split('\n').slice(1)) {
    const [, local, , state] = line.trim().split(/\s+/);
    if (state === '0A' && local?.startsWith('0100007F:')) ports.add(parseInt(local.slice(9), 16));
  }
  return ports;
}

/** Runs `work` on every item, `width` at a time. */
async function eachLimited<T>(items: readonly T[], width: number, work: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(Array.from({ length: width }, async () => {
    while (next < items.length) await work(items[next++]!);
  }));
}

async function dropbearKey(file: string): Promise<string> {
  await execa('dropbearkey', ['-t', 'ed25519', '-f', file]);
  const { stdout } = await execa('dropbearkey', ['-y', '-f', file]);
  return stdout.split('\n').find((line) => line.startsWith('ssh-ed25519 '))!.split(' ').slice(0, 2).join(' ');
}

function sshdConfig(dir: string, port: number, authorizedKeys: string): string {
  return `${[
    `ListenAddress 127.0.0.1:${port}`,
    `HostKey ${dir}/ssh_host_ed25519_key`,
    `PidFile ${dir}/daemon.pid`,
    `AuthorizedKeysFile ${authorizedKeys}`,
    // The fleet's directory is a temporary one: its modes are not root's home's.
    'StrictModes no',
    'UsePAM no',
    'PermitRootLogin prohibit-password',
    'PasswordAuthentication no',
    'KbdInteractiveAuthentication no',
    'AllowTcpForwarding no',
    'X11Forwarding no',
    'PrintMotd no',
    'PrintLastLog no',
    'UseDNS no',
    'LogLevel ERROR',
    // Every command keylessgo sends runs in a real shell, with the stand-in tools first in PATH.
    `ForceCommand KEYLESSGO_STANDIN_DIR=${dir} PATH=${STANDINS}:/usr/bin:/bin exec sh -c "$SSH_ORIGINAL_COMMAND"`,
  ].join('\n')}\n`;
}

export class LoadFleet {
  private readonly machines = new Map<string, ChildProcess>();

  private constructor(
    readonly dir: string,
    readonly hosts: LoadHost[],
    /** The inventory (YAML), a known_hosts with each host's dropbear and OpenSSH keys, the SSH key, the bootstrap passphrase. */
    readonly files: { inventory: string; knownHosts: string; key: string; passphrase: string },
  ) {}

  /** Writes every host's state and starts its machine (all but the late ones, see powerOnLate); resolves once they listen. */
  static async start(count: number): Promise<LoadFleet> {
    if (process.getuid?.() !== 0) throw new Error('the stand-in machines need root (mount namespaces, sshd)');
    for (const tool of ['/usr/sbin/sshd', '/usr/sbin/dropbear']) {
      await access(tool).catch(() => {
        throw new Error(`${tool} is missing: scripts/install-deps.sh installs dropbear-bin and openssh-server`);
      });
    }
    const dir = await mkdtemp(join(tmpdir(), 'keylessgo-fleet-load-'));
    const fleet = new LoadFleet(dir, [], { inventory: join(dir, 'inventory.yml'), knownHosts: join(dir, 'known_hosts'), key: join(dir, 'id_ed25519'), passphrase: join(dir, 'passphrase') });
    try {
      await fleet.prepare(count);
      await fleet.powerOn(fleet.hosts.filter((host) => host.fault !== 'late'));
      for (const host of fleet.hosts.filter((h) => h.fault === 'silent')) process.kill(await fleet.daemonPid(host), 'SIGSTOP');
      return fleet;
    } catch (error) {
      await fleet.stop();
      throw error;
    }
  }

  private async prepare(count: number): Promise<void> {
    const { dir, files } = this;
    // dropbear reads root's authorized_keys: machine.sh mounts `dir/root` on /root.
    const authorizedKeys = join(dir, 'root/.ssh/authorized_keys');
    await mkdir(join(dir, 'root/.ssh'), { recursive: true, mode: 0o700 });
    const client = ed25519KeyPair();
    await writeFile(files.key, client.private, { mode: 0o600 });
    await writeFile(authorizedKeys, `${client.public}\n`, { mode: 0o600 });
    const passphrase = randomBytes(18).toString('base64url');
    await writeFile(files.passphrase, passphrase, { mode: 0o600 });
    const ports = await freePorts(count);
    const hosts = ports.map((port, index): LoadHost => {
      const name = `node${String(index + 1).padStart(3, '0')}`;
      return { name, port, dir: join(dir, name), ...planHost(index) };
    });
    const knownHosts = new Map<string, string[]>();
    await eachLimited(hosts, 8, async (host) => {
      await mkdir(host.dir);
      const dropbearPublic = await dropbearKey(join(host.dir, 'dropbear_host_key'));
      const openssh = ed25519KeyPair();
      await writeFile(join(host.dir, 'ssh_host_ed25519_key'), openssh.private, { mode: 0o600 });
      // A changed host key: known_hosts vouches for another one than dropbear shows.
      const vouched = host.fault === 'changed-host-key' ? ed25519KeyPair().public : dropbearPublic;
      knownHosts.set(host.name, [vouched, openssh.public].map((key) => `[127.0.0.1]:${host.port} ${key.split(' ').slice(0, 2).join(' ')}`));
      const state: Record<string, string> = {
        port: String(host.port),
        state: host.booted ? 'up' : 'locked',
        fault: host.fault ?? 'none',
        // A refused passphrase: this machine opens with another one (its recovery passphrase, say).
        passphrase: host.fault === 'refused-passphrase' ? randomBytes(18).toString('base64url') : passphrase,
        tang: host.tangDown ? 'down' : 'up',
        'luks.json': luksHeader(),
        sshd_config: sshdConfig(host.dir, host.port, authorizedKeys),
        ...(host.fault === 'reset' ? { 'reset-pending': '' } : {}),
      };
      for (const [file, text] of Object.entries(state)) await writeFile(join(host.dir, file), text, { mode: 0o600 });
    });
    this.hosts.push(...hosts);
    await writeFile(files.knownHosts, `${hosts.flatMap((host) => knownHosts.get(host.name)!).join('\n')}\n`);
    const entries = hosts.map((host) => `        ${host.name}: { ansible_host: 127.0.0.1, ansible_port: ${host.port} }`);
    await writeFile(files.inventory, `all:\n  children:\n    fleet:\n      hosts:\n${entries.join('\n')}\n`);
  }

  /** Starts the machines of `hosts`; resolves once each one's daemon listens (late ones: not waited for). */
  private async powerOn(hosts: readonly LoadHost[]): Promise<void> {
    for (const host of hosts) {
      // A process group of its own (detached): stop() ends the machine with every daemon it started.
      const machine = spawn('unshare', ['--mount', '--propagation', 'private', '--', 'sh', '-c', 'mount --bind "$1/root" /root && mount -t tmpfs -o mode=755 tmpfs /run && mkdir /run/sshd && exec sh "$2" "$3"', '-', this.dir, MACHINE, host.dir], { detached: true, stdio: 'ignore' });
      this.machines.set(host.name, machine);
    }
    const waiting = new Set(hosts.filter((host) => host.fault !== 'late').map((host) => host.port));
    for (let polls = 0; waiting.size > 0; polls++) {
      if (polls === 300) throw new Error(`${waiting.size} stand-in machine(s) did not listen within 30 s, e.g. port ${[...waiting][0]}`);
      await sleep(100);
      for (const port of await listeningPorts()) waiting.delete(port);
    }
  }

  /** The late hosts' machines: each daemon answers 2 s after (call it as a run starts). */
  powerOnLate(): Promise<void> {
    return this.powerOn(this.hosts.filter((host) => host.fault === 'late'));
  }

  private async daemonPid(host: LoadHost): Promise<number> {
    return Number((await readFile(join(host.dir, 'daemon.pid'), 'utf8')).trim());
  }

  /** A silent host's dropbear goes on (it answers the connections queued meanwhile). */
  async resume(host: LoadHost): Promise<void> {
    process.kill(await this.daemonPid(host), 'SIGCONT');
  }

  /** Whether the host's next cryptroot-unlock still drops the connection (a "reset" host not yet tried). */
  async resetPending(host: LoadHost): Promise<boolean> {
    return readFile(join(host.dir, 'reset-pending')).then(() => true, () => false);
  }

  /** What answers on the host's port: dropbear (locked) or OpenSSH (up). */
  async state(host: LoadHost): Promise<'locked' | 'up'> {
    return (await readFile(join(host.dir, 'state'), 'utf8')).trim() as 'locked' | 'up';
  }

  /** Ends every machine (its process group: machine.sh and its daemon), then removes the directory. */
  async stop(): Promise<void> {
    for (const machine of this.machines.values()) {
      try {
        process.kill(-machine.pid!, 'SIGKILL');
      } catch {
        // Already gone.
      }
    }
    this.machines.clear();
    await rm(this.dir, { recursive: true, force: true });
  }
}

export interface CliRun {
  exitCode: number;
  /** One per --json line, in the order the hosts finished. */
  records: Array<HostRecord<unknown>>;
  stderr: string;
  seconds: number;
  /** The CLI process's peak resident set (VmHWM) and most open file descriptors, sampled every 50 ms. */
  peakRssBytes: number;
  peakFds: number;
}

async function sample(pid: number): Promise<{ rssBytes: number; fds: number } | undefined> {
  try {
    const status = await readFile(`/proc/${pid}/status`, 'utf8');
    return { rssBytes: Number(/^VmHWM:\s+(\d+) kB/m.exec(status)?.[1] ?? 0) * 1024, fds: (await readdir(`/proc/${pid}/fd`)).length };
  } catch {
    return undefined;
  }
}

/** Runs `keylessgo ARGS` (with --json), and with `interruptAfter` sends it SIGINT once that many hosts have their record. */
export async function runKeylessgo(args: readonly string[], options: { interruptAfter?: number; cwd?: string } = {}): Promise<CliRun> {
  const started = performance.now();
  const child = spawn('node', [CLI, ...args], { cwd: options.cwd, stdio: ['ignore', 'pipe', 'pipe'] });
  const records: Array<HostRecord<unknown>> = [];
  let stdout = '';
  let stderr = '';
  let peakRssBytes = 0;
  let peakFds = 0;
  let interrupted = false;
  child.stdout.on('data', (chunk: Buffer) => {
    stdout += chunk.toString();
    const lines = stdout.split('\n');
    stdout = lines.pop()!;
    for (const line of lines.filter(Boolean)) records.push(JSON.parse(line) as HostRecord<unknown>);
    // One Ctrl-C, as an operator presses it.
    if (!interrupted && options.interruptAfter !== undefined && records.length >= options.interruptAfter) {
      interrupted = true;
      child.kill('SIGINT');
    }
  });
  child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const exited = new Promise<number>((resolve) => child.on('close', (code, signal) => resolve(code ?? 128 + constants.signals[signal!])));
  let done = false;
  void exited.then(() => (done = true));
  while (!done) {
    const now = await sample(child.pid!);
    if (now) {
      peakRssBytes = Math.max(peakRssBytes, now.rssBytes);
      peakFds = Math.max(peakFds, now.fds);
    }
    await Promise.race([exited, sleep(50)]);
  }
  return { exitCode: await exited, records, stderr, seconds: (performance.now() - started) / 1000, peakRssBytes, peakFds };
}
