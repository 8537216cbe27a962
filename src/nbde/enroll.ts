/**
 * `keylessgo enroll`: turns a deployed machine that was unlocked with the bootstrap
 * passphrase into one that unlocks itself through Tang, with a per-machine volume key and
 * a recovery passphrase, over SSH. Steps, each verified before the next, ordered so that an
 * interruption anywhere leaves at least one way in:
 *
 *   1. Tang reachable from the machine (a clevis encrypt/decrypt round trip)
 *   2. new volume key (online `cryptsetup reencrypt` with the bootstrap keyslot; this drops
 *      every other keyslot, so a build-time Tang binding is removed with its token)
 *   3. Tang binding made on this machine (unique secret), verified with `clevis luks pass`
 *   4. recovery passphrase added and tested
 *   5. bootstrap passphrase removed, and tested to fail
 *   6. dropbear host key regenerated (it came from the image), or dropbear removed, and
 *      the initramfs rebuilt
 *
 * Secrets cross the SSH channel on stdin into a 0700 directory on the machine's /run
 * (tmpfs), are overwritten and removed at the end, and never appear in any command line.
 */
import { randomBytes } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { EnrollError } from '../errors.js';
import { parseLuksDump, type LuksSummary } from '../host/cryptsetup.js';
import { clevisPinConfig, parseClevisList, tangServersInToken, type BoundTangServer, type Tpm2Pin } from '../host/clevis.js';
import type { Logger } from '../log.js';

export interface RemoteResult {
  output: string;
  exitCode: number | undefined;
}

/** A root shell on the machine being enrolled. */
export interface Remote {
  run(command: string, stdin?: string): Promise<RemoteResult>;
}

export interface EnrollOptions {
  tangUrls: string[];
  /** Also bind to the machine's TPM (clevis tpm2 pin); the threshold then counts it with the Tang servers. */
  tpm2?: Tpm2Pin;
  threshold: number;
  bootstrapPassphrase: string;
  recoveryKeyOut?: string;
  /** The SSH unlock fallback afterwards: new host key (default), unchanged, or purged. */
  dropbear: DropbearAction;
  log: Logger;
}

export type DropbearAction = 'regenerate-key' | 'keep' | 'remove';

const DROPBEAR_COMMANDS: Record<Exclude<DropbearAction, 'keep'>, string> = {
  'regenerate-key':
    'set -e; for t in ed25519 ecdsa rsa; do rm -f /etc/dropbear/initramfs/dropbear_${t}_host_key; dropbearkey -t $t -f /etc/dropbear/initramfs/dropbear_${t}_host_key >/dev/null; done; update-initramfs -u >/dev/null 2>&1',
  remove: 'set -e; DEBIAN_FRONTEND=noninteractive apt-get purge -y -q dropbear-initramfs >/dev/null; update-initramfs -u >/dev/null 2>&1',
};

export interface EnrollReport {
  device: string;
  keyslotsBefore: number[];
  keyslotsAfter: number[];
  tang: { slot: number; pin: string; servers: BoundTangServer[] };
  volumeKeyChanged: boolean;
  bootstrapRemoved: boolean;
  recoveryKeyFile?: string;
  dropbear: DropbearAction;
  stepSeconds: Record<string, number>;
}


const SECRETS = '/run/keylessgo-enroll';
const BOOTSTRAP = `${SECRETS}/bootstrap`;
const RECOVERY = `${SECRETS}/recovery`;

/** Shell-quotes one word for the remote POSIX shell. */
export function shellQuote(word: string): string {
  return `'${word.replaceAll("'", `'\\''`)}'`;
}

async function must(remote: Remote, step: string, command: string, stdin?: string): Promise<string> {
  const result = await remote.run(command, stdin);
  if (result.exitCode !== 0) throw new EnrollError(step, `\`${command.split('\n')[0]}\` exited ${result.exitCode ?? 'without status'}: ${result.output.trim().split('\n').slice(-5).join(' | ')}`);
  return result.output;
}

async function succeeds(remote: Remote, command: string): Promise<boolean> {
  return (await remote.run(command)).exitCode === 0;
}

/** sha256 of the volume key, computed on the machine: the key itself never leaves it. */
function volumeKeyDigestCommand(device: string, keyFile: string): string {
  return `cryptsetup luksDump --dump-volume-key --batch-mode --key-file ${keyFile} ${device} | sed -n '/MK dump:/,$p' | tr -d ' \\t\\n' | sha256sum | cut -d' ' -f1`;
}

export async function enroll(remote: Remote, options: EnrollOptions): Promise<EnrollReport> {
  const { log } = options;
  const stepSeconds: Record<string, number> = {};
  const step = async <T>(name: string, fn: () => Promise<T>): Promise<T> => {
    log.info(`enroll: ${name}`);
    const started = performance.now();
    const result = await fn();
    stepSeconds[name] = Math.round((performance.now() - started) / 100) / 10;
    return result;
  };

  const device = await step('find the root LUKS device', async () => {
    const source = (await must(remote, 'find the root LUKS device', 'findmnt -no SOURCE /')).trim();
    const mapper = /^\/dev\/mapper\/(.+)$/.exec(source)?.[1];
    if (!mapper) throw new EnrollError('find the root LUKS device', `/ is on ${source}, not on a dm-crypt mapping`);
    const status = await must(remote, 'find the root LUKS device', `cryptsetup status ${shellQuote(mapper)}`);
    const found = /^\s*device:\s*(\S+)/m.exec(status)?.[1];
    if (!found) throw new EnrollError('find the root LUKS device', `no backing device in cryptsetup status ${mapper}`);
    await must(remote, 'find the root LUKS device', 'command -v clevis && dpkg-query -W clevis-luks clevis-initramfs');
    return found;
  });
  const dump = async (): Promise<LuksSummary> => parseLuksDump(await must(remote, 'luksDump', `cryptsetup luksDump ${device}`));
  const before = await dump();

  await must(remote, 'stage secrets', `umask 077 && mkdir -p ${SECRETS} && cat > ${BOOTSTRAP}`, options.bootstrapPassphrase);
  try {
    if (!(await succeeds(remote, `cryptsetup open --test-passphrase --key-file ${BOOTSTRAP} ${device}`))) {
      throw new EnrollError('check the bootstrap passphrase', 'it does not open the root volume (already enrolled, or the wrong passphrase)');
    }
    const [pin, config] = clevisPinConfig(options.tangUrls.map((url) => ({ url })), options.threshold, options.tpm2);
    await step('check Tang from the machine', () =>
      must(remote, 'check Tang from the machine', `test "$(printf ok | clevis encrypt ${pin} ${shellQuote(config)} -y | clevis decrypt)" = ok`),
    );

    const digestBefore = await must(remote, 'volume key digest', volumeKeyDigestCommand(device, BOOTSTRAP));
    await step('rotate the volume key (online reencrypt)', async () => {
      await must(remote, 'rotate the volume key', `cryptsetup reencrypt --batch-mode --key-file ${BOOTSTRAP} --key-slot 0 --resilience checksum ${device}`);
      // Tokens of keyslots the rotation dropped (a build-time clevis binding) are stale now.
      for (const binding of parseClevisList((await remote.run(`clevis luks list -d ${device}`)).output)) {
        await remote.run(`clevis luks unbind -f -d ${device} -s ${binding.slot}`);
      }
      await must(remote, 'rotate the volume key', `for id in $(cryptsetup luksDump ${device} | sed -n 's/^  \\([0-9]*\\): clevis$/\\1/p'); do cryptsetup token remove --token-id "$id" ${device}; done`);
    });
    const digestAfter = await must(remote, 'volume key digest', volumeKeyDigestCommand(device, BOOTSTRAP));
    if (digestAfter.trim() === digestBefore.trim()) throw new EnrollError('rotate the volume key', 'the volume key did not change');

    const tang = await step('bind to Tang', async () => {
      await must(remote, 'bind to Tang', `clevis luks bind -y -d ${device} -k ${BOOTSTRAP} ${pin} ${shellQuote(config)}`);
      const bindings = parseClevisList(await must(remote, 'bind to Tang', `clevis luks list -d ${device}`));
      if (bindings.length !== 1) throw new EnrollError('bind to Tang', `expected one clevis binding, found ${bindings.length}`);
      const binding = bindings[0]!;
      await must(remote, 'bind to Tang', `clevis luks pass -d ${device} -s ${binding.slot} | cryptsetup open --test-passphrase --key-file - ${device}`);
      // The signing keys the binding trusts, read back from the token clevis wrote.
      const tokenIds = [...(await must(remote, 'bind to Tang', `cryptsetup luksDump ${device}`)).matchAll(/^ {2}(\d+): clevis$/gm)].map((m) => m[1]);
      const servers: BoundTangServer[] = [];
      for (const id of tokenIds) servers.push(...tangServersInToken(await must(remote, 'bind to Tang', `cryptsetup token export --token-id ${id} ${device}`)));
      return { slot: binding.slot, pin: binding.pin, servers };
    });

    const recovery = randomBytes(24).toString('base64url');
    options.log.redactor.add(recovery);
    await step('add the recovery passphrase', async () => {
      if (options.recoveryKeyOut) await writeFile(options.recoveryKeyOut, `${recovery}\n`, { mode: 0o600, flag: 'wx' });
      await must(remote, 'add the recovery passphrase', `umask 077 && cat > ${RECOVERY}`, recovery);
      await must(remote, 'add the recovery passphrase', `cryptsetup luksAddKey --batch-mode --key-file ${BOOTSTRAP} ${device} ${RECOVERY}`);
      await must(remote, 'add the recovery passphrase', `cryptsetup open --test-passphrase --key-file ${RECOVERY} ${device}`);
    });

    await step('remove the bootstrap passphrase', async () => {
      await must(remote, 'remove the bootstrap passphrase', `cryptsetup luksRemoveKey --batch-mode --key-file ${BOOTSTRAP} ${device}`);
      if (await succeeds(remote, `cryptsetup open --test-passphrase --key-file ${BOOTSTRAP} ${device}`)) {
        throw new EnrollError('remove the bootstrap passphrase', 'the bootstrap passphrase still opens the volume');
      }
    });

    if (options.dropbear !== 'keep') {
      const name = options.dropbear === 'remove' ? 'remove dropbear from the initramfs' : 'regenerate the dropbear host key';
      await step(name, () => must(remote, name, DROPBEAR_COMMANDS[options.dropbear as Exclude<DropbearAction, 'keep'>]));
    }
    const after = await dump();
    return {
      device,
      keyslotsBefore: before.keyslots,
      keyslotsAfter: after.keyslots,
      tang,
      volumeKeyChanged: true,
      bootstrapRemoved: true,
      recoveryKeyFile: options.recoveryKeyOut,
      dropbear: options.dropbear,
      stepSeconds,
    };
  } finally {
    await remote.run(`for f in ${SECRETS}/*; do [ -f "$f" ] && dd if=/dev/zero of="$f" bs=1 count=$(stat -c %s "$f") conv=notrunc 2>/dev/null; done; rm -rf ${SECRETS}`);
  }
}
