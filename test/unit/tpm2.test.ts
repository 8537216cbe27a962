/**
 * What status and reseal read about a machine's TPM, parsed from the real tpm2-tools output
 * (against swtpm here, as on the machines), and the tpm2 pins found in clevis tokens.
 */
import { execa, type ResultPromise } from 'execa';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tpm2JwesInToken } from '../../src/host/clevis.js';
import { parsePcrRead, parseTpm2Lockout, pcrReadCommand, TPM2_LOCKOUT_COMMAND } from '../../src/host/tpm2.js';
import { freePort } from '../../src/qemu/vm.js';

describe('tpm2-tools output, from swtpm', () => {
  let dir: string;
  let swtpm: ResultPromise;
  let tcti: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'keylessgo-tpm2-'));
    // tpm2-tools' swtpm TCTI talks to the control channel on the next port.
    const server = await freePort();
    swtpm = execa('swtpm', ['socket', '--tpm2', '--tpmstate', `dir=${dir}`, '--server', `type=tcp,port=${server},bindaddr=127.0.0.1`, '--ctrl', `type=tcp,port=${server + 1},bindaddr=127.0.0.1`, '--flags', 'not-need-init,startup-clear'], { reject: false });
    tcti = `swtpm:host=127.0.0.1,port=${server}`;
    for (let attempt = 0; attempt < 50; attempt++) {
      if ((await execa('tpm2_getcap', ['-T', tcti, 'properties-variable'], { reject: false })).exitCode === 0) return;
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    throw new Error('swtpm did not answer');
  });
  afterAll(async () => {
    swtpm?.kill();
    await swtpm?.catch(() => undefined);
    await rm(dir, { recursive: true, force: true });
  });

  const tool = (command: string) => {
    const [file, ...args] = command.split(' ');
    return execa(file!, ['-T', tcti, ...args]).then((result) => result.stdout);
  };

  it("reads the dictionary-attack lockout: swtpm's counter 0 of 3, 1000 s per failure", async () => {
    expect(parseTpm2Lockout(await tool(TPM2_LOCKOUT_COMMAND))).toEqual({ counter: 0, maxTries: 3, recoverySeconds: 1000, lockoutRecoverySeconds: 1000 });
  });

  it('reads PCR values into one comparable line; an extend changes it', async () => {
    const before = parsePcrRead(await tool(pcrReadCommand('sha256', [7, 8])));
    expect(before).toBe(`sha256:7=0x${'0'.repeat(64)},8=0x${'0'.repeat(64)}`);
    await execa('tpm2_pcrextend', ['-T', tcti, `7:sha256=${'ab'.repeat(32)}`]);
    const after = parsePcrRead(await tool(pcrReadCommand('sha256', [7, 8])));
    expect(after).toMatch(/^sha256:7=0x[0-9A-F]{64},8=0x0{64}$/);
    expect(after).not.toBe(before);
  });

  it('has no lockout state to show without the properties', () => {
    expect(parseTpm2Lockout('TPM2_PT_HR_PERSISTENT: 0x0\n')).toBeUndefined();
  });
});

describe('tpm2 pins in a clevis token', () => {
  const segment = (header: unknown) => Buffer.from(JSON.stringify(header)).toString('base64url');
  const compact = (header: unknown, body = 'k.iv.ct.tag') => `${segment(header)}.${body}`;
  const tpm2 = compact({ clevis: { pin: 'tpm2', tpm2: { pcr_bank: 'sha256', pcr_ids: '7' } } }, 'e.i.c.t');
  const tang = compact({ clevis: { pin: 'tang', tang: { url: 'http://tang', adv: { keys: [] } } } });
  const token = (header: unknown, jwe: Record<string, string> = { encrypted_key: '', iv: 'IV', ciphertext: 'CT', tag: 'TAG' }) => JSON.stringify({ type: 'clevis', keyslots: ['1'], jwe: { protected: segment(header), ...jwe } });

  it('finds the tpm2 JWE inside sss, and a tpm2 binding\'s own JWE in compact form', () => {
    expect(tpm2JwesInToken(token({ alg: 'dir', clevis: { pin: 'sss', sss: { t: 2, jwe: [tang, tpm2] } } }))).toEqual([tpm2]);
    const own = { alg: 'dir', clevis: { pin: 'tpm2', tpm2: { pcr_bank: 'sha256', pcr_ids: '7' } } };
    expect(tpm2JwesInToken(token(own))).toEqual([`${segment(own)}..IV.CT.TAG`]);
  });

  it('finds none in a Tang binding or another token type', () => {
    expect(tpm2JwesInToken(token({ clevis: { pin: 'tang', tang: { url: 'http://tang' } } }))).toEqual([]);
    expect(tpm2JwesInToken(JSON.stringify({ type: 'systemd-fido2', keyslots: ['0'] }))).toEqual([]);
  });
});
