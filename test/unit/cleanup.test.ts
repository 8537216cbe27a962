import { describe, expect, it } from 'vitest';
import { CleanupStack } from '../../src/base/cleanup.js';
import { captureLogger } from './helpers.js';

/** A stack whose undos record their names in `ran`; names listed in `failing` throw. */
function recordingStack(...failing: string[]) {
  const { log, lines } = captureLogger('verbose');
  const stack = new CleanupStack(log);
  const ran: string[] = [];
  const add = (name: string) =>
    stack.add(name, async () => {
      ran.push(name);
      if (failing.includes(name)) throw new Error(`${name} is busy`);
    });
  return { stack, ran, add, lines };
}

describe('CleanupStack', () => {
  it('unwinds newest first and leaves nothing pending', async () => {
    const { stack, ran, add } = recordingStack();
    for (const name of ['mount', 'loop', 'tmpdir']) add(name);
    expect(stack.pending).toEqual(['mount', 'loop', 'tmpdir']);
    expect(await stack.unwind()).toEqual([]);
    expect(ran).toEqual(['tmpdir', 'loop', 'mount']);
    expect(stack.pending).toEqual([]);
  });

  it('release runs an undo once, now, and not again on unwind', async () => {
    const { stack, ran, add } = recordingStack();
    add('first');
    const loop = add('loop');
    add('last');
    await loop.release();
    await loop.release();
    expect(ran).toEqual(['loop']);
    await stack.unwind();
    expect(ran).toEqual(['loop', 'last', 'first']);
  });

  it('dismiss forgets an undo without running it', async () => {
    const { stack, ran, add } = recordingStack();
    add('keep');
    add('renamed partial').dismiss();
    expect(stack.pending).toEqual(['keep']);
    await stack.unwind();
    expect(ran).toEqual(['keep']);
  });

  it('release after unwind does nothing', async () => {
    const { stack, ran, add } = recordingStack();
    const handle = add('once');
    await stack.unwind();
    await handle.release();
    expect(ran).toEqual(['once']);
  });

  it('keeps going past a failing undo, reports it and returns what failed', async () => {
    const { stack, ran, add, lines } = recordingStack('umount', 'losetup');
    for (const name of ['rm', 'losetup', 'umount', 'wipe']) add(name);
    expect(await stack.unwind()).toEqual(['umount', 'losetup']);
    expect(ran).toEqual(['wipe', 'umount', 'losetup', 'rm']);
    expect(lines).toContain('error: cleanup of umount failed: umount is busy');
    expect(lines).toContain('error: cleanup of losetup failed: losetup is busy');
  });
});
