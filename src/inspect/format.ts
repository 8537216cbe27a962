/** The inspect report for people: one section per part of the image, labels aligned. */
import { formatSize } from '../recipe/size.js';
import type { InspectReport } from './inspect.js';
import { commonName, type Signature } from './authenticode.js';
import type { Keyslot, Token } from './luks.js';

type Row = [label: string, value: string];

function section(title: string, rows: Row[]): string {
  const width = Math.max(0, ...rows.map(([label]) => label.length));
  return [title, ...rows.map(([label, value]) => `  ${label.padEnd(width)}  ${value}`)].join('\n');
}

function columns(rows: string[][]): string[] {
  const widths = rows[0]!.map((_, column) => Math.max(...rows.map((row) => row[column]!.length)));
  return rows.map((row) => `  ${row.map((cell, column) => cell.padEnd(widths[column]!)).join('  ')}`.trimEnd());
}

function describeKeyslot(k: Keyslot): string {
  const cost = k.kdf === 'pbkdf2' ? `${k.hash}, ${k.iterations} iterations` : `time ${k.timeCost}, memory ${k.memoryKiB} KiB, ${k.parallel} ${k.parallel === 1 ? 'thread' : 'threads'}`;
  return `${k.type}, ${k.kdf} (${cost})`;
}

function describeToken(t: Token): string {
  const slots = `keyslot ${t.keyslots.join(', ') || '-'}`;
  if (!t.clevisPin) return `${t.type} -> ${slots}`;
  const servers = (t.tang ?? []).map((s) => `${s.url} (signing key ${s.thumbprints.join(', ') || 'unknown'})`);
  const tpm2 = (t.tpm2 ?? []).map((b) => `TPM2 ${b.pcrIds.length ? `PCR ${b.pcrBank ?? 'sha1'}:${b.pcrIds.join(',')}` : 'without PCR policy'}`);
  const pins = [...servers, ...tpm2];
  return `clevis ${t.clevisPin} -> ${slots}${pins.length ? `: ${pins.join('; ')}` : ''}${t.policy ? ` [${t.policy}]` : ''}`;
}

const yesNo = (present: boolean) => (present ? 'yes' : 'NO');

/** "signed by CN (issuer CN)", one per signature; "unsigned" without any. */
function describeSigners(signatures: readonly Signature[]): string {
  if (signatures.length === 0) return 'unsigned';
  return `signed by ${signatures.map((s) => `${commonName(s.subject)} (issuer ${commonName(s.issuer)})`).join('; ')}`;
}

export function formatInspectReport(report: InspectReport): string {
  const parts: string[] = [section('Image', [['file', report.image], ['format', `${report.format}, ${formatSize(report.virtualBytes)} virtual`]])];

  const table = report.partitionTable;
  parts.push(
    [
      `Partitions (${table.scheme === 'none' ? 'no partition table: the whole disk' : `${table.scheme}, ${table.sectorSize}-byte sectors`})`,
      ...columns([
        ['#', 'label', 'type', 'start', 'size', 'contents'],
        ...table.partitions.map((p) => [String(p.number), p.label || '-', p.typeName || '-', formatSize(p.startBytes), formatSize(p.sizeBytes), p.contents === 'other' ? '-' : p.contents]),
      ]),
    ].join('\n'),
  );

  for (const luks of report.luks) {
    const geometry = [luks.cipher, `${luks.keySizeBits}-bit key`, luks.sectorSize && `${luks.sectorSize}-byte sectors`, luks.dataOffsetBytes !== undefined && `data at ${formatSize(luks.dataOffsetBytes)}`];
    parts.push(
      section(`LUKS${luks.version} on partition ${luks.partition}`, [
        ['uuid', luks.uuid],
        ...(luks.label ? [['label', luks.label] as Row] : []),
        ['cipher', geometry.filter(Boolean).join(', ')],
        ...luks.keyslots.map((k): Row => [`keyslot ${k.slot}`, describeKeyslot(k)]),
        ...luks.tokens.map((t): Row => [`token ${t.id}`, describeToken(t)]),
      ]),
    );
  }

  if (report.efi) {
    parts.push(
      section(
        `EFI loader chain (partition ${report.efi.partition})`,
        report.efi.files.map((f): Row => [f.path, `${formatSize(f.bytes)}, ${f.pe ? describeSigners(f.signatures) : 'not a PE image'}`]),
      ),
    );
  }

  if (report.boot) {
    const ip = report.boot.cmdline.split(/\s+/).filter((word) => word.startsWith('ip='));
    parts.push(
      section(`Boot (partition ${report.boot.partition}, ${report.boot.grubCfg})`, [
        ['kernel', `${report.boot.kernel}, ${report.boot.kernelSignatures ? describeSigners(report.boot.kernelSignatures) : 'not a PE image'}`],
        ['cmdline', report.boot.cmdline],
        ['initrd', report.boot.initrds.join(' ') || '-'],
        ['network', ip.join(' ') || 'no ip= (the initramfs brings up no network from the command line)'],
      ]),
    );
  }

  const initramfs = report.initramfs;
  if (initramfs) {
    parts.push(
      section(`Initramfs (${initramfs.files.join(' ')}: ${initramfs.entryCount} entries; ${initramfs.segments.join(', ')})`, [
        ...Object.entries(initramfs.contains).map(([name, present]): Row => [name, yesNo(present)]),
        ...initramfs.authorizedKeys.map((k): Row => ['authorized key', `${k.type} ${k.fingerprint} ${k.comment}${k.options ? ` [${k.options}]` : ''}`.trimEnd()]),
        ...initramfs.dropbearHostKeys.map((k): Row => ['host key', `${k.type} ${k.fingerprint}`]),
        ['dropbear options', initramfs.dropbearOptions ?? '-'],
        ...initramfs.crypttab.map((line): Row => ['crypttab', line]),
        ...initramfs.network.map((line): Row => ['network config', line]),
      ]),
    );
  }

  if (report.manifest) {
    const { summary, compared, mismatches, file } = report.manifest;
    const recipe = summary.recipe;
    parts.push(
      section(`Manifest (${file})`, [
        ['recipe', `${recipe?.name ?? '?'} (${recipe?.suite ?? '?'} ${recipe?.architecture ?? '?'})`],
        ['built', `${summary.builtAt ?? '?'} by ${summary.tool?.name ?? '?'} ${summary.tool?.version ?? ''}`.trimEnd()],
        ['kernel', summary.kernel?.version ?? '?'],
        ['compared', `${compared.length} fields with the image, ${mismatches.length === 0 ? 'all match' : `${mismatches.length} differ`}`],
        ...mismatches.map((m): Row => [`MISMATCH ${m.field}`, `manifest ${m.manifest}, image ${m.image}`]),
      ]),
    );
  }

  if (report.sboms.length > 0) {
    parts.push(section('SBOMs', report.sboms.map((sbom): Row => [sbom.file, `${sbom.format}: ${sbom.packages} packages, ${sbom.files} files`])));
  }

  if (report.notes.length > 0) parts.push(['Notes', ...report.notes.map((note) => `  - ${note}`)].join('\n'));
  return `${parts.join('\n\n')}\n`;
}
