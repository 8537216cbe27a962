/**
 * What the Ironic tests are made of: QEMU's NICs connected to nothing (boot-test --nics), and
 * the helpers that re-enact IPA's config-drive steps (test/e2e/ipa.ts).
 */
import { describe, expect, it } from 'vitest';
import { nicArgs, qemuArgs, USER_NIC_MAC } from '../../src/qemu/vm.js';
import { ipaPartitionCommands, labelledPartition, parseBlkidExport } from '../e2e/ipa.js';

const BASE = { hostPort: 2222, guestPort: 22 };

describe('NICs of the test VM', () => {
  it('one NIC by default: the user network with the SSH forward and a fixed MAC', () => {
    expect(nicArgs(BASE, [])).toEqual(['-netdev', 'user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:2222-:22', '-device', `virtio-net-pci,netdev=net0,mac=${USER_NIC_MAC}`]);
  });

  it('--nics 3: two NICs connected to nothing come first (eth0, eth1), the user network last', () => {
    const args = nicArgs({ ...BASE, nics: 3 }, [4001, 4002]);
    expect(args.filter((arg) => arg.startsWith('socket,') || arg.startsWith('user,') || arg.startsWith('virtio-net'))).toEqual([
      'socket,id=dead0,listen=127.0.0.1:4001',
      'virtio-net-pci,netdev=dead0',
      'socket,id=dead1,listen=127.0.0.1:4002',
      'virtio-net-pci,netdev=dead1',
      'user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:2222-:22',
      `virtio-net-pci,netdev=net0,mac=${USER_NIC_MAC}`,
    ]);
  });

  it('forwards to a static guest address, and keeps the Tang forward after it', () => {
    expect(nicArgs({ ...BASE, guestAddress: '10.0.2.50' }, [], ',guestfwd=x')[1]).toBe('user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:2222-10.0.2.50:22,guestfwd=x');
  });

  it('needs one free port per dead NIC', () => {
    expect(() => nicArgs({ ...BASE, nics: 2 }, [])).toThrow(/2 NICs need 1 free ports/);
  });

  it('attaches a config drive as a read-only CD', () => {
    const args = qemuArgs({ ...BASE, accel: 'tcg', cpus: 1, memoryMiB: 512, firmwareArgs: [], overlay: 'o.qcow2', sectorSize: 512, serialLog: 's.log', cdrom: '/x/cd.iso' });
    expect(args).toContain('file=/x/cd.iso,if=ide,media=cdrom,format=raw,readonly=on');
    // A comma in a path is data, not the start of another option.
    const commaArgs = qemuArgs({ ...BASE, accel: 'tcg', cpus: 1, memoryMiB: 512, firmwareArgs: [], overlay: '/a,b/o.qcow2', sectorSize: 512, serialLog: 's.log', cdrom: '/x,format=qcow2/cd.iso' });
    expect(commaArgs).toContain('file=/x,,format=qcow2/cd.iso,if=ide,media=cdrom,format=raw,readonly=on');
    expect(commaArgs).toContain('file=/a,,b/o.qcow2,if=none,id=disk0,format=qcow2,discard=unmap');
  });
});

describe("IPA's config-drive steps", () => {
  it('always moves the backup GPT; makes a 64 MiB last partition only without a config-2 one', () => {
    expect(ipaPartitionCommands('/dev/loop7', false, 'u-u-i-d')).toEqual([
      ['sgdisk', '-e', '/dev/loop7'],
      ['sgdisk', '-n', '0:-64MB:0', '-u', '0:u-u-i-d', '/dev/loop7'],
    ]);
    expect(ipaPartitionCommands('/dev/loop7', true, 'u-u-i-d')).toEqual([['sgdisk', '-e', '/dev/loop7']]);
  });

  it('finds the partition whose file system is labelled config-2, in any case, and refuses two', () => {
    const iso = parseBlkidExport('DEVNAME=/dev/loop0p5\nLABEL=config-2\nTYPE=iso9660\nPART_ENTRY_UUID=abc\n');
    expect(iso).toMatchObject({ DEVNAME: '/dev/loop0p5', LABEL: 'config-2', PART_ENTRY_UUID: 'abc' });
    const root = parseBlkidExport('DEVNAME=/dev/loop0p4\nTYPE=crypto_LUKS\nPART_ENTRY_NAME=keylessgo-root\n');
    expect(labelledPartition([root, iso])).toBe('/dev/loop0p5');
    expect(labelledPartition([root, { DEVNAME: '/dev/loop0p6', LABEL: 'CONFIG-2' }])).toBe('/dev/loop0p6');
    expect(labelledPartition([root])).toBeUndefined();
    expect(() => labelledPartition([iso, { DEVNAME: '/dev/loop0p6', LABEL: 'CONFIG-2' }])).toThrow(/more than one/);
  });
});
