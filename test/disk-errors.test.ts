import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import fs from 'node:fs/promises'
import path from 'node:path'
import { test } from 'node:test'
import { StorageHealth } from '../src/storage/storage-health.js'
import { assertPresent, bootstrapEnv, daemon, findTool, rawPeer, skipUnlessCI, teardown, testnet, tmpDir } from './helpers.js'

const STRACE = findTool('strace')
const missing = process.getuid?.() !== 0
  ? 'root (chattr +i needs CAP_LINUX_IMMUTABLE)'
  : findTool('chattr') === null ? 'chattr (apt-get install -y e2fsprogs)' : STRACE === null ? 'strace (apt-get install -y strace)' : null

/** chattr +i (or -i) on `files`: an immutable dir takes no new entry, an immutable file no write, even from root. */
function immutable (on: boolean, files: string[]): void {
  execFileSync('chattr', [on ? '+i' : '-i', ...files], { stdio: 'pipe' })
}

interface Probe { at: number, dir: string, ok: boolean }

/** The daemon's writes of its probe file (storage-health.ts), as strace wrote them down: when, in which dir, whether they opened. */
async function probes (trace: string): Promise<Probe[]> {
  const found: Probe[] = []
  for (const line of (await fs.readFile(trace, 'utf8')).split('\n')) {
    const m = /^\d+\s+(\d+\.\d+) openat\(AT_FDCWD, "([^"]*)\/\.write-probe", [^)]*O_CREAT[^)]*\) = (-?\d+)/.exec(line)
    if (m !== null) found.push({ at: Number(m[1]) * 1000, dir: m[2], ok: Number(m[3]) >= 0 })
  }
  return found
}

/** Resolves once `trace` holds `n` rounds of probes (a round starts at a probe of the data dir itself). */
async function rounds (trace: string, storage: string, n: number, timeout: number): Promise<Probe[][]> {
  const deadline = Date.now() + timeout
  while (true) {
    const grouped: Probe[][] = []
    for (const p of await probes(trace)) {
      if (p.dir === storage) grouped.push([p])
      else grouped.at(-1)?.push(p)
    }
    if (grouped.length >= n) return grouped
    assert.ok(Date.now() < deadline, `${grouped.length} rounds of probes within ${timeout} ms, not ${n}: ${JSON.stringify(grouped)}`)
    await new Promise(resolve => setTimeout(resolve, 100))
  }
}

test('a disk that refuses writes: STORAGE_ERROR, not acked, later messages refused too, /health 503, reads served; the data dir is probed 1, 2, 4, 8 s apart, no reopen while db/ refuses writes, then the store is reopened and messages are acked at the next index', { skip: skipUnlessCI(missing) }, async t => {
  assertPresent(missing)
  const net = await testnet(t)
  const storage = await tmpDir(t)
  const trace = path.join(await tmpDir(t), 'strace.txt')
  const db = path.join(storage, 'db')
  const d = daemon(t, [], { STORAGE_DIR: storage, DHT_BOOTSTRAP: bootstrapEnv(net), DHT_HOST: '127.0.0.1', STATS_INTERVAL: '0', RATE_MESSAGES: '0' },
    [STRACE!, '-f', '--seccomp-bpf', '-ttt', '-e', 'trace=openat', '-o', trace])
  const ready = await d.line(l => typeof l.msg === 'string' && l.msg.startsWith('root peer ready'))
  teardown(t, () => { try { process.kill(ready.pid, 'SIGKILL') } catch {} })
  const url = (await d.line(l => l.url !== undefined)).url as string
  await d.ready()
  const peer = await rawPeer(t, net)
  for (let i = 0; i < 5; i++) peer.send({ type: 'message', roomName: 'ro', message: `m${i}`, id: `m${i}` })
  assert.equal((await peer.next(f => f.id === 'm4')).messageIndex, 4)

  // the disk refuses writes: to the open write-ahead log, new files in db/, new files in the data dir
  const wal = (await fs.readdir(db)).filter(f => f.endsWith('.log')).map(f => path.join(db, f))
  assert.equal(wal.length, 1, 'one write-ahead log')
  try {
    immutable(true, [...wal, db, storage])
  } catch (err: any) {
    assert.fail(`chattr +i is not possible on ${storage} here: ${String(err.stderr ?? err.message).trim()}`)
  }
  teardown(t, () => { for (const f of [...wal, db, storage]) try { immutable(false, [f]) } catch {} })
  peer.send({ type: 'message', roomName: 'ro', message: 'x', id: 'x' })
  const refused = await peer.next(f => f.id === 'x')
  assert.equal(refused.type, 'error')
  assert.equal(refused.code, 'STORAGE_ERROR')
  const failed = await d.line(l => l.code === 'STORAGE_ERROR' && typeof l.msg === 'string' && l.msg.startsWith(`writes to ${storage} fail`))
  assert.equal(failed.level, 50)
  peer.send({ type: 'message', roomName: 'ro', message: 'y', id: 'y' })
  assert.equal((await peer.next(f => f.id === 'y')).code, 'STORAGE_ERROR', 'a later message is refused too')
  const health = await fetch(new URL('/health', url))
  const body = await health.json() as any
  assert.equal(health.status, 503)
  assert.ok(body.reasons.some((r: string) => r.startsWith(`storage error in ${storage}`)), JSON.stringify(body))
  assert.deepEqual((await peer.syncAll('ro')).messages.map(m => m.id), ['m0', 'm1', 'm2', 'm3', 'm4'], 'reads are served')

  // two probes of the data dir, refused; then the data dir takes writes but db/ does not: a reopen of the store
  // would fail and leave nothing to read from, so the third round probes db/ too, and stops there
  await rounds(trace, storage, 2, 30_000)
  immutable(false, [storage])
  await rounds(trace, storage, 3, 30_000)
  assert.deepEqual((await peer.syncAll('ro')).messages.map(m => m.id), ['m0', 'm1', 'm2', 'm3', 'm4'], 'reads are still served')
  assert.equal((await fetch(new URL('/health', url))).status, 503)

  immutable(false, [...wal, db])
  const recovered = await d.line(l => l.msg === 'storage recovered: writes accepted again', 30_000)
  const seen = await rounds(trace, storage, 4, 1000)
  const starts = seen.map(r => r[0].at)
  const gaps = [starts[0] - failed.time, ...starts.slice(1).map((at, i) => at - starts[i])].map(Math.round)
  console.log(`read-only disk: probe rounds ${gaps.join(', ')} ms apart (from the failure); ${JSON.stringify(seen.map(r => r.map(p => `${path.relative(storage, p.dir) || '.'} ${p.ok ? 'ok' : 'refused'}`)))}; recovered ${recovered.time - failed.time} ms after the failure`)
  assert.deepEqual(seen.slice(0, 4).map(r => r.map(p => [path.relative(storage, p.dir), p.ok])), [
    [['', false]],
    [['', false]],
    [['', true], ['db', false]],
    [['', true], ['db', true]]
  ])
  // the daemon's clock and strace's: a timer never fires early, so each gap is at least its delay
  for (const [i, delay] of [1000, 2000, 4000, 8000].entries()) assert.ok(gaps[i] >= delay - 10, `probe round ${i + 1}: ${gaps[i]} ms after the one before, not ${delay}`)
  assert.ok(!d.lines.some(l => l.msg === 'reopening storage failed; retrying'), 'no reopen was tried that could not succeed')
  assert.ok(recovered.time >= starts[3])
  assert.equal((await fetch(new URL('/health', url))).status, 200)

  // the refused message, sent again, is acked at the next index: it was not stored
  for (const [id, index] of [['x', 5], ['y', 6]] as const) {
    peer.send({ type: 'message', roomName: 'ro', message: id, id })
    const ack = await peer.next(f => f.id === id)
    assert.equal(ack.type, 'message-ack', JSON.stringify(ack))
    assert.equal(ack.messageIndex, index)
    assert.equal(ack.duplicate, undefined)
  }
  assert.deepEqual((await peer.syncAll('ro')).messages.map(m => m.id), ['m0', 'm1', 'm2', 'm3', 'm4', 'x', 'y'])
  const metrics = await (await fetch(new URL('/metrics', url))).text()
  assert.match(metrics, /^root_peer_storage_failures_total 1$/m)
  assert.match(metrics, /^root_peer_errors_total\{code="STORAGE_ERROR"\} 2$/m)
  process.kill(ready.pid, 'SIGTERM')
  assert.deepEqual(await d.exited, { code: 0, signal: null })
})

test('storage recovery backs off: attempts 1, 2, 4, 8, 16 s apart, then every 30 s; no reopen while db/ takes no probe file; a failed reopen is retried on the same schedule; a new failure starts at 1 s again; close stops it (StorageHealth, mock timers)', async t => {
  const dir = await tmpDir(t)
  // db/ cannot take a file while it is a file itself: the store could not be reopened there
  await fs.writeFile(path.join(dir, 'db'), 'not a dir')
  let now = 0
  const reopens: number[] = []
  let failReopen = true
  const health = new StorageHealth({
    dir,
    writeBuffer: 0,
    reopen: async () => {
      reopens.push(now)
      if (failReopen) throw new Error('the store does not open yet')
    }
  })
  const failedReopens: unknown[] = []
  health.on('storage-recovery-failed', err => failedReopens.push(err))
  t.mock.timers.enable({ apis: ['setTimeout'] })
  const recover = t.mock.method(health as any, 'recover')
  const failure = await health.recordFailure(new Error('EIO'))
  assert.equal(failure.code, 'STORAGE_ERROR')
  assert.equal(health.failure, failure)
  // one ms at a time: each attempt is seen at the ms its timer fires, and awaited before time moves on
  const attempts: number[] = []
  while (attempts.length < 8) {
    t.mock.timers.tick(1)
    now++
    if (recover.mock.callCount() > attempts.length) {
      attempts.push(now)
      await recover.mock.calls[attempts.length - 1].result
      // the next attempt is scheduled once the attempt's promise has settled
      await new Promise(resolve => setImmediate(resolve))
      if (attempts.length === 3) {
        await fs.rm(path.join(dir, 'db'))
        await fs.mkdir(path.join(dir, 'db'))
      }
    }
  }
  assert.deepEqual(attempts.map((at, i) => at - (attempts[i - 1] ?? 0)), [1000, 2000, 4000, 8000, 16_000, 30_000, 30_000, 30_000])
  assert.deepEqual(reopens, attempts.slice(3), 'no reopen while db/ took no probe; one at each attempt after')
  assert.equal(failedReopens.length, 5)
  assert.equal(health.failure, failure, 'still failed')

  failReopen = false
  const recovered = new Promise(resolve => health.once('storage-recovered', resolve))
  t.mock.timers.tick(30_000)
  await recovered
  assert.equal(health.failure, null)
  assert.equal(recover.mock.callCount(), 9)

  // a new failure starts again at 1 s; close stops the attempts
  failReopen = true
  await health.recordFailure(new Error('EIO'))
  t.mock.timers.tick(999)
  assert.equal(recover.mock.callCount(), 9)
  t.mock.timers.tick(1)
  assert.equal(recover.mock.callCount(), 10)
  await recover.mock.calls[9].result
  await new Promise(resolve => setImmediate(resolve))
  health.close()
  t.mock.timers.tick(60_000)
  assert.equal(recover.mock.callCount(), 10)
  assert.equal(failedReopens.length, 6)
})
