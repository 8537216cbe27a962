/** Ansible inventories (YAML and INI), variable precedence, host patterns and bad files. */
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { InputError } from '../../src/errors.js';
import { expandHostRange, parseInventory, selectHosts } from '../../src/fleet/inventory.js';
import { resolveTargets } from '../../src/fleet/targets.js';
import { tempDir } from './helpers.js';

const YAML = `# the fleet
all:
  vars:
    ansible_user: admin
    site: fra
  hosts:
    lonely:
  children:
    web:
      vars:
        tier: web
        site: web-site
      hosts:
        web[01:03]:
        web02:
          ansible_host: 10.0.0.2
          ansible_port: 2222
          site: own
      children:
        canary:
          vars:
            tier: canary
          hosts:
            web03:
    db:
      hosts:
        db1:
          ansible_host: 10.0.1.1
          ansible_user: root
`;

const INI = `; the same fleet
lonely

[web]
web[01:03]
web02 ansible_host=10.0.0.2 ansible_port=2222 site=own

[canary]
web03

[web:children]
canary

[db]
db1 ansible_host=10.0.1.1 ansible_user=root note="two words"
db2:2200

[all:vars]
ansible_user = admin
site=fra

[web:vars]
tier=web
site=web-site

[canary:vars]
tier=canary
`;

describe.each([
  ['YAML', 'fleet.yaml', YAML],
  ['INI', 'fleet.ini', INI],
])('%s inventory', (_format, file, text) => {
  const inventory = parseInventory(text, file);

  it('lists every host once, ranges expanded, in file order', () => {
    expect([...inventory.hosts.keys()].filter((h) => h !== 'db2')).toEqual(['lonely', 'web01', 'web02', 'web03', 'db1']);
  });

  it('merges variables: all, then parent group, then child group, then the host', () => {
    expect(inventory.hosts.get('web01')).toMatchObject({ ansible_user: 'admin', site: 'web-site', tier: 'web' });
    expect(inventory.hosts.get('web02')).toMatchObject({ ansible_host: '10.0.0.2', ansible_port: 2222, site: 'own', tier: 'web' });
    expect(inventory.hosts.get('web03')).toMatchObject({ tier: 'canary', site: 'web-site' });
    expect(inventory.hosts.get('db1')).toMatchObject({ ansible_user: 'root', site: 'fra' });
    expect(inventory.hosts.get('lonely')).toEqual({ ansible_user: 'admin', site: 'fra' });
  });

  it('puts child groups into their parents and hosts without a group into ungrouped', () => {
    expect([...inventory.groups.get('web')!].sort()).toEqual(['web01', 'web02', 'web03']);
    expect([...inventory.groups.get('ungrouped')!]).toEqual(['lonely']);
  });

  it.each([
    ['all', ['lonely', 'web01', 'web02', 'web03', 'db1']],
    ['web', ['web01', 'web02', 'web03']],
    ['web:!canary', ['web01', 'web02']],
    ['web,db', ['web01', 'web02', 'web03', 'db1']],
    ['web:&canary', ['web03']],
    ['web0*', ['web01', 'web02', 'web03']],
    ['!web', ['lonely', 'db1']],
    ['db1:lonely', ['lonely', 'db1']],
    ['~web0[12]', ['web01', 'web02']],
    ['nothing', []],
  ])('--limit %s', (pattern, hosts) => {
    expect(selectHosts(inventory, pattern).filter((h) => h !== 'db2')).toEqual(hosts);
  });
});

describe('INI specifics', () => {
  it('reads host:port, quoted values and numbers', () => {
    const inventory = parseInventory(INI, 'fleet.ini');
    expect(inventory.hosts.get('db2')).toMatchObject({ ansible_port: 2200 });
    expect(inventory.hosts.get('db1')).toMatchObject({ note: 'two words' });
  });
});

describe('host ranges', () => {
  it.each([
    ['node[01:03]', ['node01', 'node02', 'node03']],
    ['n[1:5:2].x', ['n1.x', 'n3.x', 'n5.x']],
    ['db-[a:c]', ['db-a', 'db-b', 'db-c']],
    ['r[1:2]c[1:2]', ['r1c1', 'r1c2', 'r2c1', 'r2c2']],
  ])('%s', (name, hosts) => expect(expandHostRange(name, 'f:1')).toEqual(hosts));
});

describe('bad inventories name the file and line', () => {
  it.each([
    ['inv.ini', 'a\n[web\nb\n', /^inv\.ini:2: malformed section header/],
    ['inv.ini', '[web:vars]\n# c\nnovalue\n', /^inv\.ini:3: expected key=value/],
    ['inv.ini', '[web]\nh1 port\n', /^inv\.ini:2: expected key=value, found "port"/],
    ['inv.ini', '[web:hosts2]\n', /^inv\.ini:1: unknown section type/],
    ['inv.ini', '[web]\nh[3:1]\n', /^inv\.ini:2: host range \[3:1\] ends before it starts/],
    ['inv.ini', '[web]\nh1 a="open\n', /^inv\.ini:2: unterminated " quote/],
    ['inv.yaml', 'all:\n  hosts:\n    - a\n', /^inv\.yaml:3: hosts of group "all" must be a mapping/],
    ['inv.yaml', 'all:\n  children:\n    web:\n      host:\n        a:\n', /^inv\.yaml:4: group "web" has unknown key "host"/],
    ['inv.yaml', 'all:\n  hosts:\n    a: {\n', /^inv\.yaml:\d+: /],
    ['inv.yaml', 'all:\n  hosts:\n    a:\n    a:\n', /^inv\.yaml:3: Map keys must be unique$/],
    ['inv.yaml', 'all:\n  hosts:\n    a: 5\n', /^inv\.yaml:3: variables of host "a" must be a mapping/],
    ['inv.yaml', 'a:\n  children:\n    b:\n      children:\n        a:\n', /^inv\.yaml: groups form a cycle: .*a -> b -> a/],
  ])('%s: %j', (file, text, message) => {
    expect(() => parseInventory(text, file)).toThrow(InputError);
    expect(() => parseInventory(text, file)).toThrow(message);
  });
});

describe('resolveTargets', () => {
  it('takes address, port and user from the inventory, defaults from the flags', async () => {
    const file = join(await tempDir(), 'hosts.yml');
    await writeFile(file, YAML);
    const targets = await resolveTargets({ inventory: file, limit: 'web:db', port: 2022 });
    expect(targets.map((t) => [t.name, t.address, t.port, t.user])).toEqual([
      ['web01', 'web01', 2022, 'admin'],
      ['web02', '10.0.0.2', 2222, 'admin'],
      ['web03', 'web03', 2022, 'admin'],
      ['db1', '10.0.1.1', 2022, 'root'],
    ]);
  });

  it('makes one target per --host, with --port and --user', async () => {
    expect(await resolveTargets({ host: ['a', 'b', 'a'], port: 2222 })).toEqual([
      { name: 'a', address: 'a', port: 2222, user: 'root', vars: {} },
      { name: 'b', address: 'b', port: 2222, user: 'root', vars: {} },
    ]);
  });

  it.each([
    [{}, /no hosts/],
    [{ host: ['a'], inventory: 'x' }, /either --host or --inventory/],
    [{ inventory: '/nonexistent/inv.ini' }, /^\/nonexistent\/inv\.ini: cannot read inventory: no such file/],
    [{ host: ['a'], limit: 'b' }, /--limit b: matches none/],
  ])('refuses %j', async (options, message) => {
    await expect(resolveTargets(options)).rejects.toThrow(message);
  });

  it('refuses an ansible_port that is not a port, naming the host', async () => {
    const file = join(await tempDir(), 'hosts.ini');
    await writeFile(file, 'h1 ansible_port=ssh\n');
    await expect(resolveTargets({ inventory: file })).rejects.toThrow(/hosts\.ini: host h1: ansible_port "ssh" is not a TCP port/);
  });
});
