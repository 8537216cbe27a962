/**
 * KVM or TCG. An openable /dev/kvm is not proof that KVM works: on some hosts (nested
 * virtualization) QEMU aborts on a CPU MSR or hangs once the guest enters long mode. So
 * the probe boots the image's own kernel under KVM, without root file system: it must
 * reach the "unable to mount root" panic, which QEMU turns into an exit (-no-reboot).
 */
import { execa } from 'execa';
import { access, constants, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { qemuImgDdArgs } from '../host/qemu-img.js';
import type { HostRunner } from '../host/run.js';
import { bootPartition, type BootManifest } from '../formats/build-manifest.js';
import { accelArgs, QEMU, type Accel } from './vm.js';

export type AccelChoice = Accel | 'auto';

export interface AccelDecision {
  accel: Accel;
  /** Why: "requested", or what the probe saw. */
  reason: string;
}

// Under working KVM the kernel panics within a few seconds; this leaves room for a loaded host.
const PROBE_TIMEOUT_MS = 20_000;
const PANIC_MARKER = 'Kernel panic - not syncing';

/** Copies /vmlinuz-<version> out of the image's /boot file system (read-only: qemu-img dd + debugfs). */
export async function extractKernel(host: HostRunner, image: string, format: string, manifest: BootManifest, workDir: string): Promise<string> {
  const boot = bootPartition(manifest);
  const bootFs = join(workDir, 'boot-fs.raw');
  const kernel = join(workDir, 'vmlinuz');
  try {
    await host.run('qemu-img', qemuImgDdArgs(format, image, boot.startBytes, boot.sizeBytes, bootFs));
    await host.run('debugfs', ['-R', `dump /vmlinuz-${manifest.kernel.version} ${kernel}`, bootFs]);
  } finally {
    await rm(bootFs, { force: true });
  }
  return kernel;
}

async function kvmBootsKernel(kernel: string, serialLog: string): Promise<string | undefined> {
  const result = await execa(
    QEMU,
    ['-nodefaults', '-no-user-config', '-display', 'none', '-no-reboot', ...accelArgs('kvm', 1), '-m', '256', '-kernel', kernel, '-append', 'console=ttyS0 panic=-1', '-serial', `file:${serialLog}`],
    { reject: false, timeout: PROBE_TIMEOUT_MS, stdin: 'ignore', all: true },
  );
  const serial = await readFile(serialLog, 'utf8').catch(() => '');
  if (serial.includes(PANIC_MARKER)) return undefined;
  if (result.timedOut) return `the probe kernel did not get to its panic within ${PROBE_TIMEOUT_MS / 1000} s`;
  return `QEMU exited ${result.exitCode ?? result.signal}: ${String(result.all ?? '').trim().split('\n').slice(-1)[0] ?? ''}`;
}

export interface ProbeInput {
  host: HostRunner;
  image: string;
  /** The image's format as probeImageFormat decided it. */
  format: string;
  manifest: BootManifest;
  workDir: string;
}

export async function chooseAccel(choice: AccelChoice, input: ProbeInput): Promise<AccelDecision> {
  if (choice !== 'auto') return { accel: choice, reason: 'requested' };
  if (!(await access('/dev/kvm', constants.R_OK | constants.W_OK).then(() => true, () => false))) return { accel: 'tcg', reason: 'no usable /dev/kvm' };
  let kernel: string | undefined;
  try {
    kernel = await extractKernel(input.host, input.image, input.format, input.manifest, input.workDir);
    const failure = await kvmBootsKernel(kernel, join(input.workDir, 'kvm-probe-serial.log'));
    return failure ? { accel: 'tcg', reason: `KVM probe failed: ${failure}` } : { accel: 'kvm', reason: 'KVM probe booted a kernel' };
  } catch (error) {
    return { accel: 'tcg', reason: `KVM probe impossible: ${error instanceof Error ? error.message.split('\n')[0] : String(error)}` };
  } finally {
    if (kernel) await rm(kernel, { force: true });
  }
}
