/**
 * One throwaway QEMU VM: a qcow2 overlay over the image (the image is only ever read),
 * user-mode networking with a single forward from 127.0.0.1:<free port> to the guest's SSH
 * port, the serial console in a log file; optionally NICs connected to nothing in front of
 * that NIC (as on a server with several ports, one cabled), a config drive as a CD, Tang
 * servers only the guest reaches, and a TPM 2.0 (swtpm, its state in a directory).
 */
import { execa, type ResultPromise } from 'execa';
import { createWriteStream } from 'node:fs';
import { access, mkdir, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { InputError } from '../errors.js';
import type { HostRunner } from '../host/run.js';
import type { ImageFormat } from '../inspect/disk-format.js';
import type { Logger } from '../log.js';
import { GUEST_HOST } from '../ssh/client.js';

export type Accel = 'kvm' | 'tcg';
export const QEMU = 'qemu-system-x86_64';

/**
 * KVM runs the host CPU model. Under TCG, kvm64: a model without REP_GOOD and ERMS, so the
 * guest kernel clears and copies pages with plain moves instead of `rep stos`/`rep movs`.
 * On a busy host, guests with qemu64 (REP_GOOD) stalled for minutes in clear_page_rep (soft
 * lockups, then systemd device timeouts and emergency mode) in 6 of 14 boots measured here,
 * with 1 or 2 vCPUs (`max`, with ERMS, was worse still); with kvm64, none of 6 in the same period.
 * Plus the instructions TCG emulates that the guest's crypto wants: with AES-NI and PCLMULQDQ
 * the guest's dm-crypt runs aesni_intel instead of the generic C AES (`cryptsetup benchmark`,
 * aes-xts 512b, in the guest: encryption 7.7 → 50.8 MiB/s, decryption 25.4 → 51.0 MiB/s), which
 * is what an enrollment's re-encryption spends its time on; SSE4.2's crc32 serves ext4's
 * metadata checksums.
 */
export const TCG_CPU = 'kvm64,+aes,+pclmulqdq,+ssse3,+sse4.1,+sse4.2';

export function accelArgs(accel: Accel, cpus: number): string[] {
  const cpu = accel === 'kvm' ? 'host' : TCG_CPU;
  return ['-accel', accel, '-cpu', cpu, '-smp', String(cpus)];
}

export interface VmConfig {
  accel: Accel;
  cpus: number;
  memoryMiB: number;
  /** Machine type and firmware (see firmware.ts). */
  firmwareArgs: string[];
  overlay: string;
  /** Logical and physical sector size of the guest's disk (4096: a 4Kn disk). */
  sectorSize: number;
  hostPort: number;
  guestPort: number;
  serialLog: string;
  /** Tang server(s) only the guest reaches, each at its address (nothing listens on the host). */
  tang?: TangServer | readonly TangServer[];
  /** A TPM 2.0 (swtpm) whose state lives in this directory: the same directory is the same machine's TPM. */
  tpm?: { stateDir: string };
  /** NICs in all (default 1): the first nics-1 are connected to nothing, the last is the user network. */
  nics?: number;
  /** Forward to this guest address (a static one, e.g. from a config drive) instead of the one DHCP gives. */
  guestAddress?: string;
  /** An ISO 9660 image attached as a CD (e.g. a config drive). */
  cdrom?: string;
  /** Services on the host's loopback the guest reaches at an address of its own (e.g. an apt proxy). */
  hostServices?: readonly HostService[];
}

export interface HostService {
  guestAddress: string;
  guestPort: number;
  /** The port on 127.0.0.1. */
  hostPort: number;
}

/**
 * guestfwd options: each guest connection to the service's address is connected to
 * 127.0.0.1:hostPort by a socat of its own (a chardev target would be one connection, made
 * once when QEMU starts).
 */
export function hostServiceForwards(services: readonly HostService[] = []): string {
  return services.map((s) => `,guestfwd=tcp:${s.guestAddress}:${s.guestPort}-cmd:socat - TCP:${GUEST_HOST}:${s.hostPort}`).join('');
}

/** MAC of the user-network NIC: fixed, so that a config drive's network_data.json can name it; not one of QEMU's defaults (52:54:00:12:34:56 and up, which the other NICs get). */
export const USER_NIC_MAC = '52:54:00:6b:67:01';

/**
 * NICs connected to nothing come first (the kernel names them eth0, eth1, ...): socket
 * netdevs listening on ports nobody joins. Then the user-mode NIC with the SSH forward.
 */
export function nicArgs(config: Pick<VmConfig, 'nics' | 'hostPort' | 'guestPort' | 'guestAddress'>, deadPorts: number[], userOptions = ''): string[] {
  const nics = config.nics ?? 1;
  if (deadPorts.length !== nics - 1) throw new Error(`${nics} NICs need ${nics - 1} free ports, got ${deadPorts.length}`);
  const dead = deadPorts.flatMap((port, index) => ['-netdev', `socket,id=dead${index},listen=${GUEST_HOST}:${port}`, '-device', `virtio-net-pci,netdev=dead${index}`]);
  const forward = `hostfwd=tcp:${GUEST_HOST}:${config.hostPort}-${config.guestAddress ?? ''}:${config.guestPort}`;
  return [
    ...dead,
    // restrict=on: the guest reaches neither the host nor any other machine; the forward still works.
    '-netdev', `user,id=net0,restrict=on,${forward}${userOptions}`,
    '-device', `virtio-net-pci,netdev=net0,mac=${USER_NIC_MAC}`,
  ];
}

/** Where the guest finds the Tang server of `VmConfig.tang` (http, port 80), unless it names another address. */
export const TANG_GUEST_ADDRESS = '10.0.2.100';
/** A second address for tests with several Tang servers. */
export const SECOND_TANG_GUEST_ADDRESS = '10.0.2.101';

export interface TangServer {
  keyDir: string;
  /** tangd's request log; each connection is also logged with its time (`<epoch seconds> served|refused`). */
  logFile: string;
  /** Default TANG_GUEST_ADDRESS; port 80. */
  address?: string;
  /**
   * answer (default); silent: accepts every connection and never answers (a hung server);
   * refuse: closes every connection unanswered (a server that is down, failing fast); late:
   * refuses until `upFlag` exists, then answers (a Tang that comes up after the machine, as
   * after a site-wide power cut).
   */
  behaviour?: 'answer' | 'silent' | 'refuse' | 'late';
  upFlag?: string;
}

/**
 * guestfwd runs this command per guest connection, the connection on its stdin/stdout; tangd's
 * stderr (its request log) must not reach the socket. A command that exits at once gives the
 * guest a connection closed without a reply (curl: "empty reply"); the silent one reads until
 * the guest (or QEMU) closes the connection, so nothing outlives the VM.
 */
export function tangCommand(tang: TangServer): string {
  const paths = [tang.keyDir, tang.logFile, ...(tang.upFlag ? [tang.upFlag] : [])];
  for (const path of paths) if (/[,'"\s$`\\]/.test(path)) throw new Error(`Tang path must not contain commas, quotes, spaces or shell characters: ${path}`);
  const note = (what: string) => `echo "$(date +%s.%N) ${what}" >>${tang.logFile}`;
  const serve = `${note('served')}; exec /usr/libexec/tangd ${tang.keyDir} 2>>${tang.logFile}`;
  switch (tang.behaviour ?? 'answer') {
    case 'answer':
      return serve;
    case 'silent':
      return `${note('silent')}; exec cat >/dev/null`;
    case 'refuse':
      return note('refused');
    case 'late':
      if (!tang.upFlag) throw new Error('a late Tang server needs upFlag');
      return `if [ -e ${tang.upFlag} ]; then ${serve}; fi; ${note('refused')}`;
  }
}

function tangForwards(tang: VmConfig['tang']): string {
  const servers = tang === undefined ? [] : Array.isArray(tang) ? (tang as readonly TangServer[]) : [tang as TangServer];
  const addresses = servers.map((server) => server.address ?? TANG_GUEST_ADDRESS);
  if (new Set(addresses).size !== addresses.length) throw new Error(`two Tang servers at one address: ${addresses.join(', ')}`);
  return servers.map((server, index) => `,guestfwd=tcp:${addresses[index]}:80-cmd:/bin/sh -c '${tangCommand(server)}'`).join('');
}

/** swtpm's control socket, in the state directory (unix socket paths are limited to 107 bytes). */
export function swtpmSocket(stateDir: string): string {
  return join(stateDir, 'swtpm.sock');
}

/** swtpm as QEMU's TPM 2.0 emulator; --terminate: it exits when QEMU closes the control channel. */
export function swtpmArgs(stateDir: string): string[] {
  return ['socket', '--tpm2', '--tpmstate', `dir=${stateDir}`, '--ctrl', `type=unixio,path=${swtpmSocket(stateDir)}`, '--log', `file=${join(stateDir, 'swtpm.log')}`, '--terminate'];
}

/** A TIS TPM (works on both the pc and the q35 machine); Debian's kernel has tpm_tis built in. */
export function tpmQemuArgs(stateDir: string): string[] {
  return ['-chardev', `socket,id=chrtpm,path=${swtpmSocket(stateDir)}`, '-tpmdev', 'emulator,id=tpm0,chardev=chrtpm', '-device', 'tpm-tis,tpmdev=tpm0'];
}

/** QEMU reads a comma in an option value as the next option unless it is doubled. */
export function qemuOptionValue(value: string): string {
  return value.replaceAll(',', ',,');
}

export function qemuArgs(config: VmConfig, deadPorts: number[] = []): string[] {
  return [
    '-nodefaults', '-no-user-config', '-display', 'none',
    // A guest that reboots (e.g. after a panic) ends the test instead of booting again.
    '-no-reboot',
    ...accelArgs(config.accel, config.cpus),
    '-m', String(config.memoryMiB),
    ...config.firmwareArgs,
    '-drive', `file=${qemuOptionValue(config.overlay)},if=none,id=disk0,format=qcow2,discard=unmap`,
    '-device', `virtio-blk-pci,drive=disk0,logical_block_size=${config.sectorSize},physical_block_size=${config.sectorSize}`,
    ...(config.cdrom ? ['-drive', `file=${qemuOptionValue(config.cdrom)},if=ide,media=cdrom,format=raw,readonly=on`] : []),
    ...nicArgs(config, deadPorts, tangForwards(config.tang) + hostServiceForwards(config.hostServices)),
    ...(config.tpm ? tpmQemuArgs(config.tpm.stateDir) : []),
    // An entropy source as cloud VMs have one (qemu64 has no RDRAND).
    '-device', 'virtio-rng-pci',
    '-serial', `file:${config.serialLog}`,
  ];
}

/** A TCP port on 127.0.0.1 that is free now (QEMU binds it moments later). */
export function freePort(): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, GUEST_HOST, () => {
      const address = server.address();
      server.close(() => (typeof address === 'object' && address ? resolvePort(address.port) : reject(new Error('no port'))));
    });
  });
}

/**
 * Creates a qcow2 overlay backed by `image`, which QEMU then opens read-only. The image's
 * format was decided by probeImageFormat (never guessed by qemu-img). With `sizeBytes` the
 * overlay is a larger disk than the image (the guest sees the extra space after the image's
 * end), as when an image is written to a bigger disk.
 */
export async function createOverlay(host: HostRunner, image: { path: string } & ImageFormat, overlay: string, sizeBytes?: number): Promise<void> {
  if (sizeBytes !== undefined && sizeBytes < image.virtualBytes) throw new InputError(`--disk-size ${sizeBytes} is smaller than the image (${image.virtualBytes} bytes)`);
  await host.run('qemu-img', ['create', '-q', '-f', 'qcow2', '-F', image.format, '-b', resolve(image.path), overlay, ...(sizeBytes === undefined ? [] : [String(sizeBytes)])]);
}

const STOP_GRACE_MS = 5000;
const SWTPM_READY_MS = 10_000;

/** Starts swtpm on `stateDir` (created if missing) and waits for its control socket (wrapped: an async function would await the process itself). */
async function startSwtpm(stateDir: string, log: Logger): Promise<{ child: ResultPromise }> {
  if (swtpmSocket(stateDir).length > 107) throw new InputError(`TPM state directory path too long for a unix socket: ${stateDir}`);
  await mkdir(stateDir, { recursive: true, mode: 0o700 });
  // A socket left by an earlier run would look ready before this swtpm listens.
  await rm(swtpmSocket(stateDir), { force: true });
  const args = swtpmArgs(stateDir);
  log.verbose(`$ swtpm ${args.join(' ')}`);
  const child = execa('swtpm', args, { stdin: 'ignore', stdout: 'ignore', stderr: 'pipe', reject: false });
  const deadline = performance.now() + SWTPM_READY_MS;
  while (!(await access(swtpmSocket(stateDir)).then(() => true, () => false))) {
    if (child.exitCode !== null || performance.now() > deadline) {
      child.kill('SIGKILL');
      const { stderr } = await child;
      throw new Error(`swtpm did not start on ${stateDir}: ${String(stderr).trim() || 'no control socket'}`);
    }
    await sleep(100);
  }
  return { child };
}

async function stopChild(child: ResultPromise): Promise<void> {
  if (child.exitCode === null && child.signalCode === null) {
    child.kill('SIGTERM');
    const gone = await Promise.race([child.then(() => true), sleep(STOP_GRACE_MS, false)]);
    if (!gone) {
      child.kill('SIGKILL');
      await child;
    }
  }
}

export class Vm {
  /** Aborts when QEMU exits on its own; its reason carries QEMU's exit status. */
  readonly exited = new AbortController();
  private stopping = false;

  private constructor(
    private readonly child: ResultPromise,
    readonly config: VmConfig,
    private readonly swtpm?: ResultPromise,
  ) {}

  static async start(config: VmConfig, qemuLog: string, log: Logger): Promise<Vm> {
    const deadPorts = await Promise.all(Array.from({ length: (config.nics ?? 1) - 1 }, () => freePort()));
    const args = qemuArgs(config, deadPorts);
    const swtpm = config.tpm ? (await startSwtpm(config.tpm.stateDir, log)).child : undefined;
    log.verbose(`$ ${QEMU} ${args.join(' ')}`);
    const child = execa(QEMU, args, { stdin: 'ignore', stdout: 'pipe', stderr: 'pipe', reject: false });
    const logFile = createWriteStream(qemuLog);
    child.stdout?.pipe(logFile);
    child.stderr?.pipe(logFile);
    const vm = new Vm(child, config, swtpm);
    void child.then((result) => {
      if (!vm.stopping) vm.exited.abort(new Error(`QEMU exited (${result.exitCode ?? result.signal}) before the test ended; see ${qemuLog} and ${config.serialLog}`));
    });
    return vm;
  }

  /** SIGTERM, then SIGKILL if QEMU (then swtpm) has not gone after a grace period. */
  async stop(): Promise<void> {
    this.stopping = true;
    await stopChild(this.child);
    if (this.swtpm) await stopChild(this.swtpm);
  }
}
