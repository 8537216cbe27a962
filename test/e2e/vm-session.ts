/**
 * A VM the test drives step by step (unlike `boot-test`, which runs one fixed sequence):
 * the overlay outlives QEMU, so a test can power the machine off and boot it again with a
 * different Tang server behind it, as after enrollment.
 */
import { mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { HostRunner } from '../../src/host/run.js';
import { probeImageFormat } from '../../src/inspect/disk-format.js';
import { Logger } from '../../src/log.js';
import { firmwareArgs, firmwareQemuArgs } from '../../src/qemu/firmware.js';
import { exec, openSession, readBanner, type ExecResult } from '../../src/ssh/client.js';
import { createOverlay, freePort, Vm, type VmConfig } from '../../src/qemu/vm.js';
import { pollUntil, secondsSince } from '../../src/qemu/wait.js';
import { expect } from 'vitest';
import type { ImageFixture } from './fixture.js';

const log = new Logger('quiet');
const SSH_TIMEOUT_MS = 10 * 60 * 1000;
const POWER_OFF_TIMEOUT_MS = 3 * 60 * 1000;

export class TestVm {
  private vm?: Vm;
  private started = 0;
  private boots = 0;

  private constructor(
    readonly image: ImageFixture,
    readonly dir: string,
    private readonly overlay: string,
    private readonly key: string,
  ) {}

  /**
   * A machine whose disk is a fresh overlay over the fixture image, or over `disk` (e.g. a copy
   * of it as Ironic's agent left it); `sizeBytes`: a larger disk, which the root grows to at first boot.
   */
  static async create(image: ImageFixture, dir: string, disk = image.qcow2, sizeBytes?: number): Promise<TestVm> {
    await mkdir(dir, { recursive: true });
    const overlay = join(dir, 'disk.qcow2');
    const host = new HostRunner(log);
    await createOverlay(host, { path: disk, ...(await probeImageFormat(host, disk)) }, overlay, sizeBytes);
    return new TestVm(image, dir, overlay, await readFile(image.privateKey, 'utf8'));
  }

  get port(): number {
    return this.vm!.config.hostPort;
  }

  get serialLog(): string {
    return join(this.dir, `serial-${this.boots}.log`);
  }

  /**
   * Powers on (UEFI); `tang` serves Tang server(s) to the guest; `network`: NICs connected to
   * nothing in front of the user-network one, a static guest address; `machine.cpus` (default
   * 2): 1 when several guests run side by side; `machine.tpm`: a TPM 2.0 with its state in that
   * directory (the same directory: the same machine); `machine.secureBootVars`: this machine's own OVMF
   * variable store, under OVMF's Secure Boot build (a copy of OVMF_VARS_4M.fd: Secure Boot off; of
   * OVMF_VARS_4M.ms.fd: on, with Microsoft's keys).
   */
  async boot(tang?: VmConfig['tang'], network: Pick<VmConfig, 'nics' | 'guestAddress' | 'hostServices'> = {}, machine: { cpus?: number; tpm?: VmConfig['tpm']; secureBootVars?: string } = {}): Promise<void> {
    // A step that failed may have left the machine running: one QEMU per disk.
    await this.stop();
    this.boots++;
    const config: VmConfig = {
      accel: 'tcg',
      cpus: machine.cpus ?? 2,
      memoryMiB: 2048,
      // secureBootVars: OVMF's Secure Boot build with this machine's own variable store, which
      // outlives the boot (swapping it between boots turns Secure Boot on or off).
      firmwareArgs: machine.secureBootVars ? firmwareQemuArgs('uefi-secureboot', machine.secureBootVars) : await firmwareArgs('uefi', this.dir),
      overlay: this.overlay,
      sectorSize: 512,
      hostPort: await freePort(),
      guestPort: 22,
      serialLog: this.serialLog,
      tang,
      tpm: machine.tpm,
      ...network,
    };
    this.vm = await Vm.start(config, join(this.dir, `qemu-${this.boots}.log`), log);
    this.started = performance.now();
  }

  /** Aborted when QEMU exits (the guest powered off, or QEMU failed). */
  get exited(): AbortSignal {
    return this.vm!.exited.signal;
  }

  /** Seconds since the last power-on. */
  get uptime(): number {
    return secondsSince(this.started);
  }

  /** Waits for an SSH banner matching `pattern` (dropbear or OpenSSH); returns seconds since power-on. */
  async waitFor(pattern: RegExp, timeoutMs: number): Promise<number> {
    const signal = AbortSignal.any([AbortSignal.timeout(timeoutMs), this.vm!.exited.signal]);
    await pollUntil(async () => {
      const banner = await readBanner(this.port, 5000);
      return banner && pattern.test(banner) ? banner : undefined;
    }, 1000, signal);
    return secondsSince(this.started);
  }

  /** Writes `data` to `path` on the booted system (base64 on stdin: the channel carries text). */
  async upload(path: string, data: Buffer): Promise<void> {
    const { exitCode, output } = await this.ssh(`base64 -d > ${path}`, data.toString('base64'));
    if (exitCode !== 0) throw new Error(`upload to ${path} failed: ${output}`);
  }

  /** Runs `command` as root, logged in with the fixture's key or with `key` (a private key's text). */
  async ssh(command: string, stdin?: string, key = this.key): Promise<ExecResult> {
    const options = { timeoutMs: SSH_TIMEOUT_MS, signal: this.vm!.exited.signal, stdin };
    const { client } = await openSession(this.port, { type: 'publickey', username: 'root', key }, options);
    try {
      return await exec(client, command, options);
    } finally {
      client.end();
    }
  }

  /**
   * Shuts the booted system down and waits until QEMU exits by itself. Then the guest's kernel
   * has sent the TPM its orderly TPM2_Shutdown: a TPM counts every power loss without one as a
   * failed authorization, and swtpm (at most 3 failures) then refuses the tpm2 pin's primary key
   * with TPM_RC_LOCKOUT, as after three `stop()`s of a running guest.
   */
  async powerOff(timeoutMs = POWER_OFF_TIMEOUT_MS): Promise<void> {
    const exited = this.vm!.exited.signal;
    // The connection may close before the command's status arrives.
    await this.ssh('systemctl poweroff').catch(() => undefined);
    const off = await Promise.race([
      new Promise<boolean>((resolve) => (exited.aborted ? resolve(true) : exited.addEventListener('abort', () => resolve(true), { once: true }))),
      sleep(timeoutMs, false),
    ]);
    await this.stop();
    if (!off) throw new Error(`the guest did not power off within ${timeoutMs / 1000} s of systemctl poweroff (see ${this.serialLog})`);
  }

  async stop(): Promise<void> {
    await this.vm?.stop();
    this.vm = undefined;
  }
}

/** What every unlocked boot must show: / is the dm-crypt mapping of the LUKS root. */
export async function expectEncryptedRoot(vm: TestVm): Promise<void> {
  const { output } = await vm.ssh('findmnt -no SOURCE / && lsblk -no TYPE "$(findmnt -no SOURCE /)"');
  expect(output).toMatch(/^\/dev\/mapper\/cryptroot\ncrypt$/m);
}
