/**
 * A scripted machine for the enroll and rebind unit tests: a LUKS2 header (keyslots with what
 * opens them, clevis tokens, the volume key's digest salt, the online-reencrypt flag), Tang
 * keys, detached systemd units that run for a few polls, and files. It answers the shell
 * commands enroll and rebind send, changes its state as the real machine would, and records
 * every command with its stdin.
 */
import { createHash } from 'node:crypto';
import { jwkThumbprint } from '../../src/host/tang.js';
import type { Remote, RemoteResult } from '../../src/nbde/machine.js';

export const DEVICE = '/dev/vda4';
export const TANG = 'http://tang.example';

/** A signing key whose thumbprint is derived from `name`. */
export function signingKey(name: string) {
  return { kty: 'EC', crv: 'P-521', x: `x-${name}`, y: `y-${name}`, key_ops: ['verify'], alg: 'ES512' };
}
export const thp = (name: string) => jwkThumbprint(signingKey(name));

/** A clevis keyslot: its Tang key (none for a TPM-only binding), and with a TPM2 pin the PCR 7 value it is sealed to. */
type Slot = { opener: 'passphrase'; secret: string } | { opener: 'clevis'; key: string; sealedTo?: string };

export class FakeLuksMachine implements Remote {
  readonly calls: Array<{ command: string; stdin?: string }> = [];
  readonly files = new Map<string, string>();
  slots = new Map<number, Slot>();
  /** The TPM's PCR 7 now. */
  pcr7 = 'A1';
  /** The binding's policy: Tang (default), sss of Tang and a TPM2 pin (PCR 7) with threshold 2, or the TPM alone. */
  tokens = new Map<number, { keyslot?: number; key: string; policy?: 'tang' | 'tang+tpm2' | 'tpm2' }>();
  digestSalt = 'aa01';
  reencryptFlag = false;
  /** Units running, with the polls left until they end and what they do then (a failure: the step that failed and its last lines). */
  units = new Map<string, { polls: number; finish: () => { label: string; lines: string[] } | void }>();
  /** Each unit's journal, as its script writes it. */
  readonly journals = new Map<string, string[]>();
  /** Tang's keys: `served` in the advertisement, `recoverable` still answering key recovery. */
  tang = { up: true, served: 'k1', recoverable: new Set(['k1']) };
  /** Commands matching this fail. */
  failing?: RegExp;
  /** This many `systemctl is-active` calls time out talking to systemd (a loaded machine). */
  systemctlTimeouts = 0;
  /** A started re-encryption unit fails instead of finishing. */
  reencryptFails = false;
  /** A started initramfs unit fails in this step (its label), with these last lines. */
  initramfsFails?: { label: string; lines: string[] };
  private nextSalt = 2;

  /** The image as built: bootstrap passphrase in slot 0, a build-time Tang binding in slot 1. */
  constructor(readonly bootstrap: string, buildTimeKey = 'build') {
    this.slots.set(0, { opener: 'passphrase', secret: bootstrap });
    this.slots.set(1, { opener: 'clevis', key: buildTimeKey });
    this.tokens.set(0, { keyslot: 1, key: buildTimeKey });
  }

  index(pattern: RegExp): number {
    return this.calls.findIndex((call) => pattern.test(call.command));
  }

  commands(pattern: RegExp): string[] {
    return this.calls.map((call) => call.command).filter((command) => pattern.test(command));
  }

  /** The state after a completed volume-key rotation with the bootstrap slot (build-time binding orphaned). */
  rotate(): void {
    this.digestSalt = `aa0${this.nextSalt++}`;
    this.reencryptFlag = false;
    for (const slot of [...this.slots.keys()]) if (slot !== 0) this.slots.delete(slot);
    for (const token of this.tokens.values()) token.keyslot = this.slots.has(token.keyslot ?? -1) ? token.keyslot : undefined;
  }

  bind(key: string, policy: 'tang' | 'tang+tpm2' = 'tang', slot = [...Array(32).keys()].find((s) => !this.slots.has(s))!): number {
    this.slots.set(slot, { opener: 'clevis', key, ...(policy === 'tang' ? {} : { sealedTo: this.pcr7 }) });
    this.tokens.set([...Array(32).keys()].find((id) => !this.tokens.has(id))!, { keyslot: slot, key, policy });
    return slot;
  }

  private decrypts(slot: number): boolean {
    const entry = this.slots.get(slot);
    if (entry?.opener !== 'clevis') return false;
    if (entry.sealedTo !== undefined && entry.sealedTo !== this.pcr7) return false;
    const policy = [...this.tokens.values()].find((t) => t.keyslot === slot)?.policy ?? 'tang';
    return policy === 'tpm2' || (this.tang.up && this.tang.recoverable.has(entry.key));
  }

  private opens(file: string, slot?: number): number | undefined {
    const secret = this.files.get(file);
    for (const [number, entry] of this.slots) if (entry.opener === 'passphrase' && entry.secret === secret && (slot === undefined || slot === number)) return number;
    return undefined;
  }

  private dump(): string {
    const slots = [...this.slots.keys()].sort((a, b) => a - b);
    const tokens = [...this.tokens].map(([id, t]) => `  ${id}: clevis\n${t.keyslot === undefined ? '' : `\tKeyslot:    ${t.keyslot}\n`}`).join('');
    return [
      'LUKS header information\nVersion:       \t2\nUUID:          \tx\n',
      this.reencryptFlag ? 'Requirements:\tonline-reencrypt-v2 \n' : '',
      `\nKeyslots:\n${slots.map((s) => `  ${s}: luks2\n\tKey:        512 bits\n\tSalt:       ${this.keyslotSalt(s)}\n`).join('')}`,
      `Tokens:\n${tokens}`,
      `Digests:\n  0: pbkdf2\n\tHash:       sha256\n\tSalt:       ${this.digestSalt.slice(0, 2)} ${this.digestSalt.slice(2)} \n\t            00 11 \n\tDigest:     ff ee \n`,
    ].join('');
  }

  /** A keyslot's salt in luksDump's layout: new whenever the keyslot is written again (here: its content or the volume key changes). */
  private keyslotSalt(slot: number): string {
    const hex = createHash('sha256').update(`${JSON.stringify(this.slots.get(slot))}:${this.digestSalt}`).digest('hex');
    return `${hex.slice(0, 32).replace(/(..)/g, '$1 ')}\n\t            ${hex.slice(32).replace(/(..)/g, '$1 ')}`;
  }

  private token(key: string, policy: 'tang' | 'tang+tpm2' | 'tpm2' = 'tang', sealedTo?: string): string {
    const segment = (header: unknown) => Buffer.from(JSON.stringify(header)).toString('base64url');
    const tang = { alg: 'ECDH-ES', clevis: { pin: 'tang', tang: { url: TANG, adv: { keys: [signingKey(key)] } } } };
    // The PCR value the TPM sealed to is not in a real JWE: here it lets `clevis decrypt` tell.
    const tpm2 = { clevis: { pin: 'tpm2', tpm2: { pcr_bank: 'sha256', pcr_ids: '7', sealedTo } } };
    const sss = { alg: 'dir', clevis: { pin: 'sss', sss: { t: 2, jwe: [`${segment(tang)}.k.i.c.t`, `${segment(tpm2)}.k.i.c.t`] } } };
    return JSON.stringify({ type: 'clevis', keyslots: [], jwe: { protected: segment({ tang, 'tang+tpm2': sss, tpm2 }[policy]) } });
  }

  private adv(): string {
    const payload = Buffer.from(JSON.stringify({ keys: [signingKey(this.tang.served), { kty: 'EC', crv: 'P-521', x: 'dx', y: 'dy', key_ops: ['deriveKey'] }] })).toString('base64url');
    return JSON.stringify({ payload, protected: 'e30', signature: 'sig' });
  }

  private startUnit(command: string): void {
    const unit = /--unit=(\S+)/.exec(command)![1]!;
    if (unit === 'keylessgo-enroll-reencrypt') {
      this.reencryptFlag = true;
      const label = /cryptsetup reencrypt [^']*\/dev\/vda4/.exec(command)![0];
      this.units.set(unit, { polls: 2, finish: () => (this.reencryptFails ? { label, lines: ['No usable keyslot is available.'] } : this.rotate()) });
    } else {
      const action = /echo (\S+) > \/var\/lib\/keylessgo\/enroll\/dropbear-done/.exec(command)![1]!;
      this.units.set(unit, { polls: 2, finish: () => this.initramfsFails ?? void this.files.set('/var/lib/keylessgo/enroll/dropbear-done', `${action}\n`) });
    }
  }

  /** A unit ends: its last journal lines say how, as its script writes them. */
  private endUnit(name: string): void {
    const unit = this.units.get(name)!;
    this.units.delete(name);
    const failed = unit.finish();
    this.journals.set(name, [...(this.journals.get(name) ?? []), ...(failed ? [...failed.lines, `keylessgo-step: exited 1: ${failed.label}`] : ['keylessgo-step: done'])]);
  }

  async run(command: string, stdin?: string): Promise<RemoteResult> {
    this.calls.push({ command, stdin });
    const ok = (output = ''): RemoteResult => ({ output, exitCode: 0 });
    const fail = (output = 'failed'): RemoteResult => ({ output, exitCode: 1 });
    if (this.failing?.test(command)) return fail('scripted failure');
    const file = (pattern: RegExp) => pattern.exec(command)?.[1] ?? '';
    const slotArg = () => Number(/-s (\d+)/.exec(command)![1]);
    if (command === 'findmnt -no SOURCE /') return ok('/dev/mapper/cryptroot\n');
    if (command.startsWith('cryptsetup status')) return ok(`  type:    LUKS2\n  device:  ${DEVICE}\n`);
    if (command.startsWith('command -v clevis')) return ok();
    if (/&& cat > (\S+)$/.test(command)) return this.files.set(file(/cat > (\S+)$/), stdin ?? ''), ok();
    if (command.startsWith('umask 077 && cp ')) return this.files.set(file(/cp \S+ (\S+)/), this.files.get(file(/cp (\S+)/)) ?? ''), ok();
    if (command.startsWith('for f in $(find')) {
      const dir = file(/rm -rf (\S+)$/);
      for (const name of [...this.files.keys()]) if (name.startsWith(dir)) this.files.delete(name);
      return ok();
    }
    if (command.startsWith(`cryptsetup luksDump ${DEVICE}`)) return ok(this.dump());
    if (command.startsWith('systemctl is-active')) {
      if (this.systemctlTimeouts-- > 0) return { output: 'Failed to get properties: Connection timed out\n', exitCode: 1 };
      const name = file(/is-active (\S+)/);
      const unit = this.units.get(name);
      if (!unit) return { output: 'inactive\n', exitCode: 3 };
      if (unit.polls-- <= 0) {
        this.endUnit(name);
        return { output: 'inactive\n', exitCode: 3 };
      }
      return ok('active\n');
    }
    if (command.startsWith('journalctl')) {
      const name = file(/-u (\S+)$/);
      const journal = this.units.has(name) ? [...(this.journals.get(name) ?? []), 'Progress:  50.0%, ETA 00:10'] : (this.journals.get(name) ?? []);
      return ok(`${journal.slice(-Number(file(/-n (\d+)/))).join('\n')}\n`);
    }
    if (command.startsWith('for k in /etc/dropbear/initramfs/dropbear_*_host_key; do dropbearkey -y')) return ok('ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHm8n root@machine\n');
    if (command.startsWith('systemd-run')) return this.startUnit(command), ok();
    if (/^cd \/var\/lib\/keylessgo\/\w+ 2>\/dev\/null && for f in/.test(command)) {
      // What the state read prints for the files as they lie on the machine: each value's first line.
      const dir = file(/^cd (\S+)/);
      const names = file(/for f in ([^;]+); do/).split(' ');
      return ok(names.filter((name) => this.files.has(`${dir}/${name}`)).map((name) => `${name}=${this.files.get(`${dir}/${name}`)!.split('\n')[0]}\n`).join(''));
    }
    if (command === 'clevis decrypt >/dev/null 2>&1') {
      const header = JSON.parse(Buffer.from(stdin!.split('.')[0]!, 'base64url').toString()) as { clevis: { tpm2: { sealedTo?: string } } };
      return header.clevis.tpm2.sealedTo === this.pcr7 ? ok() : fail('ERROR:esys:src/tss2-esys/api/Esys_Unseal.c:295:Esys_Unseal_Finish() Received TPM Error');
    }
    if (command === 'tpm2_pcrread sha256:7') return ok(`  sha256:\n    7 : 0x${this.pcr7}\n`);
    if (command.startsWith('mkdir -p /var/lib/keylessgo/reseal && echo ')) return this.files.set('/var/lib/keylessgo/reseal/prepared-pcrs', `${file(/echo '([^']*)'/)}\n`), ok();
    if (command === 'rm -f /var/lib/keylessgo/reseal/prepared-pcrs') return this.files.delete('/var/lib/keylessgo/reseal/prepared-pcrs'), ok();
    if (command.startsWith('mkdir -p /var/lib/keylessgo/enroll && { test -s')) {
      const path = '/var/lib/keylessgo/enroll/image-volume-key-digest-salt';
      // echo writes the value and a newline.
      if (!this.files.has(path)) this.files.set(path, `${file(/echo (\S+) >/)}\n`);
      return ok();
    }
    if (command.startsWith('cryptsetup open --test-passphrase --verbose --key-file')) {
      const slot = this.opens(file(/--key-file (\S+)/));
      return slot === undefined ? { output: 'No key available with this passphrase.', exitCode: 2 } : ok(`Key slot ${slot} unlocked.\nCommand successful.\n`);
    }
    if (command.startsWith('cryptsetup open --test-passphrase --key-slot')) {
      return this.opens(file(/--key-file (\S+)/), Number(file(/--key-slot (\d+)/))) === undefined ? { output: 'No key available', exitCode: 2 } : ok();
    }
    if (command.startsWith('cryptsetup token export')) {
      const token = this.tokens.get(Number(file(/--token-id (\d+)/)));
      if (!token) return fail();
      const slot = this.slots.get(token.keyslot ?? -1);
      return ok(this.token(token.key, token.policy, slot?.opener === 'clevis' ? slot.sealedTo : undefined));
    }
    if (/^clevis luks pass .*\| cryptsetup open --test-passphrase/.test(command)) return this.decrypts(slotArg()) ? ok() : { output: 'Error communicating with server', exitCode: 1 };
    if (command.startsWith('curl ')) return this.tang.up ? ok(this.adv()) : { output: 'curl: (7) Failed to connect', exitCode: 7 };
    if (command.startsWith('test "$(printf ok | clevis encrypt')) return this.tang.up ? ok() : fail();
    if (/^(clevis luks pass|cat \S+) .*\| clevis luks bind/.test(command)) {
      const source = /^cat (\S+) \|/.exec(command)?.[1];
      if (!(source ? this.opens(source) !== undefined : this.decrypts(slotArg()))) return fail('Error communicating with server');
      if (!this.tang.up) return fail('Error communicating with server');
      const into = /clevis luks bind .*-s (\d+)/.exec(command)?.[1];
      this.bind(this.tang.served, command.includes('"tpm2":') ? 'tang+tpm2' : 'tang', into === undefined ? undefined : Number(into));
      return ok();
    }
    if (command.startsWith('clevis luks bind')) {
      if (this.opens(file(/-k (\S+)/)) === undefined || !this.tang.up) return fail();
      this.bind(this.tang.served);
      return ok();
    }
    if (/\| clevis luks unbind/.test(command)) {
      // luksKillSlot wants a passphrase of another keyslot on stdin.
      const source = /^cat (\S+) \|/.exec(command)?.[1];
      const keyOk = source ? this.opens(source) !== undefined : this.decrypts(Number(/^clevis luks pass -d \S+ -s (\d+) \|/.exec(command)?.[1]));
      if (!keyOk) return fail('No key available with this passphrase.');
      const slot = Number(/unbind -f -d \S+ -s (\d+)/.exec(command)![1]);
      this.slots.delete(slot);
      for (const [id, token] of this.tokens) if (token.keyslot === slot) this.tokens.delete(id);
      return ok();
    }
    if (command.startsWith('cryptsetup token remove')) return this.tokens.delete(Number(file(/--token-id (\d+)/))), ok();
    if (command.startsWith('cryptsetup luksKillSlot')) return this.slots.delete(Number(file(/ (\d+)$/))), ok();
    if (command.startsWith('cryptsetup luksAddKey')) {
      if (this.opens(file(/--key-file (\S+)/)) === undefined) return fail();
      this.slots.set(Number(file(/--key-slot (\d+)/)), { opener: 'passphrase', secret: this.files.get(file(/ (\S+)$/))! });
      return ok();
    }
    if (command.startsWith('cryptsetup luksRemoveKey')) {
      const slot = this.opens(file(/--key-file (\S+)/));
      if (slot === undefined) return fail();
      this.slots.delete(slot);
      return ok();
    }
    throw new Error(`the fake machine does not know: ${command}`);
  }
}
