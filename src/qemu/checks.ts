/**
 * What the boot test asserts, as data: each check has a name, the evidence it looked at,
 * and a verdict. Guest checks run shell commands over SSH in the booted system and judge
 * their output here, so the judging is testable without a VM.
 */
import { ESP_SYNC } from '../stages/bootloader.js';
import { SUITE_VERSIONS } from '../recipe/schema.js';
import type { BootManifest } from '../formats/build-manifest.js';
import type { HostKey } from '../ssh/client.js';

export interface Check {
  name: string;
  ok: boolean;
  detail: string;
}

export function check(name: string, ok: boolean, detail: string): Check {
  return { name, ok, detail };
}

export function hostKeyCheck(seen: HostKey, manifest: BootManifest): Check {
  const name = "dropbear host key is the manifest's";
  const expected = manifest.dropbear.hostKeys.find((k) => k.type === seen.type)?.fingerprint;
  const detail = `${seen.type} ${seen.fingerprint}`;
  if (expected === seen.fingerprint) return check(name, true, detail);
  return check(name, false, expected ? `${detail}, manifest: ${expected}` : `${detail}; the manifest has no ${seen.type} key`);
}

/** One command run in the booted guest and how to judge its output. */
export interface GuestCheck {
  name: string;
  command: string;
  judge(output: string): Check;
}

/** `key: value` lines, as printed by `cryptsetup status`, keyed by lower-cased key. */
export function parseColonFields(text: string): Record<string, string> {
  const fields: Record<string, string> = {};
  for (const line of text.split('\n')) {
    const match = /^\s*([^:]+):\s*(.*)$/.exec(line);
    if (match) fields[match[1]!.trim().toLowerCase()] = match[2]!.trim();
  }
  return fields;
}

/**
 * /boot is an automount and the ESP a nofail mount (fstab.ejs): starting the mount unit waits
 * for a mount still under way, and the mounted file system is findmnt's last line, above autofs.
 */
function mountCheck(mountPoint: string, fsType: string): GuestCheck {
  const name = `${mountPoint} mounted (${fsType})`;
  return {
    name,
    command: `systemctl start "$(systemd-escape -p --suffix=mount ${mountPoint})" 2>&1; findmnt -n -o SOURCE,FSTYPE ${mountPoint}`,
    judge: (output) => {
      const [source = '', type = ''] = output.trim().split('\n').at(-1)!.split(/\s+/);
      return check(name, type === fsType, type === fsType ? `${source} ${type}` : output.trim().replaceAll('\n', '; ') || 'not mounted');
    },
  };
}

/** Backup GPT header and entries at the end of the disk (512-byte sectors). */
const GPT_BACKUP_BYTES = 33 * 512;
const MiB = 1024 * 1024;

/** `name=value` pairs of whole numbers, as the root growth check prints them. */
export function parseNumbers(text: string): Record<string, number> {
  return Object.fromEntries([...text.matchAll(/(\w+)=(\d+)/g)].map((m) => [m[1]!, Number(m[2])]));
}

/**
 * The root grew to the disk at first boot: the partition ends within the last MiB before the
 * backup GPT, its size is whole 4 KiB LUKS2 sectors, the LUKS2 volume is the partition minus
 * the header, and ext4 fills the volume. Runs after the boot settled (the grow unit is done).
 */
export const ROOT_GROWTH_CHECK: GuestCheck = {
  name: 'root grown to the end of the disk',
  command: [
    'src=$(findmnt -n -o SOURCE /); dev=$(cryptsetup status "$src" | sed -n "s/^ *device: *//p"); name=${dev##*/}',
    'echo disk=$(( $(cat /sys/class/block/$name/../size) * 512 )) start=$(( $(cat /sys/class/block/$name/start) * 512 )) partition=$(blockdev --getsize64 "$dev")' +
      ' header=$(( $(cryptsetup status "$src" | awk \'$1 == "offset:" {print $2}\') * 512 )) volume=$(blockdev --getsize64 "$src")' +
      ` ext4=$(dumpe2fs -h "$src" 2>/dev/null | awk -F': *' '/^Block count:/ {c=$2} /^Block size:/ {s=$2} END {printf "%.0f", c*s}') df=$(df -B1 --output=size / | tail -n 1 | tr -d ' ')`,
    // What each step logged. The initramfs writes "keylessgo-grow-root: ..." to /dev/kmsg,
    // which journald files under that identifier (the prefix leaves the message).
    "journalctl -b -t keylessgo-grow-root -o cat --no-pager | tail -n 1 | sed 's/^/initramfs: /'",
    'journalctl -b -u keylessgo-grow-root -o cat --no-pager | grep -v "^[A-Z][a-z]*ing \\|^Finished " | tail -n 1 | sed "s/^/unit: /"',
  ].join('; '),
  judge(output) {
    const n = parseNumbers(output.split('\n')[0] ?? '');
    const { disk = 0, start = 0, partition = 0, header = 0, volume = 0, ext4 = 0 } = n;
    const ok =
      partition > 0 &&
      disk - (start + partition) < MiB + GPT_BACKUP_BYTES &&
      partition % 4096 === 0 &&
      volume === partition - header &&
      volume - ext4 < 4096;
    return check(this.name, ok, output.trim().split('\n').join('; '));
  },
};

/** EFI_GLOBAL_VARIABLE, the vendor GUID of the firmware's standard variables (SecureBoot, BootOrder, ...). */
const EFI_GLOBAL_VARIABLE = '8be4df61-93ca-11d2-aa0d-00e098032b8c';

/** The firmware's SecureBoot variable: 4 attribute bytes, then 1 when Secure Boot is on. */
export const SECURE_BOOT_CHECK: GuestCheck = {
  name: 'Secure Boot enabled (SecureBoot EFI variable)',
  command: [
    `var=/sys/firmware/efi/efivars/SecureBoot-${EFI_GLOBAL_VARIABLE}`,
    'mountpoint -q /sys/firmware/efi/efivars || mount -t efivarfs efivarfs /sys/firmware/efi/efivars',
    'echo "SecureBoot=$(od -An -tu1 -j4 -N1 "$var" | tr -d " ")"',
  ].join('; '),
  judge(output) {
    return check(this.name, /^SecureBoot=1$/m.test(output), output.trim());
  },
};

/** A kernel booted with Secure Boot locks itself down (Debian: integrity mode). */
export const LOCKDOWN_CHECK: GuestCheck = {
  name: 'kernel lockdown active',
  command: 'f=/sys/kernel/security/lockdown; [ -e $f ] || mount -t securityfs securityfs /sys/kernel/security; cat $f',
  judge(output) {
    const mode = /\[(\w+)\]/.exec(output)?.[1];
    return check(this.name, mode !== undefined && mode !== 'none', output.trim() || '(no lockdown file)');
  },
};

/**
 * The ESP holds what the installed packages would put there (esp-sync --check): the signed
 * loaders byte for byte, or the GRUB grub-mkimage makes again from the installed modules.
 */
export const ESP_IN_STEP_CHECK: GuestCheck = {
  name: 'ESP loaders in step with the installed packages (esp-sync --check)',
  command: `${ESP_SYNC} --check 2>&1; echo "exit=$?"`,
  judge(output) {
    const ok = /^exit=0$/m.test(output) && !/out of step|ERROR/.test(output);
    return check(this.name, ok, output.trim().replaceAll('\n', '; '));
  },
};

/** The guest sees the disk with the logical sector size the VM was given. */
export function sectorSizeCheck(sectorSize: number): GuestCheck {
  const name = `disk has ${sectorSize}-byte logical sectors`;
  return {
    name,
    // The disk holding the LUKS2 root: the partition's parent in sysfs.
    command: 'dev=$(cryptsetup status "$(findmnt -n -o SOURCE /)" | sed -n "s/^ *device: *//p"); disk=/dev/$(basename "$(readlink -f /sys/class/block/${dev##*/}/..)"); echo "$disk $(blockdev --getss "$disk")"',
    judge: (output) => check(name, output.trim().split(/\s+/)[1] === String(sectorSize), output.trim()),
  };
}

/** What the VM was started with, as far as the guest checks depend on it. */
export interface GuestCheckOptions {
  secureBoot: boolean;
  sectorSize: number;
}

/** How long `systemctl is-system-running --wait` may wait for the boot to settle. */
export const SYSTEM_RUNNING_WAIT_SECONDS = 300;

export function guestChecks(manifest: BootManifest, options: GuestCheckOptions): GuestCheck[] {
  const { mapperName, cipher, keySize, uuid } = manifest.luks;
  return [
    {
      name: '/ on dm-crypt',
      command: 'src=$(findmnt -n -o SOURCE /); printf "%s %s\\n" "$src" "$(lsblk -dn -o TYPE "$src")"',
      judge: (output) => {
        const [source = '', type = ''] = output.trim().split(/\s+/);
        return check('/ on dm-crypt', source === `/dev/mapper/${mapperName}` && type === 'crypt', output.trim());
      },
    },
    {
      name: `LUKS2 ${cipher} ${keySize}-bit, uuid from manifest`,
      command: `cryptsetup status ${mapperName} && cryptsetup luksUUID "$(cryptsetup status ${mapperName} | awk '$1 == "device:" {print $2}')"`,
      judge: (output) => {
        const fields = parseColonFields(output);
        const seenUuid = output.trim().split('\n').at(-1)?.trim() ?? '';
        const seen = `${fields.type} ${fields.cipher} ${fields.keysize}, uuid ${seenUuid}`;
        const ok = fields.type === 'LUKS2' && fields.cipher === cipher && fields.keysize === `${keySize} bits` && seenUuid === uuid;
        return check(`LUKS2 ${cipher} ${keySize}-bit, uuid from manifest`, ok, seen);
      },
    },
    {
      name: 'Debian release from the recipe',
      command: '. /etc/os-release && echo "$VERSION_ID $VERSION_CODENAME"',
      judge: (output) => {
        const [version, codename] = output.trim().split(/\s+/);
        const ok = version === SUITE_VERSIONS[manifest.recipe.suite] && codename === manifest.recipe.suite;
        return check('Debian release from the recipe', ok, `VERSION_ID=${version ?? ''} VERSION_CODENAME=${codename ?? ''}`);
      },
    },
    mountCheck('/boot', 'ext4'),
    mountCheck('/boot/efi', 'vfat'),
    {
      name: 'systemctl is-system-running',
      // --wait returns once the boot has settled; on failure, list what failed.
      command: `state=$(timeout ${SYSTEM_RUNNING_WAIT_SECONDS} systemctl is-system-running --wait); echo "$state"; [ "$state" = running ] || systemctl --failed --no-legend --plain | awk '{print "failed: " $1}'`,
      judge: (output) => {
        const lines = output.trim().split('\n');
        return check('systemctl is-system-running', lines[0] === 'running', lines.join('; '));
      },
    },
    ...(manifest.disk.growOnFirstBoot ? [ROOT_GROWTH_CHECK] : []),
    sectorSizeCheck(options.sectorSize),
    ESP_IN_STEP_CHECK,
    ...(options.secureBoot ? [SECURE_BOOT_CHECK, LOCKDOWN_CHECK] : []),
  ];
}

/** Not checks: what the guest says about its own boot, kept in the results. */
export const BOOT_ANALYSIS_COMMAND = 'systemd-analyze time; echo; systemd-analyze blame --no-pager | head -n 15; echo; systemd-analyze critical-chain --no-pager';
