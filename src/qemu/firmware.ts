/**
 * Firmware for the test VM. UEFI is OVMF from Debian's `ovmf` package with a private copy
 * of the variable store (OVMF writes to it; the shared template must stay pristine). BIOS
 * is QEMU's default SeaBIOS.
 */
import { copyFile } from 'node:fs/promises';
import { join } from 'node:path';

export type Firmware = 'uefi' | 'bios';
export const FIRMWARES: readonly Firmware[] = ['uefi', 'bios'];

export const OVMF_CODE = '/usr/share/OVMF/OVMF_CODE_4M.fd';
export const OVMF_VARS_TEMPLATE = '/usr/share/OVMF/OVMF_VARS_4M.fd';

/** Host files the firmware needs (checked before starting). */
export function firmwareFiles(firmware: Firmware): string[] {
  return firmware === 'uefi' ? [OVMF_CODE, OVMF_VARS_TEMPLATE] : [];
}

/** QEMU arguments for the firmware; for UEFI, copies the vars template into `workDir`. */
export async function firmwareArgs(firmware: Firmware, workDir: string): Promise<string[]> {
  if (firmware === 'bios') return [];
  const vars = join(workDir, 'OVMF_VARS.fd');
  await copyFile(OVMF_VARS_TEMPLATE, vars);
  return [
    '-drive', `if=pflash,format=raw,unit=0,readonly=on,file=${OVMF_CODE}`,
    '-drive', `if=pflash,format=raw,unit=1,file=${vars}`,
  ];
}
