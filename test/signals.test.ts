import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { once } from 'node:events'
import { constants } from 'node:fs'
import fs from 'node:fs/promises'
import path from 'node:path'
import { test } from 'node:test'
import { assertPresent, daemon, findTool, skipUnlessCI, teardown, tmpDir, type Daemon } from './helpers.js'

const OFFLINE = { DHT_BOOTSTRAP: '127.0.0.1:1', DHT_HOST: '127.0.0.1', STATS_INTERVAL: '0' }
const noMkfifo = findTool('mkfifo') === null ? 'mkfifo (coreutils)' : null

/**
 * A daemon whose drain cannot finish: once it is ready, the state file's temp path is a FIFO that no one opens, so
 * the state save of the shutdown blocks in open(2), as on a disk that hangs. `release` opens the FIFO's other end
 * (without blocking: the test process must not get stuck on it either), which lets the stuck call return.
 */
async function stuckDrain (t: any): Promise<{ d: Daemon, release: () => Promise<void> }> {
  const storage = await tmpDir(t)
  const d = daemon(t, [], { ...OFFLINE, STORAGE_DIR: storage })
  await d.line(l => typeof l.msg === 'string' && l.msg.startsWith('root peer ready'))
  const fifo = path.join(storage, 'root-peer-state.json.tmp')
  execFileSync('mkfifo', [fifo])
  const release = async (): Promise<void> => {
    const reader = await fs.open(fifo, constants.O_RDONLY | constants.O_NONBLOCK)
    teardown(t, () => reader.close())
  }
  return { d, release }
}

/** Resolves once every line the daemon printed has been read: only then does the absence of a line mean anything. */
async function allLines (d: Daemon): Promise<void> {
  if (!d.child.stdout!.closed) await once(d.child.stdout!, 'close')
}

test('a drain that cannot finish (its state save stuck on a FIFO no one reads): 10 s after SIGTERM "shutdown took too long", no "stopped", exit 1 once the stuck call returns', { skip: skipUnlessCI(noMkfifo) }, async t => {
  assertPresent(noMkfifo)
  const { d, release } = await stuckDrain(t)
  d.child.kill('SIGTERM')
  const signalled = await d.line(l => typeof l.msg === 'string' && l.msg.startsWith('shutting down'))
  const late = await d.line(l => l.msg === 'shutdown took too long: exiting', 30_000)
  const after = late.time - signalled.time
  console.log(`stuck drain: "shutdown took too long" ${after} ms after "shutting down"`)
  // the daemon's own clock: its 10 s timer is set right after the "shutting down" line and never fires early
  assert.ok(after >= 9_990, `${after} ms`)
  assert.equal(late.timeoutMs, 10_000)
  assert.equal(late.level, 50)
  // Node's exit waits for its I/O threads, and one is stuck in open(2) until the FIFO has a reader
  await release()
  assert.deepEqual(await d.exited, { code: 1, signal: null })
  await allLines(d)
  assert.ok(!d.lines.some(l => l.msg === 'stopped'))
})

test('a second signal 0.5 s or more after the first ends a drain that cannot finish: "second signal: exiting at once" well before the 10 s timeout, exit 1, no "stopped"', { skip: skipUnlessCI(noMkfifo) }, async t => {
  assertPresent(noMkfifo)
  const { d, release } = await stuckDrain(t)
  d.child.kill('SIGTERM')
  const signalled = await d.line(l => typeof l.msg === 'string' && l.msg.startsWith('shutting down'))
  // the daemon noted the first signal before it printed that line: 600 ms from now is more than 0.5 s after it
  // (a repeat sooner than that is the same Ctrl-C delivered twice, see test/daemon.test.ts)
  await new Promise(resolve => setTimeout(resolve, 600))
  d.child.kill('SIGINT')
  const second = await d.line(l => l.msg === 'second signal: exiting at once')
  const after = second.time - signalled.time
  console.log(`stuck drain: second signal (SIGINT) handled ${after} ms after "shutting down"`)
  assert.equal(second.signal, 'SIGINT')
  assert.ok(after >= 500 && after < 10_000, `${after} ms`)
  await release()
  assert.deepEqual(await d.exited, { code: 1, signal: null })
  await allLines(d)
  assert.ok(!d.lines.some(l => l.msg === 'shutdown took too long: exiting'), 'ended by the second signal, not by the timeout')
  assert.ok(!d.lines.some(l => l.msg === 'stopped'))
})
