/**
 * `make bench`'s fleet part (scripts/bench.mjs runs it with vite-node): for --parallel 20,
 * 50 and 100, a fresh fleet of 300 stand-in machines (load-fleet.ts, every fault spread over
 * it), then
 *   - `unlock` of the whole fleet as after a power cut: the silent hosts (15) each hold a
 *     slot for 62 s (5 banner reads of 10 s, 3 s apart), which bounds the wall time;
 *   - `status` of the whole fleet once the silent hosts answer again: throughput.
 * Prints one JSON line per run on stdout: command, parallel, hosts, wall seconds, exit code,
 * results by kind, the CLI's peak RSS and most open file descriptors. Needs root and dist/.
 */
import { LoadFleet, runKeylessgo, type CliRun } from './load-fleet.js';

const HOSTS = Number(process.env.KEYLESSGO_BENCH_FLEET_HOSTS ?? 300);
const LEVELS = [20, 50, 100];

function line(command: string, parallel: number, run: CliRun): string {
  const results: Record<string, number> = {};
  for (const record of run.records) results[record.result] = (results[record.result] ?? 0) + 1;
  return JSON.stringify({ command, parallel, hosts: run.records.length, seconds: Math.round(run.seconds * 10) / 10, exitCode: run.exitCode, results, peakRssBytes: run.peakRssBytes, peakFds: run.peakFds });
}

for (const parallel of LEVELS) {
  process.stderr.write(`fleet load: ${HOSTS} machines, --parallel ${parallel} ...\n`);
  const fleet = await LoadFleet.start(HOSTS);
  try {
    const common = ['--inventory', fleet.files.inventory, '--key', fleet.files.key, '--known-hosts', fleet.files.knownHosts, '--parallel', String(parallel), '--json'];
    await fleet.powerOnLate();
    process.stdout.write(`${line('unlock', parallel, await runKeylessgo(['unlock', ...common, '--passphrase-file', fleet.files.passphrase], { cwd: fleet.dir }))}\n`);
    for (const host of fleet.hosts.filter((h) => h.fault === 'silent')) await fleet.resume(host);
    process.stdout.write(`${line('status', parallel, await runKeylessgo(['status', ...common, '--passphrase-file', fleet.files.passphrase], { cwd: fleet.dir }))}\n`);
  } finally {
    await fleet.stop();
  }
}
