/**
 * The image's network_data.json conversion (overlays/base/usr/lib/keylessgo/network-data.jq),
 * run with the host's jq as the image runs it with its own: the lines the initramfs applies
 * with `ip`, and the systemd-networkd files of the booted system.
 */
import { execa } from 'execa';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { BASE_OVERLAY } from '../../src/pipeline/overlay.js';

const PROGRAM = join(BASE_OVERLAY, 'usr/lib/keylessgo/network-data.jq');

async function convert(target: 'initramfs' | 'networkd', networkData: object): Promise<string[]> {
  const { stdout } = await execa('jq', ['-r', '--arg', 'target', target, '-f', PROGRAM], { input: JSON.stringify(networkData) });
  return stdout.split('\n').filter((line) => line !== '');
}

/** networkd lines grouped into the files the booted system writes ("!" lines: what it logs). */
async function networkdFiles(networkData: object): Promise<Record<string, string>> {
  const files: Record<string, string> = {};
  for (const line of await convert('networkd', networkData)) {
    const [file, ...rest] = line.split(' ');
    const name = file === '!' ? '!' : `10-keylessgo-config-drive-${file}`;
    files[name] = `${files[name] ?? ''}${rest.join(' ')}\n`;
  }
  return files;
}

const WRITTEN = "# Written by keylessgo-config-drive from the config drive's network_data.json.";
const MAC1 = '52:54:00:ab:cd:01';
const MAC2 = '52:54:00:ab:cd:02';
const NETWORK_DATA = {
  links: [
    { id: 'port0', type: 'phy', ethernet_mac_address: MAC1.toUpperCase(), mtu: 9000 },
    { id: 'port1', type: 'phy', ethernet_mac_address: MAC2 },
  ],
  networks: [
    {
      id: 'v4', type: 'ipv4', link: 'port0', ip_address: '192.0.2.10', netmask: '255.255.255.0',
      routes: [
        { network: '0.0.0.0', netmask: '0.0.0.0', gateway: '192.0.2.1' },
        { network: '198.51.100.0', netmask: '255.255.254.0', gateway: '192.0.2.254' },
      ],
    },
    { id: 'v6', type: 'ipv6', link: 'port0', ip_address: '2001:db8::10', netmask: 'ffff:ffff:ffff:ffff::', routes: [{ network: '::', netmask: '::', gateway: '2001:db8::1' }] },
    { id: 'lease', type: 'ipv4_dhcp', link: 'port1' },
  ],
  services: [{ type: 'dns', address: '192.0.2.53' }, { type: 'dns', address: '2001:db8::53' }, { type: 'dns', address: '1.1.1.1; reboot' }],
};

describe('network_data.json for the initramfs', () => {
  it('gives addresses, routes (netmasks as prefixes), MTU and DNS by MAC; DHCP links are only named', async () => {
    expect(await convert('initramfs', NETWORK_DATA)).toEqual([
      `mtu ${MAC1} 9000`,
      `address ${MAC1} 192.0.2.10/24`,
      `route ${MAC1} 0.0.0.0/0 192.0.2.1`,
      `route ${MAC1} 198.51.100.0/23 192.0.2.254`,
      `address ${MAC1} 2001:db8::10/64`,
      `route ${MAC1} ::/0 2001:db8::1`,
      `dhcp ${MAC2} ipv4`,
      'dns 192.0.2.53',
      'dns 2001:db8::53',
    ]);
  });

  it('gives nothing for an empty document, and drops values that are not addresses', async () => {
    expect(await convert('initramfs', {})).toEqual([]);
    const hostile = { links: [{ id: 'p', type: 'phy', ethernet_mac_address: '52:54:00:00:00:01\nrm -rf /' }], networks: [{ type: 'ipv4', link: 'p', ip_address: '$(reboot)', netmask: '255.0.0.0' }] };
    expect((await convert('initramfs', hostile)).filter((line) => !line.startsWith('skip'))).toEqual([]);
  });
});

describe('network_data.json for systemd-networkd', () => {
  it('writes one .network per MAC: static v4 and v6 with routes and DNS, DHCP where the drive says so', async () => {
    const files = await networkdFiles(NETWORK_DATA);
    expect(Object.keys(files).sort()).toEqual(['10-keylessgo-config-drive-525400abcd01.network', '10-keylessgo-config-drive-525400abcd02.network']);
    expect(files['10-keylessgo-config-drive-525400abcd01.network']).toBe(
      [
        WRITTEN,
        '[Match]', `MACAddress=${MAC1}`,
        '[Link]', 'MTUBytes=9000',
        '[Network]', 'DHCP=no', 'IPv6AcceptRA=no', 'Address=192.0.2.10/24', 'Address=2001:db8::10/64', 'DNS=192.0.2.53', 'DNS=2001:db8::53',
        '[Route]', 'Destination=0.0.0.0/0', 'Gateway=192.0.2.1',
        '[Route]', 'Destination=198.51.100.0/23', 'Gateway=192.0.2.254',
        '[Route]', 'Destination=::/0', 'Gateway=2001:db8::1',
        '',
      ].join('\n'),
    );
    expect(files['10-keylessgo-config-drive-525400abcd02.network']).toContain('[Network]\nDHCP=ipv4\n');
  });

  it('accepts an address already in CIDR form and IPv6 SLAAC', async () => {
    const files = await networkdFiles({
      links: [{ id: 'p', type: 'phy', ethernet_mac_address: MAC1 }],
      networks: [{ type: 'ipv6', link: 'p', ip_address: '2001:db8::7/56' }, { type: 'ipv6_slaac', link: 'p' }],
    });
    expect(files['10-keylessgo-config-drive-525400abcd01.network']).toContain('DHCP=ipv6\nAddress=2001:db8::7/56\n');
  });
});

const BOND_NETWORK = { id: 'static', type: 'ipv4', link: 'bond', ip_address: '192.0.2.10', netmask: '255.255.255.0', routes: [{ network: '0.0.0.0', netmask: '0.0.0.0', gateway: '192.0.2.1' }] };
/** Two NICs in an LACP bond carrying a static network, and VLAN 42 on the bond. */
const BONDED = {
  links: [
    { id: 'port0', type: 'phy', ethernet_mac_address: MAC1 },
    { id: 'port1', type: 'phy', ethernet_mac_address: MAC2 },
    { id: 'bond', type: 'bond', bond_links: ['port0', 'port1'], bond_mode: '802.3ad', bond_miimon: 100, bond_xmit_hash_policy: 'layer3+4', mtu: 9000 },
    { id: 'tagged', type: 'vlan', vlan_link: 'bond', vlan_id: 42 },
  ],
  networks: [BOND_NETWORK, { id: 'v42', type: 'ipv4', link: 'tagged', ip_address: '203.0.113.5', netmask: '255.255.255.0' }],
};
/** VLAN 7 on a NIC that carries no network of its own. */
const VLAN_ON_NIC = {
  links: [
    { id: 'port0', type: 'phy', ethernet_mac_address: MAC1 },
    { id: 'tagged', type: 'vlan', vlan_link: 'port0', vlan_id: '7', vlan_mac_address: MAC1 },
  ],
  networks: [{ id: 'v7', type: 'ipv6', link: 'tagged', ip_address: '2001:db8::7/64' }],
};

describe('bonds and VLANs', () => {
  it('makes the initramfs build the bond, enslave its NICs by MAC and put the VLAN and addresses on them', async () => {
    expect(await convert('initramfs', BONDED)).toEqual([
      'bond bond0 802.3ad 100 layer3+4',
      `member bond0 ${MAC1}`,
      `member bond0 ${MAC2}`,
      'vlan vlan42 bond0 42 -',
      'mtu bond0 9000',
      'address bond0 192.0.2.10/24',
      'route bond0 0.0.0.0/0 192.0.2.1',
      'address vlan42 203.0.113.5/24',
    ]);
    expect(await convert('initramfs', VLAN_ON_NIC)).toEqual([`vlan vlan7 ${MAC1} 7 ${MAC1}`, 'address vlan7 2001:db8::7/64']);
  });

  it('writes a .netdev per bond and VLAN, members with Bond=, parents with VLAN=, NICs under them matched by permanent MAC', async () => {
    const files = await networkdFiles(BONDED);
    expect(Object.keys(files).sort()).toEqual([
      '10-keylessgo-config-drive-525400abcd01.network',
      '10-keylessgo-config-drive-525400abcd02.network',
      '10-keylessgo-config-drive-bond0.netdev',
      '10-keylessgo-config-drive-bond0.network',
      '10-keylessgo-config-drive-vlan42.netdev',
      '10-keylessgo-config-drive-vlan42.network',
    ]);
    expect(files['10-keylessgo-config-drive-525400abcd02.network']).toContain(`[Match]\nPermanentMACAddress=${MAC2}\n[Network]\nBond=bond0\n`);
    expect(files['10-keylessgo-config-drive-bond0.netdev']).toBe(
      [WRITTEN, '[NetDev]', 'Name=bond0', 'Kind=bond', '[Bond]', 'Mode=802.3ad', 'MIIMonitorSec=100ms', 'TransmitHashPolicy=layer3+4', ''].join('\n'),
    );
    expect(files['10-keylessgo-config-drive-bond0.network']).toContain(
      ['[Match]', 'Name=bond0', '[Link]', 'MTUBytes=9000', '[Network]', 'DHCP=no', 'IPv6AcceptRA=no', 'VLAN=vlan42', 'Address=192.0.2.10/24', '[Route]', 'Destination=0.0.0.0/0', 'Gateway=192.0.2.1', ''].join('\n'),
    );
    expect(files['10-keylessgo-config-drive-vlan42.netdev']).toBe([WRITTEN, '[NetDev]', 'Name=vlan42', 'Kind=vlan', '[VLAN]', 'Id=42', ''].join('\n'));
    expect(files['10-keylessgo-config-drive-vlan42.network']).toContain('[Match]\nName=vlan42\n[Network]\nDHCP=no\nIPv6AcceptRA=no\nAddress=203.0.113.5/24\n');

    const onNic = await networkdFiles(VLAN_ON_NIC);
    expect(onNic['10-keylessgo-config-drive-525400abcd01.network']).toContain(`PermanentMACAddress=${MAC1}\n[Network]\nDHCP=no\nIPv6AcceptRA=no\nVLAN=vlan7\n`);
    expect(onNic['10-keylessgo-config-drive-vlan7.netdev']).toContain(`MACAddress=${MAC1}\n[VLAN]\nId=7\n`);
  });

  it('drops, with a message, links with an invalid value and everything built on them', async () => {
    const invalid = {
      links: [
        { id: 'port0', type: 'phy', ethernet_mac_address: MAC1 },
        { id: 'port1', type: 'phy', ethernet_mac_address: MAC2 },
        { id: 'badmode', type: 'bond', bond_links: ['port0'], bond_mode: '802.3ad; reboot' },
        { id: 'ghosts', type: 'bond', bond_links: ['port0', 'nic9'], bond_mode: 'active-backup' },
        { id: 'bond', type: 'bond', bond_links: ['port0', 'port1'], bond_mode: 'active-backup', bond_miimon: -1 },
        { id: 'v0', type: 'vlan', vlan_link: 'port0', vlan_id: 0 },
        { id: 'v4095', type: 'vlan', vlan_link: 'port0', vlan_id: 4095 },
        { id: 'vbond', type: 'vlan', vlan_link: 'bond', vlan_id: 5 },
        { id: 'v9', type: 'vlan', vlan_link: 'port1', vlan_id: 9 },
        { id: 'v9again', type: 'vlan', vlan_link: 'port0', vlan_id: '9' },
      ],
      networks: [{ id: 'onbond', type: 'ipv4', link: 'vbond', ip_address: '192.0.2.10/24' }],
    };
    const dropped = [
      'bond link badmode dropped: bond_mode not one of balance-rr active-backup balance-xor broadcast 802.3ad balance-tlb balance-alb',
      'bond link ghosts dropped: bond_links not distinct ids of usable NICs',
      'bond link bond dropped: bond_miimon not an integer 0..1000000',
      'vlan link v0 dropped: vlan_id not an integer 1..4094',
      'vlan link v4095 dropped: vlan_id not an integer 1..4094',
      'vlan link vbond dropped: vlan_link not the id of a usable NIC or bond',
      'vlan link v9again dropped: vlan_id used by an earlier vlan link',
      'network onbond dropped: its link vbond is unknown or dropped',
    ];
    expect(await convert('initramfs', invalid)).toEqual([...dropped.map((line) => `skip ${line}`), `vlan vlan9 ${MAC2} 9 -`]);
    const files = await networkdFiles(invalid);
    expect(files['!']).toBe(dropped.map((line) => `${line}\n`).join(''));
    expect(Object.keys(files).sort()).toEqual(['!', '10-keylessgo-config-drive-525400abcd02.network', '10-keylessgo-config-drive-vlan9.netdev', '10-keylessgo-config-drive-vlan9.network']);
  });
});
