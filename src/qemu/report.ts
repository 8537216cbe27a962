/** The boot test's result: one record, printed as a table and written as JSON beside the serial log. */
import { writeFile } from 'node:fs/promises';
import type { Check } from './checks.js';
import type { Firmware } from './firmware.js';
import type { Accel } from './vm.js';

/** Seconds from QEMU's start until each milestone was seen (absent if never reached). */
export interface Milestones {
  dropbear?: number;
  unlocked?: number;
  booted?: number;
  running?: number;
}

export const MILESTONE_LABELS: Record<keyof Milestones, string> = {
  dropbear: 'to dropbear',
  unlocked: 'to unlock',
  booted: 'to booted (OpenSSH)',
  running: 'to system running',
};

export interface BootTestResult {
  image: string;
  firmware: Firmware;
  accel: Accel;
  accelReason: string;
  cpus: number;
  memoryMiB: number;
  milestones: Milestones;
  checks: Check[];
  /** Why the test stopped early, if it did (a phase that failed or timed out). */
  error?: string;
  /** systemd-analyze output from the booted guest. */
  bootAnalysis?: string;
  serialLog: string;
  passed: boolean;
}

export function hasPassed(result: Pick<BootTestResult, 'checks' | 'error'>): boolean {
  return result.error === undefined && result.checks.length > 0 && result.checks.every((c) => c.ok);
}

export function formatTable(result: BootTestResult): string {
  const rows: Array<[string, string]> = [
    ['image', result.image],
    ['firmware', result.firmware],
    ['accel', `${result.accel} (${result.accelReason}), ${result.cpus} CPUs, ${result.memoryMiB} MiB`],
    ...Object.entries(MILESTONE_LABELS).map(([key, label]): [string, string] => {
      const seconds = result.milestones[key as keyof Milestones];
      return [label, seconds === undefined ? '-' : `${seconds.toFixed(1)} s`];
    }),
  ];
  const width = Math.max(...rows.map(([label]) => label.length), ...result.checks.map((c) => c.name.length + 6));
  const lines = rows.map(([label, value]) => `${label.padEnd(width)}  ${value}`);
  for (const c of result.checks) lines.push(`${(c.ok ? 'PASS  ' : 'FAIL  ') + c.name.padEnd(width - 6)}  ${c.detail}`);
  if (result.error) lines.push(`${'error'.padEnd(width)}  ${result.error}`);
  const failed = result.checks.filter((c) => !c.ok).length;
  lines.push(`${'result'.padEnd(width)}  ${result.passed ? 'PASS' : 'FAIL'} (${result.checks.length - failed} of ${result.checks.length} checks passed)`);
  lines.push(`${'serial log'.padEnd(width)}  ${result.serialLog}`);
  return `${lines.join('\n')}\n`;
}

export async function writeResultJson(path: string, result: BootTestResult): Promise<void> {
  await writeFile(path, `${JSON.stringify(result, null, 2)}\n`);
}
