/**
 * What tpm2-tools (on a machine, over SSH) print about its TPM: the dictionary-attack lockout
 * state (`tpm2_getcap properties-variable`) and PCR values (`tpm2_pcrread`).
 */

/** The TPM's dictionary-attack protection: failures counted, the most allowed, seconds per failure forgotten. */
export interface Tpm2Lockout {
  counter: number;
  maxTries: number;
  /** Seconds, while powered, after which one counted failure is forgotten. */
  recoverySeconds: number;
  /** Seconds after a failed lockout-authorization before it may be tried again. */
  lockoutRecoverySeconds: number;
}

export const TPM2_LOCKOUT_COMMAND = 'tpm2_getcap properties-variable';

function property(text: string, name: string): number | undefined {
  const value = new RegExp(`^\\s*${name}:\\s*(?:raw:\\s*)?(0x[0-9a-fA-F]+|\\d+)\\s*$`, 'm').exec(text)?.[1];
  return value === undefined ? undefined : Number(value);
}

/** Parses `tpm2_getcap properties-variable`; undefined when the lockout properties are not in it. */
export function parseTpm2Lockout(text: string): Tpm2Lockout | undefined {
  const counter = property(text, 'TPM2_PT_LOCKOUT_COUNTER');
  const maxTries = property(text, 'TPM2_PT_MAX_AUTH_FAIL');
  if (counter === undefined || maxTries === undefined) return undefined;
  return { counter, maxTries, recoverySeconds: property(text, 'TPM2_PT_LOCKOUT_INTERVAL') ?? 0, lockoutRecoverySeconds: property(text, 'TPM2_PT_LOCKOUT_RECOVERY') ?? 0 };
}

/** `tpm2_pcrread BANK:IDS` for one bank. */
export function pcrReadCommand(bank: string, ids: readonly number[]): string {
  return `tpm2_pcrread ${bank}:${ids.join(',')}`;
}

/** Parses `tpm2_pcrread` into one line, `sha256:7=0xAB…,8=0xCD…`, comparable across runs. */
export function parsePcrRead(text: string): string {
  const banks: string[] = [];
  let current: { bank: string; values: string[] } | undefined;
  for (const line of text.split('\n')) {
    const bank = /^\s*(sha1|sha256|sha384|sha512|sm3_256):\s*$/.exec(line)?.[1];
    if (bank) {
      current = { bank, values: [] };
      banks.push('');
      continue;
    }
    const pcr = /^\s*(\d+)\s*:\s*(0x[0-9A-Fa-f]+)\s*$/.exec(line);
    if (pcr && current) {
      current.values.push(`${pcr[1]}=${pcr[2]!.toUpperCase().replace(/^0X/, '0x')}`);
      banks[banks.length - 1] = `${current.bank}:${current.values.join(',')}`;
    }
  }
  return banks.filter(Boolean).join(' ');
}
