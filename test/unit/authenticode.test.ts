import { describe, expect, it } from 'vitest';
import { commonName, peSignatures } from '../../src/inspect/authenticode.js';
import { parseMdirListing } from '../../src/inspect/efi.js';
import { peWithSignature, signedData } from './signed-pe.js';
import { tempDir } from './helpers.js';

describe('Authenticode signers of PE files', () => {
  it('finds the signing certificate of the PKCS#7 SignedData in the certificate table', async () => {
    const pe = peWithSignature(await signedData(await tempDir(), 'Test Secure Boot Signer', 'Test Secure Boot CA'));
    expect(peSignatures(pe)).toEqual({ pe: true, signatures: [{ subject: 'O=Example\nCN=Test Secure Boot Signer', issuer: 'CN=Test Secure Boot CA' }] });
  });

  it('tells an unsigned PE from a file that is no PE at all', () => {
    expect(peSignatures(peWithSignature())).toEqual({ pe: true, signatures: [] });
    expect(peSignatures(Buffer.from('search --fs-uuid --set=root x\n'))).toEqual({ pe: false });
  });

  it('refuses a certificate table that lies beyond the file', async () => {
    const pe = peWithSignature(await signedData(await tempDir(), 'S', 'C'));
    expect(() => peSignatures(pe.subarray(0, pe.length - 16))).toThrow(/beyond the file/);
  });

  it('shortens names to their CN', () => {
    expect(commonName('C=US\nO=Microsoft Corporation\nCN=Microsoft Corporation UEFI CA 2011')).toBe('Microsoft Corporation UEFI CA 2011');
    expect(commonName('O=Example\nOU=Unit')).toBe('O=Example, OU=Unit');
  });
});

describe('mdir listing', () => {
  it('keeps files, drops directories and the drive prefix', () => {
    expect(parseMdirListing('::/EFI/BOOT/\n::/EFI/debian/\n::/EFI/BOOT/BOOTX64.EFI\n::/EFI/debian/grub.cfg\n')).toEqual(['EFI/BOOT/BOOTX64.EFI', 'EFI/debian/grub.cfg']);
  });
});
