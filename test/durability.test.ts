import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { EventEmitter, once } from 'node:events'
import fs from 'node:fs/promises'
import path from 'node:path'
import { test } from 'node:test'
import HyperDHT from 'hyperdht'
import type { Testnet } from 'hyperdht/testnet.js'
import Hyperswarm, { type NoiseStream } from 'hyperswarm'
import { bootstrapEnv, daemon, rawPeer, teardown, testnet, tmpDir, type Daemon } from './helpers.js'

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
  private next = 0
  private conn: NoiseStream | null = null
  private swarm: Hyperswarm | null = null
  private pumping = false

  constructor (readonly name: string, readonly rooms: string[], readonly window = 40) {
    super()
  }

  /** Resolves once `done()` holds, checked after every ack. */
  async until (done: () => boolean): Promise<void> {
    while (!done()) await once(this, 'ack')
  }

  /** Dials the root peer by key and keeps the outbox flowing until the connection closes. */
  async connect (net: Testnet, key: string, produce: boolean): Promise<void> {
    const swarm = new Hyperswarm({ dht: new HyperDHT({ bootstrap: net.bootstrap, host: '127.0.0.1' }) })
    this.swarm = swarm
    const connected = once(swarm, 'connection') as Promise<[NoiseStream]>
    swarm.joinPeer(Buffer.from(key, 'hex'))
    const [conn] = await connected
    this.conn = conn
    conn.on('error', () => {})
    conn.on('close', () => { if (this.conn === conn) this.conn = null })
    conn.on('data', (data: Buffer) => this.onFrame(JSON.parse(data.toString('utf8')), produce))
    // everything not acked yet goes again, with the same id
    for (const [id, m] of this.outbox) this.write(id, m)
    if (produce) this.pump()
  }

  async disconnect (): Promise<void> {
    const swarm = this.swarm
    this.swarm = null
    this.conn = null
    if (swarm !== null) await swarm.destroy()
  }

  get unacked (): number {
    return this.outbox.size
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

  private onFrame (frame: any, produce: boolean): void {
    if (frame.type === 'message-ack') {
      const seen = this.acked.get(frame.id)
      if (seen !== undefined && (seen.index !== frame.messageIndex || seen.room !== frame.roomName)) {
        this.violations.push(`${String(frame.id)} acked at ${seen.room}/${seen.index}, then at ${String(frame.roomName)}/${String(frame.messageIndex)}`)
      }
      this.acked.set(frame.id, { room: frame.roomName, index: frame.messageIndex })
      this.outbox.delete(frame.id)
      if (produce) this.pump()
      this.emit('ack')
    } else if (frame.type === 'error') {
      this.refusals.set(frame.code, (this.refusals.get(frame.code) ?? 0) + 1)
    }
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

test('crash loop: kill -9 at random moments under acked ingest, 20 times; every acked message is stored once, at its index', async t => {
  const net = await testnet(t)
  const storage = await tmpDir(t)
  const rooms = ['crash-a', 'crash-b', 'crash-shared']
  const writers = [new Writer('w0', ['crash-a', 'crash-shared']), new Writer('w1', ['crash-b', 'crash-shared']), new Writer('w2', ['crash-shared'])]
  teardown(t, () => Promise.all(writers.map(w => w.disconnect())))
  const KILLS = 20
  let kills = 0
  for (let cycle = 0; cycle < KILLS; cycle++) {
    // every other life fsyncs before acking (SYNC_WRITES): both modes keep the promise through a process crash
    const { d, key } = await startDaemon(t, env(net, storage, { SYNC_WRITES: cycle % 2 === 0 ? 'false' : 'true' }))
    await Promise.all(writers.map(w => w.connect(net, key, true)))
    const before = writers.reduce((n, w) => n + w.acked.size, 0)
    // a random moment: while acks are flowing, after 50 to 800 ms
    await new Promise(resolve => setTimeout(resolve, 50 + Math.floor(Math.random() * 750)))
    d.child.kill('SIGKILL')
    const { signal } = await d.exited
    assert.equal(signal, 'SIGKILL')
    kills++
    await Promise.all(writers.map(w => w.disconnect()))
    const after = writers.reduce((n, w) => n + w.acked.size, 0)
    assert.ok(after >= before, 'acks only accumulate')
  }

  // one last life: the outboxes drain (resent ids are acked with their first index), then everything is checked
  const { d, key } = await startDaemon(t, env(net, storage))
  await Promise.all(writers.map(async w => {
    const drained = w.until(() => w.unacked === 0)
    await w.connect(net, key, false)
    await drained
  }))
  const acked = await checkAcked(t, net, writers, rooms)
  console.log(`crash loop: ${kills} kills (SIGKILL), ${acked} acked messages, each stored once at its acked index`)
  assert.equal(kills, KILLS)
  assert.ok(acked > KILLS * 10, `only ${acked} messages were acked`)
  assert.equal((await d.stop('SIGTERM')).code, 0)
})

test('SIGTERM under heavy ingest: everything accepted before the signal is acked, the rest is refused with SHUTTING_DOWN, exit 0', async t => {
  const net = await testnet(t)
  const storage = await tmpDir(t)
  const rooms = ['drain-a', 'drain-b']
  const writers = [new Writer('d0', ['drain-a'], 200), new Writer('d1', ['drain-b'], 200), new Writer('d2', rooms, 200)]
  teardown(t, () => Promise.all(writers.map(w => w.disconnect())))
  const { d, key } = await startDaemon(t, env(net, storage))
  await Promise.all(writers.map(w => w.connect(net, key, true)))
  // wait until acks are flowing on every connection
  await Promise.all(writers.map(w => w.until(() => w.acked.size >= 100)))
  const signalled = Date.now()
  d.child.kill('SIGTERM')
  const { code } = await d.exited
  assert.equal(code, 0)
  assert.ok(Date.now() - signalled < 10_000, 'exits within the 10 s drain')
  await d.line(l => l.msg === 'stopped')
  await Promise.all(writers.map(w => w.disconnect()))

  const { d: again } = await startDaemon(t, env(net, storage))
  const acked = await checkAcked(t, net, writers, rooms)
  // nothing was stored without its ack going out: the stored messages are exactly the acked ones
  let stored = 0
  for (const room of rooms) stored += (await readRoom(t, net, room)).length
  assert.equal(stored, acked, 'every stored message was acked before the connection closed')
  const refused = writers.reduce((n, w) => n + (w.refusals.get('SHUTTING_DOWN') ?? 0), 0)
  console.log(`SIGTERM under load: ${acked} acked and stored, ${refused} refused with SHUTTING_DOWN`)
  for (const w of writers) assert.deepEqual([...w.refusals.keys()].filter(c => c !== 'SHUTTING_DOWN'), [])
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

const canMount = process.getuid?.() === 0
test('disk full: messages are refused with STORAGE_FULL and not acked, /health says so, and the daemon recovers by itself when there is room', { skip: canMount ? false : 'needs root to mount a small tmpfs' }, async t => {
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
