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

/** networkd lines grouped into the files the booted system writes. */
async function networkdFiles(networkData: object): Promise<Record<string, string>> {
  const files: Record<string, string> = {};
  for (const line of await convert('networkd', networkData)) {
    const [name, ...rest] = line.split(' ');
    files[`10-keylessgo-config-drive-${name}.network`] = `${files[`10-keylessgo-config-drive-${name}.network`] ?? ''}${rest.join(' ')}\n`;
  }
  return files;
}

const MAC1 = '52:54:00:ab:cd:01';
const MAC2 = '52:54:00:ab:cd:02';
const NETWORK_DATA = {
  links: [
    { id: 'port0', type: 'phy', ethernet_mac_address: MAC1.toUpperCase(), mtu: 9000 },
    { id: 'port1', type: 'phy', ethernet_mac_address: MAC2 },
    { id: 'bond0', type: 'bond', bond_links: ['port0', 'port1'], bond_mode: '802.3ad' },
    { id: 'vlan42', type: 'vlan', vlan_link: 'bond0', vlan_id: 42 },
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
    { id: 'tagged', type: 'ipv4', link: 'vlan42', ip_address: '203.0.113.5', netmask: '255.255.255.0' },
  ],
  services: [{ type: 'dns', address: '192.0.2.53' }, { type: 'dns', address: '2001:db8::53' }, { type: 'dns', address: '1.1.1.1; reboot' }],
};

describe('network_data.json for the initramfs', () => {
  it('gives addresses, routes (netmasks as prefixes), MTU and DNS by MAC; DHCP links and VLAN networks are only named', async () => {
    expect(await convert('initramfs', NETWORK_DATA)).toEqual([
      'skip vlan vlan42',
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
        "# Written by keylessgo-config-drive from the config drive's network_data.json.",
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
