/**
 * examples/ansible: the playbook passes ansible-playbook's syntax check and, with a stub in
 * place of keylessgo, runs it once per inventory host with that host's address, port and user.
 */
import { execFile } from 'node:child_process';
import { chmod, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { REPO, tempDir } from './helpers.js';

const run = promisify(execFile);
const PLAYBOOK = join(REPO, 'examples/ansible/keylessgo.yml');
const INVENTORY = join(REPO, 'examples/ansible/inventory.ini');
const env = { ...process.env, ANSIBLE_NOCOLOR: '1', ANSIBLE_LOCALHOST_WARNING: 'false', ANSIBLE_INVENTORY_UNPARSED_WARNING: 'false' };

// ansible-core comes from scripts/install-deps.sh: these tests run in CI, never skipped.
describe('examples/ansible', () => {
  it('passes ansible-playbook --syntax-check', async () => {
    const { stdout } = await run('ansible-playbook', ['--syntax-check', '-i', INVENTORY, PLAYBOOK], { env });
    expect(stdout).toContain('playbook: ');
  }, 120_000);

  it('runs keylessgo once per host with its inventory address, port and user', async () => {
    const dir = await tempDir();
    const stub = join(dir, 'keylessgo');
    // Records its arguments under the --host value and answers like `keylessgo --json`.
    await writeFile(stub, `#!/bin/sh\nhost=$(echo "$@" | sed 's/.* --host \\([^ ]*\\) .*/\\1/')\nprintf '%s\\n' "$@" > "${dir}/$host"\necho '{"host":"x","result":"ok","summary":"stub"}'\n`);
    await chmod(stub, 0o755);
    const { stdout } = await run('ansible-playbook', ['-i', INVENTORY, PLAYBOOK, '-f', '4', '-e', `keylessgo_command=${stub}`, '-e', 'keylessgo_action=unlock', '-e', 'keylessgo_manifest=/m.json', '-e', 'keylessgo_passphrase_file=/p'], { env });
    expect(stdout).toMatch(/node04\.rack2\.example +: ok=3 +changed=1 .*failed=0/);
    const args = async (host: string) => (await readFile(join(dir, host), 'utf8')).trim().split('\n');
    expect(await args('192.0.2.12')).toEqual(['unlock', '--host', '192.0.2.12', '--port', '2222', '--user', 'root', '--key', expect.stringMatching(/\.ssh\/id_ed25519$/), '--json', '--passphrase-file', '/p', '--manifest', '/m.json']);
    expect((await args('node03.rack2.example')).slice(0, 7)).toEqual(['unlock', '--host', 'node03.rack2.example', '--port', '22', '--user', 'root']);
    expect(await args('192.0.2.11')).toContain('--manifest');

    // enroll takes the Tang servers and no manifest (it does not accept --manifest).
    await run('ansible-playbook', ['-i', INVENTORY, PLAYBOOK, '-f', '4', '--limit', 'node02.rack1.example', '-e', `keylessgo_command=${stub}`, '-e', 'keylessgo_action=enroll', '-e', 'keylessgo_manifest=/m.json', '-e', '{"keylessgo_tang": ["http://tang.example"]}'], { env });
    const enroll = await args('192.0.2.12');
    expect(enroll[0]).toBe('enroll');
    expect(enroll).toContain('--tang=http://tang.example');
    expect(enroll).not.toContain('--manifest');
  }, 180_000);
});
