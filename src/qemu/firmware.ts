/**
 * Firmware for the test VM. UEFI is OVMF from Debian's `ovmf` package with a private copy
 * of the variable store (OVMF writes to it; the shared template must stay pristine). BIOS
 * is QEMU's default SeaBIOS. `uefi-secureboot` is OVMF's Secure Boot build with Microsoft's
 * keys enrolled and Secure Boot enforced (Debian's *.ms.fd files): it needs SMM, so a q35
 * machine, and flash only SMM code may write (the variable store cannot be edited by the guest).
 */
import { copyFile } from 'node:fs/promises';
import { join } from 'node:path';

export type Firmware = 'uefi' | 'uefi-secureboot' | 'bios';
export const FIRMWARES: readonly Firmware[] = ['uefi', 'uefi-secureboot', 'bios'];

interface OvmfFiles {
  code: string;
  varsTemplate: string;
}

export const OVMF: Record<Exclude<Firmware, 'bios'>, OvmfFiles> = {
  uefi: { code: '/usr/share/OVMF/OVMF_CODE_4M.fd', varsTemplate: '/usr/share/OVMF/OVMF_VARS_4M.fd' },
  'uefi-secureboot': { code: '/usr/share/OVMF/OVMF_CODE_4M.ms.fd', varsTemplate: '/usr/share/OVMF/OVMF_VARS_4M.ms.fd' },
};

export const isSecureBoot = (firmware: Firmware) => firmware === 'uefi-secureboot';

/** Host files the firmware needs (checked before starting). */
export function firmwareFiles(firmware: Firmware): string[] {
  return firmware === 'bios' ? [] : [OVMF[firmware].code, OVMF[firmware].varsTemplate];
}

/** QEMU's machine, pflash and SMM arguments for `firmware`, given the path of its private vars copy. */
export function firmwareQemuArgs(firmware: Firmware, vars: string): string[] {
  if (firmware === 'bios') return ['-machine', 'pc'];
  const flash = ['-drive', `if=pflash,format=raw,unit=0,readonly=on,file=${OVMF[firmware].code}`, '-drive', `if=pflash,format=raw,unit=1,file=${vars}`];
  if (!isSecureBoot(firmware)) return ['-machine', 'pc', ...flash];
  return ['-machine', 'q35,smm=on', '-global', 'driver=cfi.pflash01,property=secure,value=on', ...flash];
}

/** QEMU arguments for the firmware, machine type included; for UEFI, copies the vars template into `workDir`. */
export async function firmwareArgs(firmware: Firmware, workDir: string): Promise<string[]> {
  const vars = join(workDir, 'OVMF_VARS.fd');
  if (firmware !== 'bios') await copyFile(OVMF[firmware].varsTemplate, vars);
  return firmwareQemuArgs(firmware, vars);
}
