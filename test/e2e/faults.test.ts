/**
 * Faults leave nothing behind: a failure injected at the start, in the middle (at the
 * stage's second host command) and at the end of every stage, SIGTERM and SIGINT during long
 * stages, a second Ctrl-C during cleanup, and two builds at once. After each: no loop device,
 * mount, temp dir, cache lock, partial entry or incoming .deb directory of ours, no output
 * (partial or final), and an exit code and message that name what happened. Builds use the
 * run's warm stage cache.
 * After a SIGKILL of a build and its children (no cleanup possible) the next build reaps what
 * the dead one left.
 */
import { execa, type ResultPromise } from 'execa';
import { mkdir, mkdtemp, readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { beforeAll, describe, expect, inject, it } from 'vitest';
import { parse, stringify } from 'yaml';
import { cacheDirOf, CLI } from './fixture.js';

const image = inject('image');
const STAGES = ['bootstrap', 'configure', 'initramfs', 'partition', 'encrypt', 'nbde', 'bootloader', 'export'];
const POINTS = ['start', 'middle', 'end'];
let dir: string;
let buildTmp: string;
const counted = { cases: 0, leftovers: 0 };

interface HostState {
  loops: string[];
  mounts: string[];
  temps: string[];
  cache: string[];
}

/**
 * Everything of ours a build could leave on the host. The builds get a private TMPDIR (their
 * work trees, secret stores and chroot mounts live there) and write below `dir`, so other
 * builds on the machine do not blur the picture.
 */
async function hostState(): Promise<HostState> {
  const loops = (await execa('losetup', ['--list', '--noheadings', '--output', 'NAME,BACK-FILE'])).stdout.split('\n').filter((l) => l.includes(dir));
  const mounts = (await readFile('/proc/self/mounts', 'utf8')).split('\n').filter((l) => l.includes(buildTmp));
  const temps = await readdir(buildTmp);
  // Locks and partial entries sit beside the entries; the .deb files a bootstrap is adding, in packages/<suite>/.
  const cache = (await execa('find', [cacheDirOf(image.dir), '-maxdepth', '3', '(', '-name', '*.lock', '-o', '-name', '*.partial-*', '-o', '-name', '.incoming-*', ')'])).stdout.split('\n').filter(Boolean);
  return { loops, mounts, temps, cache };
}

const added = (before: HostState, after: HostState) =>
  Object.fromEntries(Object.entries(after).map(([k, list]) => [k, (list as string[]).filter((x) => !before[k as keyof HostState].includes(x))]));

interface Run {
  exitCode: number | undefined;
  output: string;
  outDir: string;
}

async function recipeFile(name: string, patch: Record<string, unknown> = {}): Promise<string> {
  const recipe = { ...(parse(await readFile(image.recipeFile, 'utf8')) as Record<string, unknown>), name, ...patch };
  const path = join(dir, `${name}.yaml`);
  await writeFile(path, stringify(recipe));
  return path;
}

function startBuild(recipe: string, outDir: string, env: Record<string, string> = {}, extraArgs: string[] = []): ResultPromise<{ all: true; reject: false }> {
  const args = [CLI, 'build', recipe, '--out', outDir, '--passphrase-file', image.passphraseFile, '--authorized-keys', image.publicKey, '--cache-dir', cacheDirOf(image.dir), '--log-format', 'json', ...extraArgs];
  // No SIGKILL after a grace period: cleanup after a signal may take longer than execa's default 5 s.
  return execa('node', args, { all: true, reject: false, env: { ...env, TMPDIR: buildTmp }, forceKillAfterDelay: false });
}

/** Runs `act` (one or more builds) and checks that nothing of ours is left afterwards. */
async function leavesNothing(act: (outDir: string) => Promise<Run>): Promise<Run> {
  const before = await hostState();
  const outDir = await mkdtemp(join(dir, 'out-'));
  const run = await act(outDir);
  counted.cases++;
  const left = { ...added(before, await hostState()), outputs: await readdir(outDir) };
  if (Object.values(left).some((list) => list.length > 0)) counted.leftovers++;
  expect(left, run.output.slice(-3000)).toEqual({ loops: [], mounts: [], temps: [], cache: [], outputs: [] });
  expect(run.output).not.toMatch(/\n\s+at .+:\d+:\d+\)?\n/); // no stack trace
  return run;
}

/** Waits until the JSON log shows `stage` started, lets it work for `delayMs`, then signals. */
async function signalDuring(child: ResultPromise<{ all: true; reject: false }>, stage: string, signal: NodeJS.Signals, delayMs: number): Promise<void> {
  await new Promise<void>((resolve) => {
    child.all!.on('data', (chunk: Buffer) => {
      if (chunk.toString().includes(`"event":"stage-start","stage":"${stage}"`)) setTimeout(resolve, delayMs);
    });
  });
  child.kill(signal);
}

beforeAll(async () => {
  dir = await mkdtemp(join(image.dir, 'faults-'));
  buildTmp = join(dir, 'tmp');
  await mkdir(buildTmp);
});

describe('an injected failure leaves nothing behind and names the stage (exit 1)', () => {
  const cases = STAGES.flatMap((stage) => POINTS.map((point) => [stage, point] as const));
  it.each(cases)('%s:%s', async (stage, point) => {
    const recipe = await recipeFile('faults');
    const run = await leavesNothing(async (outDir) => {
      const done = await startBuild(recipe, outDir, { KEYLESSGO_FAIL_AT: `${stage}:${point}` });
      return { exitCode: done.exitCode, output: String(done.all), outDir };
    });
    expect(run.exitCode, run.output.slice(-2000)).toBe(1);
    expect(run.output).toContain(`stage ${stage} failed: injected failure`);
  });
});

describe('signals during long stages: cleanup, then exit 130', () => {
  it.each([
    ['bootstrap', 'SIGTERM'],
    ['encrypt', 'SIGINT'],
    ['export', 'SIGTERM'],
  ] as const)('%s interrupted by %s', async (stage, signal) => {
    const recipe = await recipeFile('faults');
    const run = await leavesNothing(async (outDir) => {
      const child = startBuild(recipe, outDir);
      await signalDuring(child, stage, signal, 700);
      const done = await child;
      return { exitCode: done.exitCode, output: String(done.all), outDir };
    });
    expect(run.exitCode, run.output.slice(-2000)).toBe(130);
    expect(run.output).toContain(`interrupted by ${signal}`);
  });

  it('a second Ctrl-C during cleanup does not cut the cleanup short', async () => {
    const recipe = await recipeFile('faults');
    const run = await leavesNothing(async (outDir) => {
      const child = startBuild(recipe, outDir);
      await signalDuring(child, 'encrypt', 'SIGINT', 700);
      await new Promise<void>((resolve) => {
        child.all!.on('data', (chunk: Buffer) => {
          if (chunk.toString().includes('stopping and cleaning up')) resolve();
        });
      });
      child.kill('SIGINT');
      const done = await child;
      return { exitCode: done.exitCode, output: String(done.all), outDir };
    });
    expect(run.exitCode).toBe(130);
    expect(run.output).toContain('SIGINT received again: still cleaning up');
  });
});

describe('builds in parallel', () => {
  it('two different recipes build at once into different directories, sharing the locked cache', async () => {
    const recipes = [await recipeFile('parallel-a', { hostname: 'alpha' }), await recipeFile('parallel-b', { hostname: 'beta', disk: { size: '3GiB' } })];
    const before = await hostState();
    const outDirs = [await mkdtemp(join(dir, 'par-a-')), await mkdtemp(join(dir, 'par-b-'))];
    const runs = await Promise.all(recipes.map((recipe, i) => startBuild(recipe, outDirs[i]!)));
    for (const run of runs) expect(run.exitCode, String(run.all).slice(-2000)).toBe(0);
    const manifests = await Promise.all(outDirs.map(async (out) => JSON.parse(await readFile(join(out, 'manifest.json'), 'utf8')) as { luks: { uuid: string }; recipe: { name: string } }));
    expect(manifests.map((m) => m.recipe.name)).toEqual(['parallel-a', 'parallel-b']);
    expect(manifests[0]!.luks.uuid).not.toBe(manifests[1]!.luks.uuid);
    expect(added(before, await hostState())).toEqual({ loops: [], mounts: [], temps: [], cache: [] });
  });
});

/** Resolves once `condition` holds, polling; rejects after `seconds`. */
async function pollFor(condition: () => Promise<boolean>, seconds: number, what: string): Promise<void> {
  for (const deadline = Date.now() + seconds * 1000; !(await condition()); ) {
    if (Date.now() > deadline) throw new Error(`timed out after ${seconds} s waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
}

const stageStarted = (child: ResultPromise<{ all: true; reject: false }>, stage: string) =>
  new Promise<void>((resolve) => child.all!.on('data', (chunk: Buffer) => chunk.toString().includes(`"event":"stage-start","stage":"${stage}"`) && resolve()));

/** The processes whose parent is in `pids`, not in it themselves (from /proc). */
async function childrenOf(pids: Set<number>): Promise<number[]> {
  const found: number[] = [];
  for (const name of (await readdir('/proc')).filter((n) => /^\d+$/.test(n))) {
    const stat = await readFile(`/proc/${name}/stat`, 'utf8').catch(() => '');
    // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
    const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
    if (pids.has(ppid) && !pids.has(Number(name))) found.push(Number(name));
  }
  return found;
}

/**
 * SIGKILLs a build and everything it started, as the OOM killer or a lost shell session may:
 * stopped first, top down, so that none starts another or cleans up. (An orphaned mmdebstrap
 * would otherwise run on and, on its next write to the dead build's pipe, unmount its own
 * mounts, or not, depending on where it was.)
 */
async function killTree(pid: number): Promise<void> {
  const tree = new Set<number>();
  for (let next = [pid]; next.length > 0; next = await childrenOf(tree)) {
    for (const member of next) {
      tree.add(member);
      try {
        process.kill(member, 'SIGSTOP');
      } catch {
        // gone already
      }
    }
  }
  for (const member of tree) {
    try {
      process.kill(member, 'SIGKILL');
    } catch {
      // gone already
    }
  }
}

describe('SIGKILL (no cleanup at all): the next build reaps what the dead one left', () => {
  it('during mmdebstrap (its mounts), encryption (the loop device) and export; each next build reaps, the last succeeds', async () => {
    const recipe = await recipeFile('faults');
    const before = await hostState();
    const leftoverCounts: Array<Record<string, number>> = [];
    const outputs: string[] = [];
    const started = performance.now();
    /** Starts a build, SIGKILLs it and its children once `ready` resolves, and records what it left. */
    const killWhen = async (ready: (child: ResultPromise<{ all: true; reject: false }>) => Promise<void>, extraArgs: string[] = []) => {
      const child = startBuild(recipe, await mkdtemp(join(dir, 'killed-')), {}, extraArgs);
      await ready(child);
      await killTree(child.pid!);
      const done = await child;
      outputs.push(String(done.all));
      expect(done.signal).toBe('SIGKILL');
      const left = added(before, await hostState());
      leftoverCounts.push(Object.fromEntries(Object.entries(left).map(([k, list]) => [k, list.length])));
      return left;
    };
    // Without the cache mmdebstrap really runs; killed once it has mounted /proc and friends in the tree.
    const duringBootstrap = await killWhen(async (child) => {
      await stageStarted(child, 'bootstrap');
      await pollFor(async () => (await hostState()).mounts.length > before.mounts.length, 300, "mmdebstrap's mounts");
    }, ['--no-cache']);
    expect(duringBootstrap.mounts.length, 'mmdebstrap mounts left by the killed build').toBeGreaterThan(0);
    expect(duringBootstrap.temps.length, 'work tree and secret store left by the killed build').toBeGreaterThanOrEqual(2);

    const duringEncrypt = await killWhen(async (child) => {
      await stageStarted(child, 'encrypt');
      await new Promise((resolve) => setTimeout(resolve, 700));
    });
    expect(outputs[1]).toMatch(/reaped: unmounted .*keylessgo-faults-/);
    expect(outputs[1]).toMatch(/reaped: removed secret store /);
    expect(duringEncrypt.loops.length, 'loop device left by the build killed while encrypting').toBeGreaterThan(0);
    // (The build killed while encrypting leaves its own mounts: the view of the tree mkfs reads.)
    expect(duringEncrypt.mounts.filter((m) => duringBootstrap.mounts.includes(m)), 'the bootstrap leftovers were reaped').toEqual([]);

    const duringExport = await killWhen(async (child) => {
      await stageStarted(child, 'export');
      await new Promise((resolve) => setTimeout(resolve, 300));
    });
    expect(outputs[2]).toMatch(/reaped: detached \/dev\/loop\d+ \(.*\.raw\.partial\)/);
    expect(duringExport.temps.length).toBeGreaterThanOrEqual(2);

    const survivor = await mkdtemp(join(dir, 'after-kills-'));
    const next = await startBuild(recipe, survivor);
    expect(next.exitCode, String(next.all).slice(-2000)).toBe(0);
    expect(String(next.all)).toMatch(/reaped: removed work tree .*keylessgo-faults-/);
    expect(added(before, await hostState())).toEqual({ loops: [], mounts: [], temps: [], cache: [] });
    const killedOutDirs = (await readdir(dir)).filter((name) => name.startsWith('killed-'));
    for (const out of killedOutDirs) expect(await readdir(join(dir, out)), `partial outputs in ${out}`).toEqual([]);
    process.stderr.write(`SIGKILL recovery: leftovers after each kill ${JSON.stringify(leftoverCounts)}, ${((performance.now() - started) / 1000).toFixed(0)} s in all\n`);
  });
});

describe('fault matrix summary', () => {
  it(`ran ${STAGES.length * POINTS.length + 4} fault cases`, () => {
    process.stderr.write(`fault cases run: ${counted.cases}, with leftovers: ${counted.leftovers}\n`);
    expect(counted).toEqual({ cases: STAGES.length * POINTS.length + 4, leftovers: 0 });
  });
});
