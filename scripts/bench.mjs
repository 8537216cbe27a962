#!/usr/bin/env node
/**
 * `make bench`: measures, in one run on this machine, a cold build of the default recipe
 * (empty cache, packages from the mirror), a warm rebuild after a change that leaves the
 * package set alone (new key and passphrase, kernel parameter, overlay file), a cold build after
 * a simulated archive update (stage cache emptied, the package cache kept but for one package,
 * which is downloaded again), the qcow2 size
 * against the bytes the filesystems use, and a boot test; and, as baselines from the same
 * run, the time the build spends inside host tools (the floor) and a peer tool building a
 * comparable image where one is installed (bench/peers/run-*.sh); the fleet commands against
 * 300 stand-in SSH machines at --parallel 20, 50 and 100 (test/fleet-load/bench.ts: wall time,
 * the CLI's peak RSS and open file descriptors; about 4 minutes); last, the e2e suite's wall
 * time (50-60 min here; KEYLESSGO_BENCH_E2E=0 skips it and reports the last run's report, if any).
 * KEYLESSGO_BENCH_ONLY=fleet runs the fleet part alone.
 * Prints a table, writes JSON. Targets are reported as ratios, never asserted.
 *
 * The work directory (~4.4 GB: images, cache, logs, bench.json) is removed when the run ends,
 * failed or not, unless KEYLESSGO_BENCH_KEEP=1; a directory given as KEYLESSGO_BENCH_DIR is the
 * caller's and is kept.
 */
import { execa } from 'execa';
import { randomBytes } from 'node:crypto';
import { rmSync } from 'node:fs';
import { access, mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { constants, cpus, loadavg, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parse, stringify } from 'yaml';
import { mirrorFromSources, readHostAptSources } from '../dist/host/apt-sources.js';

const REPO = resolve(import.meta.dirname, '..');
const CLI = join(REPO, 'dist/cli.js');
const RECIPE = join(REPO, 'recipes/debian-bookworm.yaml');
const TARGETS = { coldSeconds: 45, warmSeconds: 10, qcow2OverUsed: 1.1, unlockedSeconds: 30, bootedSeconds: 60 };

const dir = process.env.KEYLESSGO_BENCH_DIR ?? (await mkdtemp(join(tmpdir(), 'keylessgo-bench-')));
await mkdir(dir, { recursive: true });
const keepDir = process.env.KEYLESSGO_BENCH_KEEP === '1' || process.env.KEYLESSGO_BENCH_DIR !== undefined;
if (!keepDir) {
  // 'exit' also follows an uncaught error; a signal is turned into an exit so it removes the directory too.
  process.on('exit', () => rmSync(dir, { recursive: true, force: true }));
  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP']) process.once(signal, () => process.exit(128 + constants.signals[signal]));
}
const cacheDir = join(dir, 'cache');
const say = (line) => process.stderr.write(`bench: ${line}\n`);

async function credentials(name) {
  const key = join(dir, `${name}-key`);
  await execa('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', `bench-${name}`, '-f', key]);
  const passphrase = join(dir, `${name}-passphrase`);
  await writeFile(passphrase, randomBytes(18).toString('base64url'), { mode: 0o600 });
  return { key, passphrase };
}

async function timedBuild(name, recipe) {
  const creds = await credentials(name);
  const out = join(dir, name);
  say(`${name} build of ${recipe} ...`);
  const started = performance.now();
  const run = await execa('node', [CLI, 'build', recipe, '--out', out, '--passphrase-file', creds.passphrase, '--authorized-keys', `${creds.key}.pub`, '--cache-dir', cacheDir], { all: true, reject: false });
  const seconds = (performance.now() - started) / 1000;
  await writeFile(join(dir, `${name}.log`), run.all ?? '');
  // The log's tail goes with the error: the work directory, and the log in it, are removed at exit.
  if (run.exitCode !== 0) throw new Error(`${name} build failed (exit ${run.exitCode}):\n${(run.all ?? '').split('\n').slice(-30).join('\n')}`);
  const manifest = JSON.parse(await readFile(join(out, 'manifest.json'), 'utf8'));
  say(`${name} build: ${seconds.toFixed(1)} s`);
  return { seconds, manifest, out, creds, log: run.all ?? '' };
}

/** The default recipe with changes that leave the package set alone. */
async function changedRecipe() {
  const recipe = parse(await readFile(RECIPE, 'utf8'));
  const overlay = join(dir, 'overlay');
  await mkdir(join(overlay, 'etc'), { recursive: true });
  await writeFile(join(overlay, 'etc/keylessgo-bench'), `${new Date().toISOString()}\n`);
  recipe.kernel = { ...recipe.kernel, cmdline: [...(recipe.kernel?.cmdline ?? []), 'keylessgo.bench=1'] };
  recipe.overlays = [...(recipe.overlays ?? []), overlay];
  const file = join(dir, 'changed.yaml');
  await writeFile(file, stringify(recipe));
  return file;
}

/**
 * What an archive publication does to the next build: every stage cache entry is a miss (their
 * keys hold the Release dates), and one package has a new version. Empties the stage cache and
 * removes that package's file from the package cache.
 */
async function simulateArchiveUpdate(changedPackage) {
  await execa('node', [CLI, 'cache', 'prune', '--cache-dir', cacheDir]);
  const pool = join(cacheDir, 'packages', parse(await readFile(RECIPE, 'utf8')).suite);
  const files = (await readdir(pool)).filter((f) => f.startsWith(`${changedPackage}_`));
  if (files.length !== 1) throw new Error(`expected one ${changedPackage} file in ${pool}, found ${files.length}`);
  await rm(join(pool, files[0]));
}

async function bootTest(build) {
  const qcow2 = build.manifest.outputs.find((o) => o.format === 'qcow2');
  const out = join(dir, 'boot-test');
  say('boot test (UEFI) ...');
  const run = await execa('node', [CLI, 'boot-test', join(build.out, qcow2.path), '--key', build.creds.key, '--passphrase-file', build.creds.passphrase, '--firmware', 'uefi', '--out', out], { all: true, reject: false });
  await writeFile(join(dir, 'boot-test.log'), run.all ?? '');
  const result = JSON.parse(await readFile(join(out, 'result.json'), 'utf8'));
  return { passed: result.passed, accel: result.accel, ...result.milestones };
}

/** Peer builders that exist on this machine, each printing JSON lines (bench/peers/run-*.sh). */
async function peers() {
  if (process.env.KEYLESSGO_BENCH_PEERS === '0') return [{ peer: 'mkosi, debos', ok: false, error: 'skipped (KEYLESSGO_BENCH_PEERS=0)' }];
  const mirror = mirrorFromSources(await readHostAptSources());
  const results = [];
  for (const peer of ['mkosi', 'debos']) {
    const script = join(REPO, 'bench/peers', `run-${peer}.sh`);
    const installed = await execa('sh', ['-c', `command -v ${peer}`], { reject: false });
    if (installed.exitCode !== 0 || !(await access(script).then(() => true, () => false))) {
      // `make bench` installs mkosi (install-deps.sh --bench); debos only runs where the user installed it.
      results.push({ peer, ok: false, error: peer === 'debos' ? 'not installed (make bench leaves it out: no image without KVM, see bench/peers/README.md)' : `not installed (apt-get install ${peer})` });
      continue;
    }
    say(`peer ${peer} ...`);
    const run = await execa('bash', [script, join(dir, `peer-${peer}`), mirror?.archive ?? ''], { reject: false });
    for (const line of run.stdout.split('\n').filter((l) => l.startsWith('{'))) results.push(JSON.parse(line));
  }
  return results;
}

/** The e2e suite's wall time and per-file seconds from its JSON report (vitest.e2e.config.ts), if any. */
async function e2eReport() {
  const report = await readFile(join(REPO, 'test-results/e2e.json'), 'utf8').then(JSON.parse, () => undefined);
  if (!report?.testResults?.length) return undefined;
  const files = report.testResults.map((f) => ({ file: f.name.slice(REPO.length + 1), seconds: (f.endTime - f.startTime) / 1000, status: f.status }));
  const end = Math.max(...report.testResults.map((f) => f.endTime));
  return { at: new Date(report.startTime).toISOString(), seconds: (end - report.startTime) / 1000, success: report.success, files };
}

/** Runs the e2e suite (its report lands in test-results/e2e.json), or only reads the last report. */
async function e2eSuite() {
  if (process.env.KEYLESSGO_BENCH_E2E === '0') return { ...(await e2eReport()), thisRun: false };
  say('e2e suite (vitest.e2e.config.ts, 50-60 minutes on 2 cores) ...');
  // A report left from an earlier run must not pass for this one's.
  await rm(join(REPO, 'test-results/e2e.json'), { force: true });
  // Its progress goes to stderr as it runs (the table goes to stdout), and into e2e.log.
  const run = await execa('npx', ['vitest', 'run', '--config', 'vitest.e2e.config.ts'], { cwd: REPO, all: true, reject: false, stdout: ['pipe', 2], stderr: ['pipe', 2], env: { FORCE_COLOR: '0' } });
  await writeFile(join(dir, 'e2e.log'), run.all ?? '');
  const report = await e2eReport();
  return report ? { ...report, thisRun: true } : { thisRun: true, error: `no report (vitest exit ${run.exitCode}): ${(run.all ?? '').split('\n').slice(-5).join(' | ')}` };
}

/** The fleet commands against 300 stand-in SSH machines (test/fleet-load/bench.ts, TypeScript: run with vite-node). */
async function fleetLoad() {
  say('fleet load: stand-in SSH machines, unlock and status at --parallel 20, 50, 100 (about 4 minutes for 300) ...');
  const run = await execa(join(REPO, 'node_modules/.bin/vite-node'), ['test/fleet-load/bench.ts'], { cwd: REPO, reject: false, stderr: 'inherit' });
  if (run.exitCode !== 0) return { error: `test/fleet-load/bench.ts exited ${run.exitCode}` };
  return { runs: run.stdout.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l)) };
}

function fleetLines(fleet) {
  if (fleet.error) return [`fleet load: ${fleet.error}`];
  return fleet.runs.map((r) => `fleet load, ${r.hosts} hosts, ${r.command} --parallel ${r.parallel}: ${fmt(r.seconds)} s wall, peak RSS ${fmt(r.peakRssBytes / 1e6, 0)} MB, ${r.peakFds} open fds at most, exit ${r.exitCode} (${Object.entries(r.results).map(([k, v]) => `${v} ${k}`).join(', ')})`);
}

const fmt = (n, digits = 1) => (n === undefined || n === null || Number.isNaN(n) ? '-' : n.toFixed(digits));

if (process.env.KEYLESSGO_BENCH_ONLY === 'fleet') {
  const fleet = await fleetLoad();
  process.stdout.write(`${fleetLines(fleet).join('\n')}\n`);
  await writeFile(join(dir, 'bench.json'), `${JSON.stringify({ at: new Date().toISOString(), dir, cores: cpus().length, fleet }, null, 2)}\n`);
  process.exit(fleet.error ? 1 : 0);
}

// Other load on the machine distorts every figure: the report says how much there was.
const loadBefore = loadavg()[0];
const cold = await timedBuild('cold', RECIPE);
const warm = await timedBuild('warm', await changedRecipe());
const warmHits = ['bootstrap', 'initramfs'].filter((stage) => new RegExp(`cache hit: ${stage}`).test(warm.log));
await simulateArchiveUpdate('jq');
const updated = await timedBuild('archive-update', RECIPE);
const packageCacheUse = /package cache: (\d+) packages from it, (\d+) downloaded/.exec(updated.log);
const qcow2 = cold.manifest.outputs.find((o) => o.format === 'qcow2');
const used = cold.manifest.filesystems.usedBytes;
const usedBytes = used.root + used.boot + used.esp;
const raw = cold.manifest.outputs.find((o) => o.format === 'raw');
const rawAllocated = raw ? (await stat(join(cold.out, raw.path))).blocks * 512 : undefined;
// Wall-clock seconds with at least one host tool running: tools that ran side by side count once.
const floorSeconds = cold.manifest.hostToolBusySeconds;
const toolSecondsSummed = Object.values(cold.manifest.hostToolSeconds).reduce((a, b) => a + b, 0);
const boot = await bootTest(cold);
const peerResults = await peers();
const fleet = await fleetLoad();
const e2e = await e2eSuite();
const peerPlain = peerResults.find((p) => p.ok && p.variant === 'plain');

const rows = [
  ['cold build (s)', cold.seconds, TARGETS.coldSeconds, peerPlain?.seconds],
  [`warm rebuild (s), cache hits: ${warmHits.join('+') || 'none'}`, warm.seconds, TARGETS.warmSeconds, undefined],
  [`cold after an archive update (s), ${packageCacheUse ? `${packageCacheUse[1]} packages cached, ${packageCacheUse[2]} downloaded` : 'package cache unused'}`, updated.seconds, undefined, undefined],
  ['qcow2 / bytes used by the filesystems', qcow2.bytes / usedBytes, TARGETS.qcow2OverUsed, undefined],
  ['boot test: unlocked (s)', boot.unlocked, TARGETS.unlockedSeconds, undefined],
  ['boot test: OpenSSH answering (s)', boot.booted, TARGETS.bootedSeconds, undefined],
  ['floor: seconds with a host tool running (cold)', floorSeconds, undefined, undefined],
];
const table = [
  ['metric', 'measured', 'target', 'measured/target', 'peer', 'measured/peer'],
  ...rows.map(([name, value, target, peer]) => [name, fmt(value, 2), fmt(target, 2), target ? fmt(value / target, 2) : '-', fmt(peer), peer ? fmt(value / peer, 2) : '-']),
];
const widths = table[0].map((_, i) => Math.max(...table.map((row) => String(row[i]).length)));
const lines = table.map((row) => row.map((cell, i) => String(cell).padEnd(widths[i])).join('  ').trimEnd());
lines.push('');
lines.push(`machine: ${cpus().length} cores, load average ${fmt(loadBefore, 2)} at the start, ${fmt(loadavg()[0], 2)} at the end (1-minute)`);
lines.push(`cold build ${fmt(cold.seconds)} s = ${fmt(cold.seconds / floorSeconds, 2)} x the seconds with a host tool running (${fmt(floorSeconds)} s; ${fmt(toolSecondsSummed)} s summed over tools that ran side by side); stages: ${Object.entries(cold.manifest.stageSeconds).map(([s, t]) => `${s} ${t}`).join(', ')}`);
lines.push(`warm rebuild stages: ${Object.entries(warm.manifest.stageSeconds).map(([s, t]) => `${s} ${t}`).join(', ')}`);
lines.push(`after an archive update: ${fmt(updated.seconds)} s = ${fmt(updated.seconds / cold.seconds, 2)} x cold; bootstrap ${updated.manifest.stageSeconds.bootstrap} s vs ${cold.manifest.stageSeconds.bootstrap} s cold`);
lines.push(`sizes: qcow2 ${(qcow2.bytes / 1e6).toFixed(0)} MB, raw ${raw ? (raw.bytes / 1e9).toFixed(2) : '-'} GB apparent / ${rawAllocated ? (rawAllocated / 1e6).toFixed(0) : '-'} MB allocated, filesystems use ${(usedBytes / 1e6).toFixed(0)} MB (root ${(used.root / 1e6).toFixed(0)}, boot ${(used.boot / 1e6).toFixed(0)}, esp ${(used.esp / 1e6).toFixed(1)})`);
lines.push(`boot test (${boot.accel}): dropbear ${fmt(boot.dropbear)} s, unlocked ${fmt(boot.unlocked)} s, OpenSSH ${fmt(boot.booted)} s, running ${fmt(boot.running)} s, ${boot.passed ? 'passed' : 'FAILED'}`);
lines.push(e2e.files
  ? `e2e suite, ${e2e.thisRun ? 'this run' : `last run, not this one (KEYLESSGO_BENCH_E2E=0), ${e2e.at}`} (${e2e.files.length} files, ${e2e.success ? 'passed' : 'not all passed'}): ${fmt(e2e.seconds)} s wall including its fixtures; ${e2e.files.sort((a, b) => b.seconds - a.seconds).map((f) => `${f.file.replace('test/e2e/', '')} ${fmt(f.seconds, 0)}`).join(', ')}`
  : `e2e suite: ${e2e.error ?? 'no report (KEYLESSGO_BENCH_E2E=0, and test-results/e2e.json is written by `make test-e2e`)'}`);
lines.push(...fleetLines(fleet));
for (const p of peerResults) lines.push(`peer ${p.peer}${p.variant ? ` (${p.variant})` : ''}: ${p.ok ? `${fmt(p.seconds)} s, ${p.bytes ? `${(p.bytes / 1e6).toFixed(0)} MB` : ''}` : `no image: ${p.error}`}`);
process.stdout.write(`${lines.join('\n')}\n`);

const report = { at: new Date().toISOString(), dir, cores: cpus().length, loadAverage: { start: loadBefore, end: loadavg()[0] }, targets: TARGETS, cold: { seconds: cold.seconds, stageSeconds: cold.manifest.stageSeconds, hostToolSeconds: cold.manifest.hostToolSeconds }, warm: { seconds: warm.seconds, stageSeconds: warm.manifest.stageSeconds, cacheHits: warmHits }, archiveUpdate: { seconds: updated.seconds, stageSeconds: updated.manifest.stageSeconds, packagesCached: Number(packageCacheUse?.[1] ?? 0), packagesDownloaded: Number(packageCacheUse?.[2] ?? 0) }, size: { qcow2Bytes: qcow2.bytes, rawAllocatedBytes: rawAllocated, usedBytes: used }, boot, floorSeconds, peers: peerResults, fleet, e2e };
await writeFile(join(dir, 'bench.json'), `${JSON.stringify(report, null, 2)}\n`);
process.stdout.write(keepDir ? `bench.json: ${join(dir, 'bench.json')}\n` : `work directory ${dir} removed (KEYLESSGO_BENCH_KEEP=1 keeps it, with bench.json and the logs)\n`);
