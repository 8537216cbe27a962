/**
 * `keylessgo enroll`: turns a deployed machine that was unlocked with the bootstrap
 * passphrase into one that unlocks itself through Tang, with a per-machine volume key and a
 * recovery passphrase, over SSH. A state machine: each round observes the machine (`observe`),
 * picks the next step from what it found (`nextStep`) and runs it, so a re-run continues
 * from wherever an interrupted one left the machine. The steps, in the order that leaves at
 * least one way in after an interruption anywhere:
 *
 *   1. new volume key: online `cryptsetup reencrypt` with the bootstrap keyslot, as a
 *      detached systemd unit (a dropped connection or killed keylessgo does not stop it; a
 *      re-run waits for it, or resumes an interrupted one with --resume-only). It drops every
 *      other keyslot, so a build-time clevis binding is stale afterwards and is removed.
 *   2. Tang binding made on this machine (unique secret) to the trusted advertisement, proven
 *   3. recovery passphrase added in keyslot 31 (how a re-run tells it apart) and tested
 *   4. dropbear host key regenerated (it came from the image) or dropbear removed, and the
 *      initramfs rebuilt, as a detached unit too
 *   5. bootstrap passphrase removed, and tested to fail: from then on the machine is enrolled
 *
 * Secrets cross the SSH channel on stdin into a 0700 directory on the machine's /run
 * (tmpfs), are overwritten and removed at the end (the detached re-encryption's copy when its
 * unit stops), and never appear in any command line. A re-run stages them again.
 * Host commands on the machine: those of machine.ts and tang-pins.ts, cryptsetup reencrypt,
 * luksAddKey, luksRemoveKey, luksKillSlot, token remove; clevis encrypt/decrypt, luks bind,
 * unbind; dropbearkey, apt-get purge, update-initramfs.
 */
import { randomBytes } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { EnrollError } from '../errors.js';
import { clevisPinConfig, type BoundTangServer, type Tpm2Pin } from '../host/clevis.js';
import {
  bindingDecrypts, detachedUnitCommand, expectUnitDone, findRootDevice, followUnit, must, orphanClevisTokens, readBindings, readHeader, readStateFiles, shellQuote, slotOpenedBy,
  stageSecret, succeeds, unbindCommand, unitActive, unitOutcome, wipeCommand, type ClevisBinding, type EnrollLog, type LuksHeader, type Remote, type UnitStep,
} from './machine.js';
import { trustTang, type TrustedTang } from './tang-pins.js';

export { shellQuote, type EnrollLog, type Remote, type RemoteResult } from './machine.js';

export interface EnrollOptions {
  tangUrls: string[];
  /** Signing-key thumbprints, one per Tang URL in order; none: trust on first use. */
  tangThps: string[];
  /** Also bind to the machine's TPM (clevis tpm2 pin); the threshold then counts it with the Tang servers. */
  tpm2?: Tpm2Pin;
  threshold: number;
  bootstrapPassphrase: string;
  recoveryKeyOut?: string;
  /** The SSH unlock fallback afterwards: new host key (default), unchanged, or purged. */
  dropbear: DropbearAction;
  log: EnrollLog;
  /** How often a detached unit's progress is polled (tests: 0). */
  pollMs?: number;
}

export type DropbearAction = 'regenerate-key' | 'keep' | 'remove';

const DROPBEAR_KEYS = '/etc/dropbear/initramfs';

/**
 * New dropbear host keys, each written beside the old one and renamed over it. The types the
 * machine has are renewed (the image has ed25519 and ecdsa; an RSA key the package made too).
 */
export const newDropbearKeysScript = (keysDir = DROPBEAR_KEYS) => [
  'set -e',
  `cd ${keysDir}`,
  'types=$(for t in ed25519 ecdsa rsa; do if [ -f dropbear_${t}_host_key ]; then echo $t; fi; done)',
  '[ -n "$types" ] || types="ed25519 ecdsa"',
  'for t in $types; do rm -f dropbear_${t}_host_key.new; dropbearkey -t $t -f dropbear_${t}_host_key.new; mv -f dropbear_${t}_host_key.new dropbear_${t}_host_key; done',
].join('\n');

/**
 * The new keys into every installed kernel's initramfs without rebuilding it (update-initramfs
 * with MODULES=most is minutes on a small machine): a small archive holding only the host keys,
 * appended after what is there. The kernel unpacks the archives in order and a later file
 * replaces an earlier one, as with the archive the build appended. Written beside the
 * initramfs, flushed, then renamed over it: a power loss leaves the old one or the new one.
 * The next update-initramfs (a kernel or initramfs-tools update) writes one archive again,
 * with these keys, from the same directory.
 */
export const appendDropbearKeysScript = (keysDir = DROPBEAR_KEYS, bootDir = '/boot') => [
  'set -e',
  'work=$(mktemp -d /run/keylessgo-dropbear-keys.XXXXXX)',
  'trap \'rm -rf "$work"\' EXIT',
  'mkdir -p "$work/etc/dropbear"',
  `cp ${keysDir}/dropbear_*_host_key "$work/etc/dropbear/"`,
  'chmod 600 "$work"/etc/dropbear/*',
  '(cd "$work" && ls etc/dropbear/dropbear_*_host_key | cpio --quiet -o -H newc -R 0:0) > "$work/keys.cpio"',
  'found=0',
  `for initrd in ${bootDir}/initrd.img-*; do`,
  '  [ -f "$initrd" ] && [ ! -L "$initrd" ] || continue',
  '  case "$initrd" in *.keylessgo-new) continue ;; esac',
  '  found=$((found + 1))',
  '  size=$(stat -c %s "$initrd")',
  '  cp "$initrd" "$initrd.keylessgo-new"',
  // The next archive starts on a 4-byte boundary.
  '  head -c $(( (4 - size % 4) % 4 )) /dev/zero >> "$initrd.keylessgo-new"',
  '  cat "$work/keys.cpio" >> "$initrd.keylessgo-new"',
  '  sync "$initrd.keylessgo-new"',
  '  mv -f "$initrd.keylessgo-new" "$initrd"',
  `  sync ${bootDir}`,
  '  echo "$initrd: new dropbear host keys appended at byte $size"',
  'done',
  `[ "$found" -gt 0 ] || { echo "no ${bootDir}/initrd.img-* to put the keys into" >&2; exit 1; }`,
].join('\n');

/** What the machine runs for each dropbear action, as steps of a detached unit (their output in its journal). */
const DROPBEAR_STEPS: Record<Exclude<DropbearAction, 'keep'>, UnitStep[]> = {
  'regenerate-key': [
    { label: 'new dropbear host keys', script: newDropbearKeysScript() },
    { label: 'append the new host keys to each initramfs', script: appendDropbearKeysScript() },
  ],
  remove: [
    { label: 'apt-get purge dropbear-initramfs', script: 'DEBIAN_FRONTEND=noninteractive apt-get purge -y -q dropbear-initramfs' },
    { label: 'update-initramfs -u', script: 'update-initramfs -u' },
  ],
};

/** The public halves of the initramfs's dropbear host keys, one OpenSSH line each. */
const DROPBEAR_PUBLIC_KEYS = `for k in ${DROPBEAR_KEYS}/dropbear_*_host_key; do dropbearkey -y -f "$k" | grep -E '^(ssh-|ecdsa-)'; done`;

/** The recovery passphrase's keyslot: fixed, so that a re-run knows it from any other. */
export const RECOVERY_SLOT = 31;

const SECRETS = '/run/keylessgo-enroll';
const BOOTSTRAP = `${SECRETS}/bootstrap`;
const RECOVERY = `${SECRETS}/recovery`;
/** The detached re-encryption's own copy of the bootstrap passphrase, wiped when its unit stops. */
const UNIT_KEY = `${SECRETS}/reencrypt-unit`;
/** On the machine's root (encrypted, survives reboots): what a re-run cannot read from the LUKS header. */
const STATE = '/var/lib/keylessgo/enroll';
const IMAGE_DIGEST = 'image-volume-key-digest-salt';
const DROPBEAR_DONE = 'dropbear-done';
const STATE_FILES = [IMAGE_DIGEST, DROPBEAR_DONE] as const;
const MAX_ROUNDS = 12;
export const REENCRYPT_UNIT = 'keylessgo-enroll-reencrypt';
export const INITRAMFS_UNIT = 'keylessgo-enroll-initramfs';

/** Everything the next step is chosen from. */
export interface EnrollFacts {
  device: string;
  header: LuksHeader;
  reencryptRunning: boolean;
  initramfsRunning: boolean;
  /** The keyslot the bootstrap passphrase opens; undefined: it opens none. */
  bootstrapSlot?: number;
  /** The digest salt of the image's volume key, recorded before the re-encryption started. */
  imageDigestSalt?: string;
  bindings: Array<ClevisBinding & { decrypts: boolean }>;
  /** Keyslots neither the bootstrap's, nor the recovery's, nor a binding's (an interrupted bind). */
  strayKeyslots: number[];
  orphanTokens: number[];
  dropbearDone?: string;
}

export type EnrollStep =
  | 'wait for the re-encryption'
  | 'resume the re-encryption'
  | 'wait for the initramfs rebuild'
  | 'rotate the volume key'
  | 'remove stale bindings'
  | 'bind to Tang'
  | 'add the recovery passphrase'
  | 'update dropbear'
  | 'remove the bootstrap passphrase'
  | 'enrolled';

/** Whether the header's volume key is no longer the image's (whose digest salt was recorded before the rotation). */
function rotatedFrom(header: LuksHeader, imageDigestSalt: string | undefined): boolean {
  return imageDigestSalt !== undefined && !header.reencryptInProgress && !header.digestSalts.includes(imageDigestSalt);
}

export function volumeKeyRotated(facts: EnrollFacts): boolean {
  return rotatedFrom(facts.header, facts.imageDigestSalt);
}

/** The next step for a machine in the state `facts` describe; throws when none is safe. */
export function nextStep(facts: EnrollFacts, dropbear: DropbearAction): EnrollStep {
  if (facts.reencryptRunning) return 'wait for the re-encryption';
  if (facts.header.reencryptInProgress) return 'resume the re-encryption';
  if (facts.initramfsRunning) return 'wait for the initramfs rebuild';
  if (facts.bootstrapSlot === undefined) {
    if (facts.bindings.some((b) => b.decrypts)) return 'enrolled';
    throw new EnrollError('check the bootstrap passphrase', 'it does not open the root volume, and no clevis binding decrypts now (the wrong passphrase, or enrolled and its Tang unreachable)');
  }
  if (!volumeKeyRotated(facts)) return 'rotate the volume key';
  if (facts.orphanTokens.length > 0 || facts.strayKeyslots.length > 0 || facts.bindings.some((b) => !b.decrypts)) return 'remove stale bindings';
  if (facts.bindings.length === 0) return 'bind to Tang';
  if (!facts.header.keyslots.includes(RECOVERY_SLOT)) return 'add the recovery passphrase';
  if (dropbear !== 'keep' && facts.dropbearDone !== dropbear) return 'update dropbear';
  return 'remove the bootstrap passphrase';
}

/**
 * What observe learnt by running keyslot KDFs (seconds each on a small machine, more under
 * emulation, and several per round): which keyslot the bootstrap passphrase opens, and which
 * bindings were proven to open the volume. Valid within one run while the keyslots tested are
 * the same: same numbers and salts (writing a keyslot again gives it a new salt).
 */
export interface KdfMemo {
  bootstrap?: { keyslots: string; slot: number | undefined };
  /** `slot:salt:token id` of bindings proven to decrypt. */
  decrypting: Set<string>;
}

export const newKdfMemo = (): KdfMemo => ({ decrypting: new Set() });

export async function observe(remote: Remote, device: string, pollMs: number, memo: KdfMemo = newKdfMemo()): Promise<EnrollFacts> {
  const step = 'observe the machine';
  const header = await readHeader(remote, device, step);
  const reencryptRunning = await unitActive(remote, REENCRYPT_UNIT, pollMs);
  const initramfsRunning = await unitActive(remote, INITRAMFS_UNIT, pollMs);
  const keyslots = JSON.stringify(header.keyslots.map((slot) => [slot, header.keyslotSalts[slot] ?? '']));
  if (memo.bootstrap?.keyslots !== keyslots) memo.bootstrap = { keyslots, slot: await slotOpenedBy(remote, device, BOOTSTRAP) };
  const bootstrapSlot = memo.bootstrap.slot;
  const state = await readStateFiles(remote, STATE, STATE_FILES);
  const imageDigestSalt = state[IMAGE_DIGEST];
  const rotated = rotatedFrom(header, imageDigestSalt);
  const bindings = [];
  for (const binding of await readBindings(remote, device, header, step)) {
    // Before the rotation no binding counts (the build-time one goes with the image's key): no need to ask Tang.
    const proof = `${binding.slot}:${header.keyslotSalts[binding.slot] ?? ''}:${binding.tokenId}`;
    const decrypts = (rotated || bootstrapSlot === undefined) && (memo.decrypting.has(proof) || (await bindingDecrypts(remote, device, binding.slot)));
    if (decrypts) memo.decrypting.add(proof);
    bindings.push({ ...binding, decrypts });
  }
  const known = new Set([bootstrapSlot, RECOVERY_SLOT, ...bindings.map((b) => b.slot)]);
  return {
    device,
    header,
    reencryptRunning,
    initramfsRunning,
    bootstrapSlot,
    imageDigestSalt,
    bindings,
    // While a re-encryption is on, its new keyslot is no stray one.
    strayKeyslots: header.reencryptInProgress || reencryptRunning ? [] : header.keyslots.filter((s) => !known.has(s)),
    orphanTokens: orphanClevisTokens(header),
    dropbearDone: state[DROPBEAR_DONE],
  };
}

export interface EnrollReport {
  device: string;
  /** enrolled: by this run (maybe continuing an earlier one); already-enrolled: nothing was left to do. */
  result: 'enrolled' | 'already-enrolled';
  /** The steps this run took, in order. */
  steps: EnrollStep[];
  keyslotsBefore: number[];
  keyslotsAfter: number[];
  tang: { slot: number; pin: string; servers: BoundTangServer[] }[];
  /** What this run trusted (empty when it made no binding). */
  trusted: Array<Omit<TrustedTang, 'adv'>>;
  /** undefined: enrolled before keylessgo recorded the image's key (nothing to compare with). */
  volumeKeyChanged?: boolean;
  bootstrapRemoved: boolean;
  recovery: { slot: number; file?: string; note: string };
  dropbear: DropbearAction;
  /** The initramfs's dropbear host keys now (OpenSSH public key lines): what `unlock --known-hosts` must list from now on. */
  dropbearHostKeys: string[];
  stepSeconds: Record<string, number>;
}

/** The binding passphrase chosen for the recovery keyslot, and what the report says about it. */
async function recoveryPassphrase(recoveryKeyOut: string | undefined, log: EnrollLog): Promise<{ passphrase: string; note: string }> {
  if (recoveryKeyOut) {
    const existing = await readFile(recoveryKeyOut, 'utf8').catch((error: NodeJS.ErrnoException) => {
      if (error.code === 'ENOENT') return undefined;
      throw error;
    });
    // Written before the keyslot is added: an interrupted run left it behind; use it, never a second one.
    if (existing !== undefined) {
      log.warn(`enroll: ${recoveryKeyOut} exists (left by an interrupted run): its passphrase becomes the recovery passphrase`);
      return { passphrase: existing.trim(), note: `added, from the existing ${recoveryKeyOut}` };
    }
    const passphrase = randomBytes(24).toString('base64url');
    await writeFile(recoveryKeyOut, `${passphrase}\n`, { mode: 0o600, flag: 'wx' });
    return { passphrase, note: `added, written to ${recoveryKeyOut}` };
  }
  return { passphrase: randomBytes(24).toString('base64url'), note: 'added (not written out: no --recovery-key-out)' };
}

/** What the report says about a recovery keyslot an earlier run added. */
async function existingRecoveryNote(remote: Remote, device: string, recoveryKeyOut: string | undefined): Promise<string> {
  const text = recoveryKeyOut ? await readFile(recoveryKeyOut, 'utf8').catch(() => undefined) : undefined;
  if (text === undefined) return `added by an earlier run; its passphrase is wherever that run wrote it${recoveryKeyOut ? ` (${recoveryKeyOut} does not exist: no new one was made)` : ''}`;
  await stageSecret(remote, RECOVERY, text.trim());
  const opens = await succeeds(remote, `cryptsetup open --test-passphrase --key-slot ${RECOVERY_SLOT} --key-file ${RECOVERY} ${device}`);
  return opens ? `added by an earlier run, ${recoveryKeyOut} opens it` : `added by an earlier run; ${recoveryKeyOut} does NOT open it`;
}

export async function enroll(remote: Remote, options: EnrollOptions): Promise<EnrollReport> {
  const { log } = options;
  const pollMs = options.pollMs ?? 5000;
  const stepSeconds: Record<string, number> = {};
  const steps: EnrollStep[] = [];
  const device = await findRootDevice(remote, 'find the root LUKS device');
  let trusted: TrustedTang[] | undefined;
  const trust = async () => (trusted ??= await trustTang(remote, options.tangUrls, options.tangThps, log, 'check Tang from the machine'));
  let recoveryNote: string | undefined;

  await stageSecret(remote, BOOTSTRAP, options.bootstrapPassphrase);
  try {
    const memo = newKdfMemo();
    let facts = await observe(remote, device, pollMs, memo);
    const keyslotsBefore = facts.header.keyslots;
    for (;;) {
      const step = nextStep(facts, options.dropbear);
      if (step === 'enrolled') break;
      // Each step moves the machine on; more rounds than steps means two steps undo each other.
      if (steps.length > MAX_ROUNDS) throw new EnrollError(step, `still not enrolled after ${steps.length} steps (${steps.join(', ')})`);
      log.info(`enroll: ${step}`);
      steps.push(step);
      const started = performance.now();
      await runStep(step, facts);
      stepSeconds[step] = (stepSeconds[step] ?? 0) + Math.round((performance.now() - started) / 100) / 10;
      const next = await observe(remote, device, pollMs, memo);
      // A step that changed nothing would be picked again forever.
      if (nextStep(next, options.dropbear) === step && !step.startsWith('wait')) throw new EnrollError(step, `the machine shows no effect of it${await journalTail(step)}`);
      facts = next;
    }
    const bound = facts.bindings.filter((b) => b.decrypts);
    return {
      device,
      result: steps.length === 0 ? 'already-enrolled' : 'enrolled',
      steps,
      keyslotsBefore,
      keyslotsAfter: facts.header.keyslots,
      tang: bound.map((b) => ({ slot: b.slot, pin: b.pin, servers: b.servers })),
      trusted: (trusted ?? []).map(({ adv: _adv, ...rest }) => rest),
      volumeKeyChanged: facts.imageDigestSalt === undefined ? undefined : volumeKeyRotated(facts),
      bootstrapRemoved: true,
      recovery: facts.header.keyslots.includes(RECOVERY_SLOT)
        ? { slot: RECOVERY_SLOT, file: options.recoveryKeyOut, note: recoveryNote ?? (await existingRecoveryNote(remote, device, options.recoveryKeyOut)) }
        : { slot: RECOVERY_SLOT, note: 'none (enrolled without one)' },
      dropbear: options.dropbear,
      dropbearHostKeys: options.dropbear === 'remove' ? [] : (await remote.run(DROPBEAR_PUBLIC_KEYS)).output.split('\n').filter((line) => line.trim()),
      stepSeconds,
    };
  } finally {
    await remote.run(wipeCommand(SECRETS));
  }

  async function journalTail(step: EnrollStep): Promise<string> {
    const unit = step === 'update dropbear' ? INITRAMFS_UNIT : step.includes('re-encryption') || step.startsWith('rotate') ? REENCRYPT_UNIT : undefined;
    if (!unit) return '';
    const outcome = await unitOutcome(remote, unit);
    return outcome.ended === 'done' ? `; ${unit} ended without an error` : `; the end of ${unit}'s journal: ${outcome.lastLines.join(' | ')}`;
  }

  /** Follows a detached unit to its end; throws with its failed command, exit status and last lines. */
  async function awaitUnit(unit: string, step: string): Promise<void> {
    await followUnit(remote, unit, log, pollMs);
    await expectUnitDone(remote, unit, step);
  }

  async function startReencrypt(args: string, step: EnrollStep): Promise<void> {
    await must(remote, 'stage secrets', `umask 077 && cp ${BOOTSTRAP} ${UNIT_KEY}`);
    // No --batch-mode: it silences the progress lines, the only sign of life of a re-encryption that takes hours on a large disk (it asks nothing here: key file, stdin /dev/null).
    const command = `cryptsetup reencrypt --key-file ${UNIT_KEY} --progress-frequency 10 ${args} ${device}`;
    await must(remote, 'start the re-encryption', detachedUnitCommand(REENCRYPT_UNIT, [{ label: command, script: `stdbuf -oL ${command}` }], wipeCommand(UNIT_KEY)));
    await awaitUnit(REENCRYPT_UNIT, step);
  }

  async function runStep(step: EnrollStep, facts: EnrollFacts): Promise<void> {
    switch (step) {
      case 'wait for the re-encryption':
        return awaitUnit(REENCRYPT_UNIT, step);
      case 'wait for the initramfs rebuild':
        return awaitUnit(INITRAMFS_UNIT, step);
      case 'resume the re-encryption':
        return startReencrypt('--resume-only', step);
      case 'rotate the volume key': {
        // Tang must answer before the image's key (and with it the build-time binding) goes.
        const [pin, config] = clevisPinConfig(await trust(), options.threshold, options.tpm2);
        await must(remote, step, `test "$(printf ok | clevis encrypt ${pin} ${shellQuote(config)} | clevis decrypt)" = ok`);
        const salt = facts.header.digestSalts[0];
        await must(remote, step, `mkdir -p ${STATE} && { test -s ${STATE}/${IMAGE_DIGEST} || echo ${salt} > ${STATE}/${IMAGE_DIGEST}; }`);
        return startReencrypt(`--key-slot ${facts.bootstrapSlot} --resilience checksum`, step);
      }
      case 'remove stale bindings':
        // A binding that does not decrypt because Tang is down now must stay: fail here instead.
        if (facts.bindings.some((b) => !b.decrypts)) await trust();
        for (const binding of facts.bindings.filter((b) => !b.decrypts)) await must(remote, step, unbindCommand(device, binding.slot, `cat ${BOOTSTRAP}`));
        for (const id of facts.orphanTokens) await must(remote, step, `cryptsetup token remove --token-id ${id} ${device}`);
        for (const slot of facts.strayKeyslots) await must(remote, step, `cryptsetup luksKillSlot --batch-mode --key-file ${BOOTSTRAP} ${device} ${slot}`);
        return;
      case 'bind to Tang': {
        const [pin, config] = clevisPinConfig(await trust(), options.threshold, options.tpm2);
        await must(remote, step, `clevis luks bind -y -d ${device} -k ${BOOTSTRAP} ${pin} ${shellQuote(config)}`);
        return;
      }
      case 'add the recovery passphrase': {
        const { passphrase, note } = await recoveryPassphrase(options.recoveryKeyOut, log);
        log.redactor.add(passphrase);
        await stageSecret(remote, RECOVERY, passphrase);
        await must(remote, step, `cryptsetup luksAddKey --batch-mode --key-slot ${RECOVERY_SLOT} --key-file ${BOOTSTRAP} ${device} ${RECOVERY}`);
        await must(remote, step, `cryptsetup open --test-passphrase --key-slot ${RECOVERY_SLOT} --key-file ${RECOVERY} ${device}`);
        recoveryNote = note;
        return;
      }
      case 'update dropbear': {
        const action = options.dropbear as Exclude<DropbearAction, 'keep'>;
        const done = { label: `record ${action}`, script: `mkdir -p ${STATE} && echo ${action} > ${STATE}/${DROPBEAR_DONE}` };
        await must(remote, step, detachedUnitCommand(INITRAMFS_UNIT, [...DROPBEAR_STEPS[action], done]));
        return awaitUnit(INITRAMFS_UNIT, step);
      }
      case 'remove the bootstrap passphrase':
        await must(remote, step, `cryptsetup luksRemoveKey --batch-mode --key-file ${BOOTSTRAP} ${device}`);
        if (await slotOpenedBy(remote, device, BOOTSTRAP) !== undefined) throw new EnrollError(step, 'the bootstrap passphrase still opens the volume');
        return;
      case 'enrolled':
        return;
    }
  }
}
