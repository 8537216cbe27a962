/**
 * `keylessgo status`: read-only, per host, over SSH to the booted system: LUKS2 keyslots and
 * tokens, each clevis binding (pin, Tang URLs and signing-key thumbprints, whether it
 * decrypts now), whether the bootstrap passphrase still opens the volume (tested on the
 * machine, passphrase on stdin), whether the volume key is still the image's (the header's
 * digest against manifest.json), whether dropbear is in the running kernel's initramfs.
 * With the current Tang signing keys (--tang-thp, --tang), bindings that depend only on
 * older keys are flagged: when no host has one, the old keys can be retired.
 */
import type { Client } from 'ssh2';
import { InputError } from '../errors.js';
import { clevisPinInToken, tangServersInToken, tpm2JwesInToken, type BoundTangServer } from '../host/clevis.js';
import { parseTpm2Lockout, TPM2_LOCKOUT_COMMAND, type Tpm2Lockout } from '../host/tpm2.js';
import { TEMPORARY_SLOT } from '../nbde/reseal.js';
import { ESP_SYNC } from '../stages/bootloader.js';
import { LUKS_JSON_DUMP_ARGS, luksHeaderDigests, parseLuksJsonHeader, type LuksHeaderDigest } from '../host/cryptsetup.js';
import { fetchAdvertisement, parseAdvertisement } from '../host/tang.js';
import type { Logger } from '../log.js';
import { readPassphraseFile } from '../base/secrets.js';
import { readBootManifest } from '../formats/build-manifest.js';
import { exec, readPrivateKey, type HostKey } from '../ssh/client.js';
import { connectTarget, noSshServer, probeSshServer, RETRY_ATTEMPTS } from './connect.js';
import { readHostKeyTrust, type HostKeyTrust } from './host-keys.js';
import { runFleet, type FleetReport, type HostProgress, type TaskVerdict } from './run.js';
import type { FleetTarget } from './targets.js';

/** clevis has no HTTP timeout of its own: an unreachable Tang would hang `clevis luks pass`. */
export const TANG_CHECK_SECONDS = 30;
const COMMAND_TIMEOUT_MS = 180_000;

/** The backing device of the dm-crypt mapping the root filesystem is on. */
export const ROOT_DEVICE_COMMAND = `src=$(findmnt -no SOURCE /) && cryptsetup status "\${src#/dev/mapper/}" | sed -n 's/^ *device: *//p'`;
/**
 * yes/no/unknown. lsinitramfs cannot read an image's initramfs as built (keylessgo appends a
 * per-build archive after the compressed one) and then lists no `init`: that is "unknown", not "no".
 */
export const DROPBEAR_IN_INITRAMFS_COMMAND = `lsinitramfs "/boot/initrd.img-$(uname -r)" 2>/dev/null | awk '/(^|\\/)s?bin\\/dropbear$/ {d=1} /^(main\\/)?init$/ {i=1} END {print d ? "yes" : i ? "no" : "unknown"}'`;

export function luksJsonCommand(device: string): string {
  return ['cryptsetup', ...LUKS_JSON_DUMP_ARGS, device].join(' ');
}

/** The passphrase arrives on stdin; the command line holds none. */
export function testPassphraseCommand(device: string): string {
  return `cryptsetup open --test-passphrase --key-file - ${device}`;
}

/** A tpm2 pin's JWE on stdin; its share goes to /dev/null: exit 0 means the TPM unseals it with today's PCRs. */
export const TPM2_UNSEAL_COMMAND = 'clevis decrypt >/dev/null 2>&1';

/** The binding's secret goes to /dev/null on the machine; exit 0 means Tang (or the TPM) answered and it decrypts. */
export function bindingDecryptsCommand(device: string, slot: number): string {
  return `timeout ${TANG_CHECK_SECONDS} clevis luks pass -d ${device} -s ${slot} >/dev/null`;
}

export interface BindingStatus {
  token: number;
  keyslots: number[];
  pin: string;
  /** Tang servers with the signing keys the binding was made with; `current`: one of them is current (with --tang-thp/--tang). */
  servers: Array<BoundTangServer & { current?: boolean }>;
  /** Decrypts now (Tang reachable, or the TPM unseals). */
  decrypts: boolean;
  /** Depends on Tang signing keys none of which is current (with --tang-thp/--tang). */
  dependsOnOldKey?: boolean;
  /** With a tpm2 pin: whether the TPM alone still unseals its part with today's PCR values. */
  tpm2Unseals?: boolean;
  /** The temporary binding `reseal --prepare` made (keyslot 30). */
  temporary?: boolean;
}

export interface HostStatus {
  /** `locked`: dropbear answers, the machine waits for its passphrase. */
  state: 'up' | 'locked';
  hostKey?: HostKey;
  device?: string;
  keyslots: number[];
  tokens: Array<{ id: number; type: string; keyslots: number[] }>;
  bindings: BindingStatus[];
  bootstrapPassphrase: 'opens' | 'refused' | 'not tested';
  /** `image`: the header still has the image's volume key digest; `rotated`: it does not. */
  volumeKey: 'image' | 'rotated' | 'unknown';
  /** Undefined: could not be read (see DROPBEAR_IN_INITRAMFS_COMMAND). */
  dropbearInInitramfs?: boolean;
  /** The TPM's dictionary-attack lockout state, when the machine has a TPM (and tpm2-tools). */
  tpm?: Tpm2Lockout;
  /** Whether the ESP holds the installed packages' loaders (esp-sync --check); undefined: an image without esp-sync. */
  espInStep?: boolean;
  /** What esp-sync --check found out of step. */
  espOutOfStep?: string[];
}

export interface StatusInputs {
  privateKey: string;
  passphrase?: string;
  trust?: HostKeyTrust;
  imageDigests?: LuksHeaderDigest[];
  /** Current Tang signing-key thumbprints; empty: not known, nothing flagged. */
  currentThumbprints: string[];
}

async function run(client: Client, command: string, signal: AbortSignal, stdin?: string) {
  return exec(client, command, { timeoutMs: COMMAND_TIMEOUT_MS, signal, stdin });
}

async function must(client: Client, command: string, signal: AbortSignal): Promise<string> {
  const result = await run(client, command, signal);
  if (result.exitCode !== 0) throw new Error(`\`${command}\` exited ${result.exitCode ?? 'without status'}: ${result.output.trim().split('\n').at(-1) ?? ''}`);
  return result.output;
}

/** Bindings and tokens from the JSON header; current thumbprints flag bindings on old keys. */
export function readBindings(headerText: string, currentThumbprints: readonly string[]): Pick<HostStatus, 'keyslots' | 'tokens'> & { bindings: Array<Omit<BindingStatus, 'decrypts' | 'tpm2Unseals'> & { tpm2Jwes: string[] }>; digests: LuksHeaderDigest[] } {
  const header = parseLuksJsonHeader(headerText);
  const tokens = Object.entries(header.tokens).map(([id, token]) => ({ id: Number(id), type: token.type, keyslots: token.keyslots.map(Number) }));
  const bindings = Object.entries(header.tokens).flatMap(([id, token]) => {
    const json = JSON.stringify(token);
    const pin = clevisPinInToken(json);
    if (!pin) return [];
    const servers = tangServersInToken(json).map((server) => ({ ...server, ...(currentThumbprints.length > 0 ? { current: server.thumbprints.some((t) => currentThumbprints.includes(t)) } : {}) }));
    const dependsOnOldKey = currentThumbprints.length > 0 && servers.length > 0 ? servers.every((s) => !s.current) : undefined;
    const keyslots = token.keyslots.map(Number);
    return [{ token: Number(id), keyslots, pin, servers, ...(dependsOnOldKey === undefined ? {} : { dependsOnOldKey }), ...(keyslots.includes(TEMPORARY_SLOT) ? { temporary: true } : {}), tpm2Jwes: tpm2JwesInToken(json) }];
  });
  return { keyslots: Object.keys(header.keyslots).map(Number), tokens, bindings, digests: luksHeaderDigests(header) };
}

export function compareVolumeKey(machine: readonly LuksHeaderDigest[], image: readonly LuksHeaderDigest[] | undefined): HostStatus['volumeKey'] {
  if (!image || image.length === 0) return 'unknown';
  return machine.some((m) => image.some((i) => i.salt === m.salt && i.digest === m.digest)) ? 'image' : 'rotated';
}

export async function hostStatus(target: FleetTarget, inputs: StatusInputs, progress: HostProgress): Promise<HostStatus> {
  progress.phase('reading the SSH banner');
  const probe = await probeSshServer(target, RETRY_ATTEMPTS, progress.signal);
  if (probe.server === 'dropbear') return { state: 'locked', keyslots: [], tokens: [], bindings: [], bootstrapPassphrase: 'not tested', volumeKey: 'unknown' };
  if (probe.server === 'none') throw noSshServer(target, probe.why);
  progress.phase('connecting');
  const { client, hostKey } = await connectTarget(target, inputs.privateKey, progress.signal, inputs.trust);
  const { signal } = progress;
  try {
    progress.phase('reading the LUKS2 header');
    const device = (await must(client, ROOT_DEVICE_COMMAND, signal)).trim();
    if (!device.startsWith('/dev/')) throw new Error(`/ is not on a dm-crypt mapping (found "${device}")`);
    const found = readBindings(await must(client, luksJsonCommand(device), signal), inputs.currentThumbprints);
    let bootstrapPassphrase: HostStatus['bootstrapPassphrase'] = 'not tested';
    if (inputs.passphrase !== undefined) {
      progress.phase('testing the bootstrap passphrase');
      const result = await run(client, testPassphraseCommand(device), signal, inputs.passphrase);
      // cryptsetup exits 2 for "No key available with this passphrase"; anything else is a failure to test.
      if (result.exitCode !== 0 && result.exitCode !== 2) throw new Error(`could not test the passphrase: ${result.output.trim().split('\n').at(-1) ?? ''}`);
      bootstrapPassphrase = result.exitCode === 0 ? 'opens' : 'refused';
    }
    const bindings: BindingStatus[] = [];
    for (const { tpm2Jwes, ...binding } of found.bindings) {
      progress.phase(`checking the ${binding.pin} binding in keyslot ${binding.keyslots.join(',')}`);
      const decrypts = (await run(client, bindingDecryptsCommand(device, binding.keyslots[0]!), signal)).exitCode === 0;
      let tpm2Unseals: boolean | undefined;
      for (const jwe of tpm2Jwes) tpm2Unseals = (tpm2Unseals ?? true) && (await run(client, TPM2_UNSEAL_COMMAND, signal, jwe)).exitCode === 0;
      bindings.push({ ...binding, decrypts, ...(tpm2Unseals === undefined ? {} : { tpm2Unseals }) });
    }
    progress.phase('checking the ESP against the installed packages');
    const esp = await run(client, `[ -x ${ESP_SYNC} ] || exit 127; ${ESP_SYNC} --check 2>&1`, signal);
    progress.phase('reading the TPM lockout state');
    const tpm = parseTpm2Lockout((await run(client, `[ -e /dev/tpmrm0 ] && ${TPM2_LOCKOUT_COMMAND} 2>/dev/null`, signal)).output);
    progress.phase('looking for dropbear in the initramfs');
    const dropbear = (await run(client, DROPBEAR_IN_INITRAMFS_COMMAND, signal)).output.trim();
    return {
      state: 'up',
      hostKey,
      device,
      keyslots: found.keyslots,
      tokens: found.tokens,
      bindings,
      bootstrapPassphrase,
      volumeKey: compareVolumeKey(found.digests, inputs.imageDigests),
      ...(dropbear === 'yes' || dropbear === 'no' ? { dropbearInInitramfs: dropbear === 'yes' } : {}),
      ...(tpm ? { tpm } : {}),
      ...(esp.exitCode === 127 ? {} : { espInStep: esp.exitCode === 0, ...(esp.exitCode === 0 ? {} : { espOutOfStep: esp.output.trim().split('\n').filter(Boolean) }) }),
    };
  } finally {
    client.end();
  }
}

function bindingText(binding: BindingStatus): string {
  const servers = binding.servers.map((s) => `${s.url} [${s.thumbprints.join(', ')}]${s.current === false ? ' (old key)' : ''}`);
  const tpm2 = binding.tpm2Unseals === undefined ? '' : binding.tpm2Unseals ? ", its TPM part unseals with today's PCRs" : ", its TPM part does NOT unseal with today's PCRs (reseal --finish)";
  return `${binding.pin} in keyslot ${binding.keyslots.join(',')}${binding.temporary ? ' (temporary, from reseal --prepare)' : ''}${servers.length > 0 ? `: ${servers.join('; ')}` : ''}, ${binding.decrypts ? 'decrypts now' : 'does NOT decrypt now'}${tpm2}`;
}

function lockoutText(tpm: Tpm2Lockout): string {
  return `${tpm.counter} of ${tpm.maxTries} failures counted${tpm.counter >= tpm.maxTries ? ' (LOCKED OUT: the TPM refuses the tpm2 pin)' : ''}; one forgotten every ${tpm.recoverySeconds} s while powered`;
}

/** One line for the summary table. */
export function describeStatus(status: HostStatus): TaskVerdict {
  if (status.state === 'locked') return { summary: 'at dropbear, locked' };
  const old = status.bindings.filter((b) => b.dependsOnOldKey).length;
  const decrypting = status.bindings.filter((b) => b.decrypts).length;
  const sealed = status.bindings.filter((b) => b.tpm2Unseals !== undefined);
  const stale = sealed.filter((b) => !b.tpm2Unseals).length;
  const temporary = status.bindings.some((b) => b.temporary);
  return {
    summary: [
      `keyslots ${status.keyslots.join(',')}`,
      `${status.bindings.length} binding(s), ${decrypting} decrypt${old > 0 ? `, ${old} on an OLD Tang key` : ''}${stale > 0 ? `, ${stale} TPM binding(s) NOT unsealing` : ''}${temporary ? ', a temporary binding' : ''}`,
      ...(status.tpm ? [`TPM lockout ${status.tpm.counter}/${status.tpm.maxTries}`] : []),
      ...(status.espInStep === false ? ['ESP OUT OF STEP with its packages'] : []),
      `bootstrap passphrase ${status.bootstrapPassphrase}`,
      `volume key ${status.volumeKey === 'image' ? "the image's" : status.volumeKey}`,
      `dropbear ${status.dropbearInInitramfs === undefined ? 'unknown' : status.dropbearInInitramfs ? 'in' : 'not in'} initramfs`,
    ].join('; '),
  };
}

/** The per-host detail block printed above the summary table. */
export function formatHostStatus(host: string, status: HostStatus): string {
  if (status.state === 'locked') return `${host}: at dropbear, locked (unlock it first: keylessgo unlock)`;
  const rows: Array<[string, string]> = [
    ['host key', status.hostKey ? `${status.hostKey.type} ${status.hostKey.fingerprint}` : '-'],
    ['LUKS device', status.device ?? '-'],
    ['keyslots', status.keyslots.join(', ')],
    ['tokens', status.tokens.map((t) => `${t.id}: ${t.type} (keyslot ${t.keyslots.join(',')})`).join('; ') || 'none'],
    ...status.bindings.map((b): [string, string] => [`binding (token ${b.token})`, bindingText(b)]),
    ['bootstrap passphrase', status.bootstrapPassphrase === 'opens' ? 'still OPENS the volume' : status.bootstrapPassphrase === 'refused' ? 'refused (removed)' : 'not tested (no --passphrase-file)'],
    ['volume key', { image: "the image's (not rotated)", rotated: "differs from the image's", unknown: 'unknown (no manifest with headerDigests)' }[status.volumeKey]],
    ['dropbear in initramfs', status.dropbearInInitramfs === undefined ? 'unknown (lsinitramfs cannot read it)' : status.dropbearInInitramfs ? 'yes' : 'no'],
    ...(status.tpm ? [['TPM lockout', lockoutText(status.tpm)] as [string, string]] : []),
    ['ESP loaders', status.espInStep === undefined ? 'unknown (no esp-sync in this image)' : status.espInStep ? 'in step with the installed packages' : `OUT OF STEP: ${status.espOutOfStep?.join('; ')} (run ${ESP_SYNC})`],
  ];
  const width = Math.max(...rows.map(([name]) => name.length));
  return [`${host}:`, ...rows.map(([name, value]) => `  ${name.padEnd(width)}  ${value}`)].join('\n');
}

export interface StatusOptions {
  keyFile: string;
  passphraseFile?: string;
  manifest?: string;
  knownHosts?: string;
  tangThumbprints: string[];
  tangUrls: string[];
  parallel?: number;
  json: boolean;
  log: Logger;
  /** Default: process.stdout. */
  stdout?: (text: string) => void;
}

async function currentThumbprints(options: StatusOptions): Promise<string[]> {
  const thumbprints = [...options.tangThumbprints];
  for (const url of options.tangUrls) {
    if (!URL.canParse(url)) throw new InputError(`not a URL: ${url}`, '--tang');
    const adv = parseAdvertisement(await fetchAdvertisement(url).catch((error: Error) => {
      throw new InputError(`cannot fetch the current advertisement: ${error.message}`, url);
    }));
    thumbprints.push(...adv.signingThumbprints);
  }
  return thumbprints;
}

export async function statusCommand(targets: FleetTarget[], options: StatusOptions): Promise<FleetReport<HostStatus>> {
  if (options.passphraseFile && !options.knownHosts) {
    throw new InputError('--passphrase-file sends the bootstrap passphrase to each host: give --known-hosts FILE with their OpenSSH host keys, so that it goes to no other machine');
  }
  const privateKey = await readPrivateKey(options.keyFile);
  const passphrase = options.passphraseFile ? await readPassphraseFile(options.passphraseFile) : undefined;
  if (passphrase) options.log.redactor.add(passphrase);
  const trust = options.knownHosts ? await readHostKeyTrust({ knownHosts: options.knownHosts }) : undefined;
  const imageDigests = options.manifest ? ((await readBootManifest(options.manifest)).luks.headerDigests ?? undefined) : undefined;
  if (options.manifest && !imageDigests) options.log.warn(`${options.manifest} has no luks.headerDigests (built before keylessgo status): the volume key cannot be compared`);
  const inputs: StatusInputs = { privateKey, passphrase, trust, imageDigests, currentThumbprints: await currentThumbprints(options) };
  const stdout = options.stdout ?? ((text: string) => void process.stdout.write(text));
  return runFleet(
    targets,
    { command: 'status', log: options.log, parallel: options.parallel, json: options.json, describe: describeStatus, stdout, formatDetails: options.json ? undefined : formatHostStatus },
    (target, progress) => hostStatus(target, inputs, progress),
  );
}
