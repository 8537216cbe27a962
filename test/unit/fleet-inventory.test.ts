/** Ansible inventories (YAML, INI, ansible-inventory's JSON), variable precedence, host patterns and bad files. */
import { execa } from 'execa';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { InputError } from '../../src/errors.js';
import { expandHostRange, parseInventory, selectHosts } from '../../src/fleet/inventory.js';
import { resolveTargets, type FleetTarget } from '../../src/fleet/targets.js';
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

/**
 * `ansible-inventory --list` (ansible-core from scripts/install-deps.sh: run in CI, never
 * skipped) turns each source into JSON; keylessgo must find the same targets in it as in the
 * source read directly.
 */
describe('ansible-inventory --list JSON', () => {
  const env = { ...process.env, ANSIBLE_NOCOLOR: '1', ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED: '1' };
  const ansibleInventory = async (dir: string, name: string, sources: string[], extra: string[] = []) => {
    const { stdout } = await execa('ansible-inventory', [...sources.flatMap((source) => ['-i', join(dir, source)]), '--list', ...extra], { env, cwd: dir });
    await writeFile(join(dir, name), stdout);
    return join(dir, name);
  };

  it.each([
    ['YAML', 'fleet.yaml', YAML],
    ['INI', 'fleet.ini', INI],
  ])('of a %s inventory gives the targets the %s reader gives, with --export too', async (_format, file, text) => {
    const dir = await tempDir();
    await writeFile(join(dir, file), text);
    const [listed, exported] = await Promise.all([ansibleInventory(dir, 'list.json', [file]), ansibleInventory(dir, 'export.json', [file], ['--export'])]);
    const direct = await resolveTargets({ inventory: join(dir, file) });
    expect(direct.length).toBeGreaterThanOrEqual(5);
    expect(await resolveTargets({ inventory: listed })).toEqual(direct);
    expect(await resolveTargets({ inventory: exported })).toEqual(direct);
    for (const pattern of ['web:!canary', 'canary', 'ungrouped', 'db:lonely']) {
      expect(selectHosts(parseInventory(text, file), pattern)).toEqual((await resolveTargets({ inventory: listed, limit: pattern })).map((t) => t.name));
    }
  }, 60_000);

  it("of a constructed inventory: its groups select hosts, its composed variables set the port", async () => {
    const dir = await tempDir();
    await writeFile(join(dir, 'fleet.yaml'), YAML);
    // `strict: false`: keyed_groups skip hosts without a `tier` (Ansible's usual setting).
    await writeFile(
      join(dir, 'constructed.yml'),
      "plugin: ansible.builtin.constructed\nstrict: false\ncompose:\n  ansible_port: 2200 + (inventory_hostname[-1] | int)\n  rack: \"'r' ~ inventory_hostname[-1]\"\ngroups:\n  frankfurt: site == 'fra'\nkeyed_groups:\n  - key: tier\n    prefix: tier\n",
    );
    const listed = await ansibleInventory(dir, 'constructed.json', ['fleet.yaml', 'constructed.yml']);
    const direct = await resolveTargets({ inventory: join(dir, 'fleet.yaml') });
    // compose sets ansible_port as a string ("2201"); lonely's last letter is 0 as an int.
    const port = (name: string) => 2200 + (Number(name.at(-1)) || 0);
    // The JSON keeps no order across groups (lonely is no longer ungrouped): compare by name.
    const byName = (targets: FleetTarget[]) => [...targets].sort((a, b) => a.name.localeCompare(b.name));
    expect(byName(await resolveTargets({ inventory: listed }))).toEqual(
      byName(direct.map((t) => ({ ...t, port: port(t.name), vars: { ...t.vars, ansible_port: String(port(t.name)), rack: `r${t.name.at(-1)}` } }))),
    );
    const names = async (limit: string) => (await resolveTargets({ inventory: listed, limit })).map((t) => t.name).sort();
    expect(await names('frankfurt')).toEqual(['db1', 'lonely']);
    expect(await names('tier_web:tier_canary')).toEqual(['web01', 'web02', 'web03']);
  }, 60_000);

  it('reads an inventory script\'s lists and the YAML layout written as JSON', () => {
    const script = parseInventory('{"web": ["w1", "w2"], "db": {"hosts": ["d1"], "vars": {"ansible_user": "pg"}}, "_meta": {"hostvars": {"w1": {"ansible_port": 2222}}}}', 'script-output');
    expect([...script.hosts]).toEqual([['w1', { ansible_port: 2222 }], ['w2', {}], ['d1', { ansible_user: 'pg' }]]);
    const layout = parseInventory('{"all": {"hosts": {"a": {"ansible_port": 2}}}}', 'inv.json');
    expect([...layout.hosts]).toEqual([['a', { ansible_port: 2 }]]);
  });

  it.each([
    ['{"web": {"hosts": "w1"}, "_meta": {}}', /^inv\.json: hosts of group "web" must be a list of names$/],
    ['{"_meta": {"hostvars": []}}', /^inv\.json: _meta\.hostvars must be a mapping/],
    ['{"web": {"hosts": ["w1"], "host": []}}', /^inv\.json: group "web" has unknown key "host"/],
    ['{"all": {"children": ["web"]}, "web": {"children": ["all"]}}', /^inv\.json: group "all" cannot be a child of "web"$/],
    ['{"web": ["w1"], "_meta": {"hostvars": {"w1": 5}}}', /^inv\.json: variables of host "w1" must be a mapping$/],
    ['{"web": ["w1"],\n "db": ["d1"]\n,}', /^inv\.json:3: not JSON: /],
    ['[1]', /^inv\.json: an inventory in JSON must be an object$/],
  ])('refuses %j', (text, message) => {
    expect(() => parseInventory(text, 'inv.json')).toThrow(InputError);
    expect(() => parseInventory(text, 'inv.json')).toThrow(message);
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
