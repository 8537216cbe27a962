/** QEMU's command line for the boot test: firmware, machine and the disk's sector size. */
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { bootTest } from '../../src/qemu/boot-test.js';
import { firmwareFiles, firmwareQemuArgs } from '../../src/qemu/firmware.js';
import { qemuArgs, swtpmArgs, tangCommand, type VmConfig } from '../../src/qemu/vm.js';
import { captureLogger, expectInputError, tempDir } from './helpers.js';

const CONFIG: VmConfig = {
  accel: 'tcg',
  cpus: 2,
  memoryMiB: 2048,
  firmwareArgs: firmwareQemuArgs('bios', '/unused'),
  overlay: '/tmp/overlay.qcow2',
  sectorSize: 512,
  hostPort: 2222,
  guestPort: 22,
  serialLog: '/tmp/serial.log',
};

/** The value following `flag` each time it occurs. */
const values = (args: string[], flag: string) => args.flatMap((arg, i) => (args[i - 1] === flag ? [arg] : []));

describe('firmware arguments', () => {
  it('uefi-secureboot: OVMF with Microsoft keys, a private vars copy, q35 with SMM and secure flash', () => {
    const args = firmwareQemuArgs('uefi-secureboot', '/work/OVMF_VARS.fd');
    expect(values(args, '-machine')).toEqual(['q35,smm=on']);
    expect(values(args, '-global')).toEqual(['driver=cfi.pflash01,property=secure,value=on']);
    expect(values(args, '-drive')).toEqual([
      'if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.ms.fd',
      'if=pflash,format=raw,unit=1,file=/work/OVMF_VARS.fd',
    ]);
    expect(firmwareFiles('uefi-secureboot')).toEqual(['/usr/share/OVMF/OVMF_CODE_4M.ms.fd', '/usr/share/OVMF/OVMF_VARS_4M.ms.fd']);
  });

  it('uefi: OVMF without Secure Boot on the pc machine; bios: SeaBIOS', () => {
    const uefi = firmwareQemuArgs('uefi', '/work/OVMF_VARS.fd');
    expect(values(uefi, '-machine')).toEqual(['pc']);
    expect(values(uefi, '-drive')[0]).toMatch(/file=\/usr\/share\/OVMF\/OVMF_CODE_4M\.fd$/);
    expect(uefi).not.toContain('-global');
    expect(firmwareQemuArgs('bios', '/unused')).toEqual(['-machine', 'pc']);
  });

  it('the machine type appears once, from the firmware', () => {
    expect(values(qemuArgs({ ...CONFIG, firmwareArgs: firmwareQemuArgs('uefi-secureboot', '/v') }), '-machine')).toEqual(['q35,smm=on']);
  });
});

describe('the guest CPU', () => {
  const cpuOf = (args: string[]) => args[args.indexOf('-cpu') + 1]!.split(',');

  it('is the host under KVM; under TCG kvm64 (no REP_GOOD/ERMS) with AES-NI, PCLMULQDQ and SSE4.2 for the guest\'s crypto', () => {
    expect(cpuOf(qemuArgs({ ...CONFIG, accel: 'kvm' }))).toEqual(['host']);
    const tcg = cpuOf(qemuArgs(CONFIG));
    expect(tcg[0]).toBe('kvm64');
    expect(tcg).toEqual(expect.arrayContaining(['+aes', '+pclmulqdq', '+sse4.2']));
    expect(tcg.filter((flag) => /erms|rep/.test(flag))).toEqual([]);
  });
});

describe('the guest disk', () => {
  it('is a virtio-blk device with the requested logical and physical sector size', () => {
    const args = qemuArgs({ ...CONFIG, sectorSize: 4096 });
    expect(values(args, '-drive')).toEqual(['file=/tmp/overlay.qcow2,if=none,id=disk0,format=qcow2,discard=unmap']);
    expect(values(args, '-device')).toContain('virtio-blk-pci,drive=disk0,logical_block_size=4096,physical_block_size=4096');
    expect(values(qemuArgs(CONFIG), '-device')).toContain('virtio-blk-pci,drive=disk0,logical_block_size=512,physical_block_size=512');
  });
});

describe('TPM 2.0 (swtpm)', () => {
  it('swtpm keeps its state and control socket in the state directory and ends with QEMU', () => {
    expect(swtpmArgs('/run/vm/tpm')).toEqual(['socket', '--tpm2', '--tpmstate', 'dir=/run/vm/tpm', '--ctrl', 'type=unixio,path=/run/vm/tpm/swtpm.sock', '--log', 'file=/run/vm/tpm/swtpm.log', '--terminate']);
  });

  it('QEMU gets a TIS TPM on that socket, and none without a TPM', () => {
    const args = qemuArgs({ ...CONFIG, tpm: { stateDir: '/run/vm/tpm' } });
    expect(values(args, '-chardev')).toEqual(['socket,id=chrtpm,path=/run/vm/tpm/swtpm.sock']);
    expect(values(args, '-tpmdev')).toEqual(['emulator,id=tpm0,chardev=chrtpm']);
    expect(values(args, '-device')).toContain('tpm-tis,tpmdev=tpm0');
    expect(qemuArgs(CONFIG).join(' ')).not.toMatch(/tpm/);
  });
});

describe('Tang servers for the guest (guestfwd)', () => {
  const netdev = (config: Partial<VmConfig>) => values(qemuArgs({ ...CONFIG, ...config }), '-netdev').find((n) => n.startsWith('user,'))!;

  it('serves one tangd per connection at 10.0.2.100 by default, a second address on request', () => {
    const user = netdev({ tang: [{ keyDir: '/k', logFile: '/l1' }, { keyDir: '/k', logFile: '/l2', address: '10.0.2.101' }] });
    expect(user).toContain(`,guestfwd=tcp:10.0.2.100:80-cmd:/bin/sh -c 'echo "$(date +%s.%N) served" >>/l1; exec /usr/libexec/tangd /k 2>>/l1'`);
    expect(user).toContain(',guestfwd=tcp:10.0.2.101:80-cmd:');
    expect(netdev({ tang: { keyDir: '/k', logFile: '/l1' } })).toContain('guestfwd=tcp:10.0.2.100:80-cmd:');
    expect(() => netdev({ tang: [{ keyDir: '/k', logFile: '/l1' }, { keyDir: '/k', logFile: '/l2' }] })).toThrow(/two Tang servers at one address/);
  });

  it('silent reads until the connection closes; refuse closes at once; late refuses until its flag file exists', () => {
    expect(tangCommand({ keyDir: '/k', logFile: '/l', behaviour: 'silent' })).toBe('echo "$(date +%s.%N) silent" >>/l; exec cat >/dev/null');
    expect(tangCommand({ keyDir: '/k', logFile: '/l', behaviour: 'refuse' })).toBe('echo "$(date +%s.%N) refused" >>/l');
    expect(tangCommand({ keyDir: '/k', logFile: '/l', behaviour: 'late', upFlag: '/up' })).toBe(
      'if [ -e /up ]; then echo "$(date +%s.%N) served" >>/l; exec /usr/libexec/tangd /k 2>>/l; fi; echo "$(date +%s.%N) refused" >>/l',
    );
    expect(() => tangCommand({ keyDir: '/k', logFile: '/l', behaviour: 'late' })).toThrow(/upFlag/);
    expect(() => tangCommand({ keyDir: '/k,x', logFile: '/l' })).toThrow(/commas/);
  });
});

describe('boot-test and the image it is given', () => {
  it('refuses BIOS for an image built for 4Kn disks (UEFI only), before starting anything', async () => {
    const dir = await tempDir();
    await writeFile(join(dir, 'image.qcow2'), '');
    const manifest = {
      recipe: { name: 't', suite: 'trixie' },
      kernel: { version: 'v' },
      luks: { uuid: 'u', cipher: 'aes-xts-plain64', keySize: 512, mapperName: 'cryptroot' },
      disk: { growOnFirstBoot: true, sectorSize: 4096 },
      bootModes: ['uefi'],
      partitions: [],
      dropbear: { port: 22, hostKeys: [{ type: 'ssh-ed25519', fingerprint: 'SHA256:x' }] },
    };
    await writeFile(join(dir, 'manifest.json'), JSON.stringify(manifest));
    const options = { image: join(dir, 'image.qcow2'), privateKeyFile: join(dir, 'absent-key'), passphraseFile: join(dir, 'absent-passphrase'), outDir: dir, firmware: 'bios' as const, accel: 'tcg' as const, memoryMiB: 512, cpus: 1, timeoutSeconds: 1, negativeChecks: false, log: captureLogger().log };
    await expectInputError(bootTest(options), 'the image boots with uefi only (built for 4096-byte sectors): --firmware bios cannot boot it');
  });
});
