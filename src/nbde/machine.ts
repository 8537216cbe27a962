/**
 * What enroll and rebind read from and do on a deployed machine's root LUKS2 volume, through
 * a root shell (`Remote`): find the device, read its header and clevis bindings, stage and
 * wipe secrets, run and follow detached systemd units. Host commands on the machine:
 * findmnt, cryptsetup (status, luksDump, token export, open --test-passphrase), clevis luks
 * list/pass, systemd-run, systemctl is-active, journalctl, dd, rm.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { EnrollError } from '../errors.js';
import { parseLuksDump, type LuksSummary } from '../host/cryptsetup.js';
import { tangServersInToken, type BoundTangServer } from '../host/clevis.js';
import type { Logger } from '../log.js';
import { shellQuote } from '../base/shell.js';

export { shellQuote };

export interface RemoteResult {
  output: string;
  exitCode: number | undefined;
}

/** Where enroll and rebind say what they do: a Logger, or one host's progress in a fleet run. */
export type EnrollLog = Pick<Logger, 'info' | 'warn' | 'redactor'>;

/** A root shell on the machine. */
export interface Remote {
  run(command: string, stdin?: string): Promise<RemoteResult>;
}


export async function must(remote: Remote, step: string, command: string, stdin?: string): Promise<string> {
  const result = await remote.run(command, stdin);
  if (result.exitCode !== 0) throw new EnrollError(step, `\`${command.split('\n')[0]}\` exited ${result.exitCode ?? 'without status'}: ${result.output.trim().split('\n').slice(-5).join(' | ')}`);
  return result.output;
}

export async function succeeds(remote: Remote, command: string, stdin?: string): Promise<boolean> {
  return (await remote.run(command, stdin)).exitCode === 0;
}

/** The LUKS2 device under / (through its dm-crypt mapping), on a machine with clevis installed. */
export async function findRootDevice(remote: Remote, step: string): Promise<string> {
  const source = (await must(remote, step, 'findmnt -no SOURCE /')).trim();
  const mapper = /^\/dev\/mapper\/(.+)$/.exec(source)?.[1];
  if (!mapper) throw new EnrollError(step, `/ is on ${source}, not on a dm-crypt mapping`);
  const status = await must(remote, step, `cryptsetup status ${shellQuote(mapper)}`);
  const device = /^\s*device:\s*(\S+)/m.exec(status)?.[1];
  if (!device) throw new EnrollError(step, `no backing device in cryptsetup status ${mapper}`);
  await must(remote, step, 'command -v clevis && dpkg-query -W clevis-luks clevis-initramfs');
  return device;
}

export interface LuksHeader extends LuksSummary {
  /** An online re-encryption was started and has not finished (header requirement online-reencrypt-v2). */
  reencryptInProgress: boolean;
  /** Salts of the volume-key digests: a new volume key comes with a new digest. */
  digestSalts: string[];
  /** Tokens by id with their type and the keyslots they are assigned to. */
  tokens: Array<{ id: number; type: string; keyslots: number[] }>;
  /** Each keyslot's KDF salt: a keyslot written again gets a new one. */
  keyslotSalts: Record<number, string>;
}

/** luksDump text → the facts enroll and rebind decide on. */
export function parseLuksHeader(text: string): LuksHeader {
  const section = (name: string) => new RegExp(`^${name}:\\n([\\s\\S]*?)(?=^\\S|(?![\\s\\S]))`, 'm').exec(text)?.[1] ?? '';
  const digestSalts = [...section('Digests').matchAll(/Salt:\s+((?:[0-9a-f]{2} ?)+(?:\n\s+(?:[0-9a-f]{2} ?)+)*)/g)].map((m) => m[1]!.replace(/\s+/g, ''));
  const tokens = [...section('Tokens').matchAll(/^ {2}(\d+): (\S+)\n((?:\t.*\n?)*)/gm)].map((m) => ({
    id: Number(m[1]),
    type: m[2]!,
    keyslots: [...(/Keyslot:\s+([\d ]+)/.exec(m[3]!)?.[1]?.trim().split(/\s+/) ?? [])].filter(Boolean).map(Number),
  }));
  const keyslotSalts = Object.fromEntries(
    [...section('Keyslots').matchAll(/^ {2}(\d+): luks2\n((?:\t.*\n?)*)/gm)].map((m) => [Number(m[1]), /Salt:\s+((?:[0-9a-f]{2} ?)+(?:\n\s+(?:[0-9a-f]{2} ?)+)*)/.exec(m[2]!)?.[1]?.replace(/\s+/g, '') ?? '']),
  );
  return { ...parseLuksDump(text), reencryptInProgress: /^Requirements:.*online-reencrypt/m.test(text), digestSalts, tokens, keyslotSalts };
}

export async function readHeader(remote: Remote, device: string, step: string): Promise<LuksHeader> {
  return parseLuksHeader(await must(remote, step, `cryptsetup luksDump ${device}`));
}

export interface ClevisBinding {
  slot: number;
  tokenId: number;
  pin: string;
  servers: BoundTangServer[];
  /** The token as `cryptsetup token export` prints it (its JWE holds the policy). */
  token: string;
}

/** The clevis tokens that name an existing keyslot, with the Tang servers and signing keys each was made with. */
export async function readBindings(remote: Remote, device: string, header: LuksHeader, step: string): Promise<ClevisBinding[]> {
  const bindings: ClevisBinding[] = [];
  for (const token of header.tokens.filter((t) => t.type === 'clevis')) {
    const slot = token.keyslots.find((s) => header.keyslots.includes(s));
    if (slot === undefined) continue;
    const json = await must(remote, step, `cryptsetup token export --token-id ${token.id} ${device}`);
    const protectedHeader = (JSON.parse(json) as { jwe?: { protected?: string } }).jwe?.protected;
    const pin = protectedHeader ? ((JSON.parse(Buffer.from(protectedHeader, 'base64url').toString('utf8')) as { clevis?: { pin?: string } }).clevis?.pin ?? '?') : '?';
    bindings.push({ slot, tokenId: token.id, pin, servers: tangServersInToken(json), token: json });
  }
  return bindings;
}

/** Clevis tokens left without a keyslot (the re-encryption dropped it, or a bind was interrupted). */
export function orphanClevisTokens(header: LuksHeader): number[] {
  return header.tokens.filter((t) => t.type === 'clevis' && !t.keyslots.some((s) => header.keyslots.includes(s))).map((t) => t.id);
}

/** Whether the binding in `slot` gives a passphrase that opens the volume now (asks its Tang servers). */
export function bindingDecrypts(remote: Remote, device: string, slot: number): Promise<boolean> {
  return succeeds(remote, `clevis luks pass -d ${device} -s ${slot} | cryptsetup open --test-passphrase --key-slot ${slot} --key-file - ${device}`);
}

/**
 * Unbinds the clevis binding in `slot`. Its `cryptsetup luksKillSlot` reads a passphrase of
 * another keyslot from stdin when stdin is no terminal: `keySource` is a command printing one.
 */
export function unbindCommand(device: string, slot: number, keySource: string): string {
  return `${keySource} | clevis luks unbind -f -d ${device} -s ${slot}`;
}

/** The keyslot a passphrase file opens, undefined when it opens none. */
export async function slotOpenedBy(remote: Remote, device: string, keyFile: string): Promise<number | undefined> {
  const result = await remote.run(`cryptsetup open --test-passphrase --verbose --key-file ${keyFile} ${device}`);
  if (result.exitCode !== 0) return undefined;
  const slot = /Key slot (\d+) unlocked/.exec(result.output)?.[1];
  return slot === undefined ? undefined : Number(slot);
}

/** Overwrites then removes files or directories of secrets on the machine (tmpfs: no copies elsewhere). */
export function wipeCommand(path: string): string {
  return `for f in $(find ${path} -type f 2>/dev/null); do dd if=/dev/zero of="$f" bs=1 count=$(stat -c %s "$f") conv=notrunc 2>/dev/null; done; rm -rf ${path}`;
}

/** Writes `secret` (on stdin) to `file` in a 0700 directory of /run. */
export function stageSecret(remote: Remote, file: string, secret: string): Promise<string> {
  return must(remote, 'stage secrets', `umask 077 && mkdir -p ${file.slice(0, file.lastIndexOf('/'))} && cat > ${file}`, secret);
}

/** One command of a detached unit: `label` names it in the journal and in errors (no secret in either). */
export interface UnitStep {
  label: string;
  script: string;
}

/**
 * A long step as a transient systemd unit: it goes on when the SSH connection drops or
 * keylessgo is killed. --collect unloads it when it ends, failed or not (a re-run can start
 * one with the same name); whether it did its work is read from the machine afterwards, and
 * how it ended from its journal (`unitOutcome`). The steps run one after the other, each
 * announced and with its output in the unit's journal; the first that fails ends the unit
 * with a line naming it and its exit status.
 */
export function detachedUnitCommand(unit: string, steps: readonly UnitStep[], stopPost?: string): string {
  const properties = ['SyslogIdentifier=keylessgo-enroll', ...(stopPost ? [`ExecStopPost=/bin/sh -c ${shellQuote(systemdLiteral(stopPost))}`] : [])];
  return `systemd-run --quiet --collect --unit=${unit} ${properties.map((p) => `--property=${shellQuote(p)}`).join(' ')} /bin/sh -c ${shellQuote(systemdLiteral(unitScript(steps)))}`;
}

/**
 * A command line word systemd passes on as it is: systemd replaces `${NAME}` anywhere in an
 * Exec line with the environment's value (empty here), and `$$` with `$`. Unescaped, a
 * script's `dropbear_${t}_host_key` became `dropbear__host_key`.
 */
export function systemdLiteral(word: string): string {
  return word.replaceAll('$', '$$$$');
}

const UNIT_MARK = 'keylessgo-step:';
const UNIT_DONE = `${UNIT_MARK} done`;

/** The script of a detached unit (see detachedUnitCommand). */
export function unitScript(steps: readonly UnitStep[]): string {
  return [
    `step() { echo "${UNIT_MARK} running: $1"; /bin/sh -c "$2" 2>&1 || { status=$?; echo "${UNIT_MARK} exited $status: $1"; exit "$status"; }; }`,
    ...steps.map(({ label, script }) => `step ${shellQuote(label)} ${shellQuote(script)}`),
    `echo "${UNIT_DONE}"`,
  ].join('\n');
}

/** How a detached unit's last run ended, read from its journal. */
export type UnitOutcome = { ended: 'done' } | { ended: 'failed'; label: string; status: number; lastLines: string[] } | { ended: 'unknown'; lastLines: string[] };

/** The outcome in a unit's journal lines (oldest first): its last step line tells. */
export function parseUnitOutcome(journal: string): UnitOutcome {
  const lines = journal.split('\n').map((line) => line.trimEnd()).filter(Boolean);
  let last = -1;
  lines.forEach((line, index) => line.startsWith(UNIT_MARK) && (last = index));
  const mark = lines[last] ?? '';
  if (mark === UNIT_DONE) return { ended: 'done' };
  const failed = /^keylessgo-step: exited (\d+): (.*)$/.exec(mark);
  // The command's own last lines come before the line that names it.
  if (failed) return { ended: 'failed', status: Number(failed[1]), label: failed[2]!, lastLines: lines.slice(Math.max(0, last - 8), last) };
  return { ended: 'unknown', lastLines: lines.slice(-8) };
}

export async function unitOutcome(remote: Remote, unit: string): Promise<UnitOutcome> {
  return parseUnitOutcome((await remote.run(unitJournalCommand(unit, 40))).output);
}

/** Throws, naming the command, its exit status and its last lines, when the unit's last run failed. */
export async function expectUnitDone(remote: Remote, unit: string, step: string): Promise<void> {
  const outcome = await unitOutcome(remote, unit);
  if (outcome.ended !== 'failed') return;
  throw new EnrollError(step, `\`${outcome.label}\` exited ${outcome.status} in ${unit}; its last lines: ${outcome.lastLines.join(' | ') || '(none)'} (journalctl -u ${unit})`);
}

/**
 * Small state files in `dir`, each holding one value, read in one round trip as `name=value`
 * lines: each file on its own, so one value's trailing newline (as `echo` writes it) never
 * shifts another. An absent file is an absent key.
 */
export function stateFilesCommand(dir: string, names: readonly string[]): string {
  return `cd ${dir} 2>/dev/null && for f in ${names.join(' ')}; do [ -f "$f" ] && printf '%s=%s\\n' "$f" "$(head -n 1 "$f")"; done; true`;
}

export function parseStateFiles<Name extends string>(output: string, names: readonly Name[]): Partial<Record<Name, string>> {
  const values: Partial<Record<Name, string>> = {};
  for (const line of output.split('\n')) {
    const at = line.indexOf('=');
    const name = line.slice(0, at) as Name;
    const value = line.slice(at + 1).trim();
    if (at > 0 && names.includes(name) && value) values[name] = value;
  }
  return values;
}

export async function readStateFiles<Name extends string>(remote: Remote, dir: string, names: readonly Name[]): Promise<Partial<Record<Name, string>>> {
  return parseStateFiles((await remote.run(stateFilesCommand(dir, names))).output, names);
}

/**
 * Whether `unit` is still running. Only `inactive` or `failed` count as ended (a transient
 * unit that is gone reads `inactive`): on a loaded machine systemctl can time out talking
 * to systemd, and a wrong "ended" would start a second re-encryption beside the first.
 */
export async function unitActive(remote: Remote, unit: string, retryMs = 5000): Promise<boolean> {
  let answer = '';
  for (let attempt = 0; attempt < 6; attempt++) {
    answer = (await remote.run(`systemctl is-active ${unit}`)).output.trim();
    if (['active', 'activating', 'deactivating', 'reloading'].includes(answer)) return true;
    if (answer === 'inactive' || answer === 'failed') return false;
    await sleep(retryMs);
  }
  throw new EnrollError('follow the machine', `cannot tell whether ${unit} runs: systemctl is-active said ${JSON.stringify(answer)}`);
}

export function unitJournalCommand(unit: string, lines: number): string {
  return `journalctl --no-pager -o cat -n ${lines} -u ${unit}`;
}

/** Polls until `unit` has ended, logging each new last line of its journal (progress). */
export async function followUnit(remote: Remote, unit: string, log: EnrollLog, pollMs: number): Promise<void> {
  let last = '';
  while (await unitActive(remote, unit, pollMs)) {
    const line = (await remote.run(unitJournalCommand(unit, 1))).output.trim();
    if (line && line !== last) log.info(`  ${unit}: ${line}`);
    last = line;
    await sleep(pollMs);
  }
}
