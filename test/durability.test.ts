import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import crypto from 'node:crypto'
import { EventEmitter, once } from 'node:events'
import fs from 'node:fs/promises'
import path from 'node:path'
import { test } from 'node:test'
import HyperDHT from 'hyperdht'
import type { Testnet } from 'hyperdht/testnet.js'
import Hyperswarm, { type NoiseStream } from 'hyperswarm'
import { RawPeer, assertPresent, bootstrapEnv, daemon, rawPeer, skipUnlessCI, teardown, testnet, tmpDir, type Daemon } from './helpers.js'

const NO_RATES = { RATE_MESSAGES: '0', RATE_BYTES: '0', RATE_SYNCS: '0', RATE_NEW_ROOMS: '0', RATE_REGISTERS: '0' }

function env (net: Testnet, storage: string, extra: Record<string, string> = {}): Record<string, string> {
  return { STORAGE_DIR: storage, DHT_BOOTSTRAP: bootstrapEnv(net), DHT_HOST: '127.0.0.1', STATS_INTERVAL: '0', ...NO_RATES, ...extra }
}

/**
 * A client with an outbox, as a chat app keeps one: it pipelines messages, resends every unacked one on
 * each new connection, and records each ack. An ack that names another index than an earlier ack of the
 * same id breaks exactly-once, and is recorded as a violation. Emits `ack` and `drained` (outbox empty).
 */
class Writer extends EventEmitter {
  readonly acked = new Map<string, { room: string, index: number }>()
  readonly outbox = new Map<string, { room: string, message: string }>()
  readonly violations: string[] = []
  readonly refusals = new Map<string, number>()
  /** the ids of refused messages, with the code of their last refusal */
  readonly refusedIds = new Map<string, string>()
  private next = 0
  private conn: NoiseStream | null = null
  private swarm: Hyperswarm | null = null
  private pumping = false
  private producing = false

  constructor (readonly name: string, readonly rooms: string[], readonly window = 40) {
    super()
  }

  /** Resolves once `done()` holds, checked after every ack. */
  async until (done: () => boolean): Promise<void> {
    while (!done()) await once(this, 'ack')
  }

  /** Dials the root peer by key and resends the outbox; `produce()` then keeps new messages flowing. */
  async connect (net: Testnet, key: string): Promise<void> {
    const conn = await dialKey(net, key, swarm => { this.swarm = swarm })
    this.conn = conn
    conn.on('error', () => {})
    conn.on('close', () => { if (this.conn === conn) this.conn = null })
    conn.on('data', (data: Buffer) => this.onFrame(JSON.parse(data.toString('utf8'))))
    // everything not acked yet goes again, with the same id
    for (const [id, m] of this.outbox) this.write(id, m)
  }

  async disconnect (): Promise<void> {
    const swarm = this.swarm
    this.swarm = null
    this.conn = null
    this.producing = false
    if (swarm !== null) await swarm.destroy()
  }

  get unacked (): number {
    return this.outbox.size
  }

  /**
   * New messages from now on, `window` in flight. Started once every writer is connected: while one redials, the
   * others must not push its unacked ids out of the rooms' dedup window (10,000 ids, docs/configuration.md).
   */
  produce (): void {
    this.producing = true
    this.pump()
  }

  private pump (): void {
    if (this.pumping) return
    this.pumping = true
    while (this.conn !== null && this.outbox.size < this.window) {
      const id = `${this.name}-${this.next++}`
      const m = { room: this.rooms[this.next % this.rooms.length], message: `${id} `.padEnd(200, '.') }
      this.outbox.set(id, m)
      this.write(id, m)
    }
    this.pumping = false
  }

  private write (id: string, m: { room: string, message: string }): void {
    this.conn?.write(JSON.stringify({ type: 'message', roomName: m.room, message: m.message, id }))
  }

  private onFrame (frame: any): void {
    if (frame.type === 'message-ack') {
      const seen = this.acked.get(frame.id)
      if (seen !== undefined && (seen.index !== frame.messageIndex || seen.room !== frame.roomName)) {
        this.violations.push(`${String(frame.id)} acked at ${seen.room}/${seen.index}, then at ${String(frame.roomName)}/${String(frame.messageIndex)}`)
      }
      this.acked.set(frame.id, { room: frame.roomName, index: frame.messageIndex })
      this.outbox.delete(frame.id)
      if (this.producing) this.pump()
      this.emit('ack')
    } else if (frame.type === 'error') {
      this.refusals.set(frame.code, (this.refusals.get(frame.code) ?? 0) + 1)
      if (typeof frame.id === 'string') this.refusedIds.set(frame.id, frame.code)
    }
  }
}

/**
 * A connection to the root peer `key` that has brought its announcement: a dial that opens on this side and never
 * reaches the daemon (seen right after a restart, see `dial` in helpers.ts) is dropped after 5 s and dialed again.
 */
async function dialKey (net: Testnet, key: string, onSwarm: (swarm: Hyperswarm) => void): Promise<NoiseStream> {
  const deadline = Date.now() + 30_000
  while (true) {
    const swarm = new Hyperswarm({ dht: new HyperDHT({ bootstrap: net.bootstrap, host: '127.0.0.1' }) })
    onSwarm(swarm)
    const connected = once(swarm, 'connection') as Promise<[NoiseStream]>
    swarm.joinPeer(Buffer.from(key, 'hex'))
    const [conn] = await connected
    conn.on('error', () => {})
    // nothing is written before the announcement comes, so no other frame can come before it
    const announced = await new Promise<boolean>(resolve => {
      const timer = setTimeout(() => resolve(false), 5000)
      conn.once('data', () => { clearTimeout(timer); resolve(true) })
    })
    if (announced) return conn
    await swarm.destroy()
    assert.ok(Date.now() < deadline, `no announcement from ${key.slice(0, 8)} within 30 s`)
    console.log(`no announcement from ${key.slice(0, 8)} within 5 s: dialing again`)
  }
}

/** Every message of `room`, read page by page over a fresh connection. */
async function readRoom (t: any, net: Testnet, room: string): Promise<any[]> {
  const reader = await rawPeer(t, net)
  const { messages } = await reader.syncAll(room)
  await reader.close()
  return messages
}

/** Checks the stored rooms against the acks: each acked id once, at its index; indices contiguous. */
async function checkAcked (t: any, net: Testnet, writers: Writer[], rooms: string[]): Promise<number> {
  const stored = new Map<string, any[]>()
  for (const room of rooms) {
    const messages = await readRoom(t, net, room)
    assert.deepEqual(messages.map(m => m.messageIndex), messages.map((_, i) => i), `${room}: indices are contiguous`)
    const ids = messages.map(m => m.id)
    assert.equal(new Set(ids).size, ids.length, `${room}: no id is stored twice`)
    stored.set(room, messages)
  }
  let acked = 0
  for (const w of writers) {
    assert.deepEqual(w.violations, [])
    for (const [id, { room, index }] of w.acked) {
      const m = stored.get(room)?.[index]
      assert.equal(m?.id, id, `${id}, acked at ${room}/${index}, is stored there`)
      acked++
    }
  }
  return acked
}

async function startDaemon (t: any, e: Record<string, string>): Promise<{ d: Daemon, key: string }> {
  const d = daemon(t, [], e)
  const key = await d.ready()
  return { d, key }
}

/** A small seeded PRNG (mulberry32): the same seed draws the same numbers, in [0, 1). */
function prng (seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

/** Resolves once `done()` holds, checked after every ack of any of the writers. */
async function untilAll (writers: Writer[], done: () => boolean): Promise<void> {
  if (done()) return
  await new Promise<void>(resolve => {
    const check = (): void => {
      if (!done()) return
      for (const w of writers) w.off('ack', check)
      resolve()
    }
    for (const w of writers) w.on('ack', check)
  })
}

/** Each room's newest acked message (by index) among the writers' acks. */
function newestAcked (writers: Writer[]): Map<string, { id: string, index: number }> {
  const newest = new Map<string, { id: string, index: number }>()
  for (const w of writers) {
    for (const [id, { room, index }] of w.acked) if ((newest.get(room)?.index ?? -1) < index) newest.set(room, { id, index })
  }
  return newest
}

test('crash loop: kill -9 at seeded random moments while acks flow, 20 times; after each restart the newest acked message of each room is at its index, and in the end every acked message is stored once, at its index', async t => {
  // CRASH_SEED=<seed> draws the same moments again
  const seed = process.env.CRASH_SEED !== undefined ? Number(process.env.CRASH_SEED) : crypto.randomInt(2 ** 31)
  assert.ok(Number.isSafeInteger(seed), `CRASH_SEED=${String(process.env.CRASH_SEED)} is no integer`)
  console.log(`crash loop: seed ${seed} (CRASH_SEED=${seed} replays these kill moments)`)
  const random = prng(seed)
  const net = await testnet(t)
  const storage = await tmpDir(t)
  const rooms = ['crash-a', 'crash-b', 'crash-shared']
  const writers = [new Writer('w0', ['crash-a', 'crash-shared']), new Writer('w1', ['crash-b', 'crash-shared']), new Writer('w2', ['crash-shared'])]
  teardown(t, () => Promise.all(writers.map(w => w.disconnect())))
  const total = (): number => writers.reduce((n, w) => n + w.acked.size, 0)
  const KILLS = 20
  const MIN_ACKS_A_LIFE = 200
  const moments: string[] = []
  let waited = 0
  for (let cycle = 0; cycle < KILLS; cycle++) {
    // the moment of this kill: once this life has acked `acks` more messages, and `delay` ms later, as acks keep flowing
    const acks = MIN_ACKS_A_LIFE + Math.floor(random() * 800)
    const delay = Math.floor(random() * 100)
    moments.push(`${acks}+${delay}ms`)
    waited += acks
    // every other life fsyncs before acking (SYNC_WRITES): both modes keep the promise through a process crash
    const { d, key } = await startDaemon(t, env(net, storage, { SYNC_WRITES: cycle % 2 === 0 ? 'false' : 'true' }))
    if (cycle > 0) await checkNewest(t, net, key, writers, `seed ${seed}, after kill ${cycle}`)
    const before = total()
    await Promise.all(writers.map(w => w.connect(net, key)))
    for (const w of writers) w.produce()
    await untilAll(writers, () => total() - before >= acks)
    await new Promise(resolve => setTimeout(resolve, delay))
    d.child.kill('SIGKILL')
    const { signal } = await d.exited
    assert.equal(signal, 'SIGKILL')
    await Promise.all(writers.map(w => w.disconnect()))
    for (const w of writers) assert.deepEqual(w.violations, [], `seed ${seed}, life ${cycle}: an id acked at two indices`)
  }

  // one last life: the outboxes drain (resent ids are acked with their first index), then everything is checked
  const { d, key } = await startDaemon(t, env(net, storage))
  await checkNewest(t, net, key, writers, `seed ${seed}, after kill ${KILLS}`)
  await Promise.all(writers.map(async w => {
    const drained = w.until(() => w.unacked === 0)
    await w.connect(net, key)
    await drained
  }))
  const acked = await checkAcked(t, net, writers, rooms)
  console.log(`crash loop: seed ${seed}, ${KILLS} kills (SIGKILL) at ${moments.join(', ')} (acks of the life + delay); ${acked} acked messages, each stored once at its acked index`)
  // each life acked its drawn number of messages before its kill (at least 200 each, about 12,000 in all)
  assert.ok(acked >= waited && waited >= KILLS * MIN_ACKS_A_LIFE, `seed ${seed}: ${acked} messages acked, ${waited} waited for`)
  assert.equal((await d.stop('SIGTERM')).code, 0)
})

/** After a restart: the newest acked message of each room is read back at its acked index, over a fresh connection. */
async function checkNewest (t: any, net: Testnet, key: string, writers: Writer[], label: string): Promise<void> {
  let reader: RawPeer
  for (let attempt = 1; ; attempt++) {
    const peer = reader = new RawPeer(net)
    teardown(t, () => peer.close())
    await reader.connectTo(key)
    // as in dialKey: a dial that never reaches the daemon is dropped and dialed again
    if (await reader.nextOfType('root-peer-announcement', 5000).then(() => true, () => false)) break
    await reader.close()
    assert.ok(attempt < 6, `${label}: no announcement in ${attempt} dials`)
    console.log(`${label}: no announcement within 5 s: dialing again`)
  }
  for (const [room, { id, index }] of newestAcked(writers)) {
    const requestId = `${room}-${index}`
    reader.send({ type: 'sync-request', roomName: room, lastIndex: index, limit: 1, requestId })
    const page = await reader.next(f => f.requestId === requestId)
    assert.equal(page.messages?.[0]?.id, id, `${label}: ${id}, acked at ${room}/${index}, is there: ${JSON.stringify(page).slice(0, 300)}`)
  }
  await reader.close()
}

test('SIGTERM under heavy ingest: everything accepted before the signal is acked and stored, the frames after it are refused with SHUTTING_DOWN (some are, none stored), exit 0', async t => {
  const net = await testnet(t)
  const storage = await tmpDir(t)
  const rooms = ['drain-a', 'drain-b']
  // 200 frames in flight a writer: at the signal the daemon holds most of them unhandled, and each ack that goes out
  // during the drain makes its writer send one more
  const writers = [new Writer('d0', ['drain-a'], 200), new Writer('d1', ['drain-b'], 200), new Writer('d2', rooms, 200)]
  teardown(t, () => Promise.all(writers.map(w => w.disconnect())))
  const { d, key } = await startDaemon(t, env(net, storage))
  await Promise.all(writers.map(w => w.connect(net, key)))
  for (const w of writers) w.produce()
  // wait until acks are flowing on every connection
  await Promise.all(writers.map(w => w.until(() => w.acked.size >= 100)))
  d.child.kill('SIGTERM')
  const { code } = await d.exited
  assert.equal(code, 0)
  // the drain finished by itself: exit 0 and `stopped`, not the 10 s timeout's exit 1
  await d.line(l => l.msg === 'stopped')
  assert.ok(!d.lines.some(l => l.msg === 'shutdown took too long: exiting'))
  await Promise.all(writers.map(w => w.disconnect()))

  const { d: again } = await startDaemon(t, env(net, storage))
  const acked = await checkAcked(t, net, writers, rooms)
  // nothing was stored without its ack going out: the stored messages are exactly the acked ones
  const stored = new Set<string>()
  for (const room of rooms) for (const m of await readRoom(t, net, room)) stored.add(m.id)
  assert.equal(stored.size, acked, 'every stored message was acked before the connection closed')
  const refused = writers.reduce((n, w) => n + (w.refusals.get('SHUTTING_DOWN') ?? 0), 0)
  console.log(`SIGTERM under load: ${acked} acked and stored, ${refused} refused with SHUTTING_DOWN`)
  for (const w of writers) assert.deepEqual([...w.refusals.keys()].filter(c => c !== 'SHUTTING_DOWN'), [])
  assert.ok(refused > 0, 'frames that came after the signal were refused')
  for (const w of writers) {
    for (const id of w.refusedIds.keys()) {
      assert.ok(!stored.has(id), `${id}, refused with SHUTTING_DOWN, is not stored`)
      assert.ok(!w.acked.has(id), `${id}, refused with SHUTTING_DOWN, was not acked`)
    }
  }
  assert.equal((await again.stop('SIGTERM')).code, 0)
})

test('a missing, empty, truncated or wrong-shaped state file: the daemon starts, rebuilds every room from storage, keeps the bad file aside', async t => {
  const net = await testnet(t)
  const storage = await tmpDir(t)
  // a computed key: a literal __proto__ key would set the object's prototype instead
  const counts: Record<string, number> = { lobby: 7, 'a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90': 3, ['__proto__']: 2 }
  const { d } = await startDaemon(t, env(net, storage))
  const peer = await rawPeer(t, net)
  for (const [room, n] of Object.entries(counts)) {
    for (let i = 0; i < n; i++) peer.send({ type: 'message', roomName: room, message: `${room} ${i}`, id: `${room}-${i}` })
    await peer.next(f => f.id === `${room}-${n - 1}`)
  }
  await peer.close()
  assert.equal((await d.stop('SIGTERM')).code, 0)
  const file = path.join(storage, 'root-peer-state.json')
  const previous = path.join(storage, 'root-peer-state.prev.json')
  const good = await fs.readFile(file, 'utf8')
  // the previous good copy is kept beside the current one
  assert.equal(JSON.parse(await fs.readFile(previous, 'utf8')).rootPeerCreatedAt, JSON.parse(good).rootPeerCreatedAt)

  const cases: Array<[string, string | null, string]> = [
    ['missing', null, 'missing'],
    ['empty', '', 'empty'],
    ['truncated mid-JSON', good.slice(0, Math.floor(good.length / 2)), 'not valid JSON'],
    ['valid JSON of the wrong shape', JSON.stringify({ rooms: [1, 2, 3], totalMessages: 'many' }), 'has no "rooms" object']
  ]
  // each case on the same store: every daemon leaves a good file and a good previous copy behind it
  for (const [name, content, problem] of cases) {
    for (const withPrevious of [false, true]) {
      const label = `${name}, ${withPrevious ? 'with' : 'without'} a previous copy`
      if (!withPrevious) await fs.rm(previous)
      if (content === null) await fs.rm(file)
      else await fs.writeFile(file, content)

      const { d } = await startDaemon(t, env(net, storage))
      const line = await d.line(l => typeof l.msg === 'string' && l.msg.startsWith('state file was'))
      assert.ok(line.problem.startsWith(problem), `${label}: ${String(line.problem)}`)
      assert.equal(line.fromPrevious, withPrevious, label)
      assert.equal(line.rooms, 3, label)
      assert.equal(line.messages, 12, label)
      if (content !== null) assert.equal(await fs.readFile(line.movedTo, 'utf8'), content, `${label}: the bad file is kept aside as it was`)
      for (const [room, n] of Object.entries(counts)) {
        const messages = await readRoom(t, net, room)
        assert.deepEqual(messages.map(m => m.id), Array.from({ length: n }, (_, i) => `${room}-${i}`), `${label}: ${room}`)
      }
      assert.equal((await d.stop('SIGTERM')).code, 0)
      const rebuilt = JSON.parse(await fs.readFile(file, 'utf8'))
      assert.equal(rebuilt.totalMessages, 12, label)
      assert.deepEqual(Object.keys(rebuilt.rooms).sort(), Object.keys(counts).sort(), label)
      assert.ok(Object.hasOwn(rebuilt.rooms, '__proto__'), label)
      for (const [room, n] of Object.entries(counts)) assert.equal(rebuilt.rooms[room].messageCount, n, `${label}: ${room}`)
    }
  }
})

/** A tmpfs of `size` mounted on a fresh dir, unmounted after the test; null where this process cannot mount. */
async function smallDisk (t: any, size: string): Promise<string | null> {
  const dir = await tmpDir(t, 'root-peer-disk-')
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${size}`, 'tmpfs', dir], { stdio: 'pipe' })
  } catch {
    return null
  }
  teardown(t, () => execFileSync('umount', ['-l', dir]))
  return dir
}

const notRoot = process.getuid?.() === 0 ? null : 'root (to mount a small tmpfs)'
test('disk full: messages are refused with STORAGE_FULL and not acked, /health says so, and the daemon recovers by itself when there is room', { skip: skipUnlessCI(notRoot) }, async t => {
  assertPresent(notRoot)
  const net = await testnet(t)
  const disk = await smallDisk(t, '24m')
  assert.ok(disk !== null, 'mount -t tmpfs failed')
  const storage = path.join(disk, 'data')
  const { d } = await startDaemon(t, env(net, storage))
  const url = (await d.line(l => l.url !== undefined)).url as string
  const peer = await rawPeer(t, net)
  for (let i = 0; i < 5; i++) peer.send({ type: 'message', roomName: 'full', message: `m${i}`, id: `m${i}` })
  assert.equal((await peer.next(f => f.id === 'm4')).messageIndex, 4)

  // fill the disk
  const filler = path.join(disk, 'filler')
  const handle = await fs.open(filler, 'w')
  const chunk = Buffer.alloc(64 * 1024)
  try {
    while (true) await handle.write(chunk)
  } catch (err: any) {
    assert.equal(err.code, 'ENOSPC')
  } finally {
    await handle.close()
  }

  // RocksDB has write-ahead log space set aside: writes go on until that is used up too, then fail
  const big = 'x'.repeat(8000)
  const acked: string[] = []
  let refused: any = null
  for (let i = 0; i < 4000 && refused === null; i++) {
    peer.send({ type: 'message', roomName: 'full', message: big, id: `f${i}` })
    const answer = await peer.next(f => f.id === `f${i}`)
    if (answer.type === 'message-ack') {
      assert.equal(answer.messageIndex, 5 + i)
      acked.push(answer.id)
    } else {
      refused = answer
    }
  }
  assert.ok(refused !== null, 'a full disk refuses a write within 32 MB')
  console.log(`disk full: refused with ${String(refused.freeBytes)} bytes free`)
  assert.equal(refused.code, 'STORAGE_FULL')
  // while full, later messages are refused at once, and nothing is acked
  peer.send({ type: 'message', roomName: 'full', message: 'small', id: 'later' })
  assert.equal((await peer.next(f => f.id === 'later')).code, 'STORAGE_FULL')
  const health = await fetch(new URL('/health', url))
  assert.equal(health.status, 503)
  const body = await health.json() as any
  assert.ok(body.reasons.some((r: string) => r.startsWith('storage full')), JSON.stringify(body))
  await d.line(l => typeof l.msg === 'string' && l.msg.startsWith('disk full'))
  // reads are still served, and hold every acked message; the refused one was not acked, but an append that
  // failed half way (its block written, a later step of it not) may hold it
  const held = (await readRoom(t, net, 'full')).map(m => m.id)
  assert.deepEqual(held.slice(0, 5 + acked.length), ['m0', 'm1', 'm2', 'm3', 'm4', ...acked])
  assert.ok(held.length === 5 + acked.length || (held.length === 6 + acked.length && held[held.length - 1] === refused.id), JSON.stringify(held.slice(-3)))

  await fs.rm(filler)
  await d.line(l => l.msg === 'storage recovered: writes accepted again', 60_000)
  assert.equal((await fetch(new URL('/health', url))).status, 200)
  // the resend of the refused message is acked once, at the next index (as a duplicate, if the failed append held it)
  peer.send({ type: 'message', roomName: 'full', message: big, id: refused.id })
  const ack = await peer.next(f => f.id === refused.id)
  assert.equal(ack.type, 'message-ack')
  assert.equal(ack.messageIndex, 5 + acked.length)
  const messages = await readRoom(t, net, 'full')
  assert.deepEqual(messages.map(m => m.id), ['m0', 'm1', 'm2', 'm3', 'm4', ...acked, refused.id])
  const metrics = await (await fetch(new URL('/metrics', url))).text()
  assert.match(metrics, /^root_peer_storage_failures_total 1$/m)
  assert.match(metrics, /^root_peer_errors_total\{code="STORAGE_FULL"\} 2$/m)
  console.log(`disk full: ${acked.length} messages acked into the log's reserved space, then STORAGE_FULL${ack.duplicate === true ? ' (the failed append had kept its block: acked as a duplicate)' : ''}; recovered after the disk had room`)
  assert.equal((await d.stop('SIGTERM')).code, 0)
})
