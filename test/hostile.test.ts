import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import path from 'node:path'
import { test } from 'node:test'
import fc from 'fast-check'
import HyperDHT from 'hyperdht'
import { DEFAULT_LIMITS, decodeFrame } from '../src/protocol/protocol.js'
import { ROOT, bootstrapEnv, daemon, rawPeer, rootPeer, teardown, testnet, tmpDir } from './helpers.js'

const NO_RATES = { messagesPerSecond: 0, bytesPerSecond: 0, syncsPerSecond: 0, registersPerMinute: 0, newRoomsPerMinute: 0, banThreshold: 0 }

// ---------- the fuzz test ----------

const ROOMS = ['alpha', 'beta', '__proto__', 'constructor', 'toString', 'a'.repeat(64), '../x', '', 'x\u0000y', 'hasOwnProperty']
const roomArb = fc.oneof(fc.constantFrom(...ROOMS), fc.string({ maxLength: 20 }))
const validFrameArb = fc.oneof(
  fc.record({ type: fc.constant('register-room'), roomName: roomArb }),
  fc.record({ type: fc.constant('message'), roomName: roomArb, message: fc.oneof(fc.string({ maxLength: 300 }), fc.jsonValue({ maxDepth: 3 })), id: fc.string({ minLength: 1, maxLength: 12 }) }, { requiredKeys: ['type', 'roomName', 'message'] }),
  fc.record({ type: fc.constant('sync-request'), roomName: roomArb, lastIndex: fc.nat(50), limit: fc.integer({ min: 1, max: 20 }) }, { requiredKeys: ['type', 'roomName'] })
)
const mutatedArb = fc.tuple(validFrameArb, fc.constantFrom('type', 'roomName', 'message', 'id', 'lastIndex', 'limit', '__proto__', 'constructor', 'roomId'), fc.oneof(fc.jsonValue({ maxDepth: 2 }), fc.constant(undefined), fc.constant(-1), fc.constant(1.5), fc.constant('x'.repeat(70_000))))
  .map(([frame, key, value]) => {
    const copy: Record<string, unknown> = { ...frame }
    if (value === undefined) delete copy[key]
    else Object.defineProperty(copy, key, { value, enumerable: true, writable: true, configurable: true })
    return JSON.stringify(copy) ?? '{}'
  })
const deepArb = fc.tuple(fc.integer({ min: 1000, max: 100_000 }), fc.boolean()).map(([n, bare]) => bare
  ? '['.repeat(n) + ']'.repeat(n)
  : '{"type":"message","roomName":"alpha","message":' + '['.repeat(n) + ']'.repeat(n) + '}')
// no frame over MAX_FRAME_BYTES: it ends the connection (test/public-dht.test.ts), and this property runs on one
const frameArb: fc.Arbitrary<string | Uint8Array> = fc.oneof(
  { arbitrary: fc.uint8Array({ maxLength: 512 }), weight: 2 },
  { arbitrary: fc.json({ maxDepth: 4 }), weight: 2 },
  { arbitrary: validFrameArb.map(f => JSON.stringify(f)), weight: 6 },
  { arbitrary: mutatedArb, weight: 6 },
  { arbitrary: deepArb, weight: 1 }
)

test('fuzz: 10,000 generated frames over real connections; the daemon stays up and stores exactly what valid frames stored', async t => {
  const net = await testnet(t)
  let total = 0
  await fc.assert(fc.asyncProperty(fc.array(frameArb, { minLength: 500, maxLength: 600 }), async frames => {
    total += frames.length
    const rp = await rootPeer(t, net, NO_RATES)
    const peer = await rawPeer(t, net)
    await peer.nextOfType('root-peer-announcement')
    const before = Object.getOwnPropertyNames(Object.prototype).join()

    // the oracle: what the frame table says each frame does
    const expected = new Map<string, Array<{ message: unknown, id?: string }>>()
    const ids = new Map<string, Set<string>>()
    let refusals = 0
    for (const f of frames) {
      const data = Buffer.from(f)
      // the secret stream carries no empty messages: there is nothing to send
      if (data.byteLength === 0) continue
      peer.send(data)
      let frame
      try {
        frame = decodeFrame(data, DEFAULT_LIMITS)
      } catch {
        refusals++
        continue
      }
      if (frame.type === 'sync-request') continue
      if (!expected.has(frame.roomName)) expected.set(frame.roomName, [])
      if (frame.type !== 'message') continue
      const seen = ids.get(frame.roomName) ?? new Set()
      ids.set(frame.roomName, seen)
      if (frame.id !== undefined && seen.has(frame.id)) continue
      if (frame.id !== undefined) seen.add(frame.id)
      expected.get(frame.roomName)!.push({ message: JSON.parse(frame.messageJson), ...(frame.id !== undefined ? { id: frame.id } : {}) })
    }
    // frames are handled in order: once this is answered, every frame before it was
    peer.send({ type: 'sync-request', roomName: 'alpha', lastIndex: 0, requestId: 'done' })
    await peer.next(f => f.requestId === 'done', 60_000)
    assert.equal(peer.frames.filter(f => f.type === 'error').length, refusals, 'one error frame per refused frame')
    peer.frames.length = 0

    assert.equal(rp.stats().totalRooms, expected.size)
    for (const [roomName, want] of expected) {
      const { messages } = await peer.syncAll(roomName)
      assert.deepEqual(messages.map(m => ({ message: m.message, ...(m.id !== undefined ? { id: m.id } : {}) })), want, roomName)
      assert.deepEqual(messages.map(m => m.messageIndex), want.map((_, i) => i))
    }
    assert.equal(Object.getOwnPropertyNames(Object.prototype).join(), before, 'no prototype was touched')
    assert.equal(peer.closed, false)

    // another peer is served
    const other = await rawPeer(t, net)
    other.send({ type: 'message', roomName: 'after-fuzz', message: 'hi', id: 'x' })
    assert.equal((await other.nextOfType('message-ack')).messageIndex, 0)
    await peer.close()
    await other.close()
    await rp.close()
  }), { numRuns: 20, seed: Number(process.env.FUZZ_SEED ?? Date.now() % 2 ** 31), endOnFailure: true, includeErrorInReport: true })
  assert.ok(total >= 10_000, `${total} frames`)
  console.log(`fuzz: ${total} frames`)
})

// ---------- floods, slow readers, caps ----------

test('a flood far over the rate is refused with RATE_LIMITED, then banned; a well-behaved peer keeps getting acks and syncs', async t => {
  const net = await testnet(t)
  const rp = await rootPeer(t, net, { messagesPerSecond: 50, banThreshold: 100, banDuration: 60_000 })
  const flooder = await rawPeer(t, net)
  const calm = await rawPeer(t, net)
  await flooder.nextOfType('root-peer-announcement')
  await calm.nextOfType('root-peer-announcement')

  const banned = once(rp, 'peer-banned')
  for (let i = 0; i < 5000; i++) flooder.send({ type: 'message', roomName: 'flood', message: `f${i}`, id: `f${i}` })
  // meanwhile the calm peer writes and reads its own room, one frame at a time
  const latencies: number[] = []
  for (let i = 0; i < 20; i++) {
    const started = Date.now()
    calm.send({ type: 'message', roomName: 'calm', message: `c${i}`, id: `c${i}` })
    assert.equal((await calm.next(f => f.type === 'message-ack' && f.id === `c${i}`)).messageIndex, i)
    calm.send({ type: 'sync-request', roomName: 'calm', lastIndex: i, requestId: i })
    assert.equal((await calm.next(f => f.requestId === i)).messages[0].message, `c${i}`)
    latencies.push(Date.now() - started)
  }
  const [bannedId] = await banned
  assert.equal(bannedId, flooder.swarm.keyPair.publicKey.toString('hex'))
  const limited = flooder.frames.filter(f => f.code === 'RATE_LIMITED')
  assert.ok(limited.length >= 50, `${limited.length} RATE_LIMITED`)
  assert.ok(limited.every(f => f.retryAfterMs > 0))
  assert.ok(flooder.frames.some(f => f.code === 'BANNED'))
  const acked = flooder.frames.filter(f => f.type === 'message-ack').length
  assert.ok(acked <= 500 + 50, `${acked} flood messages acked: the burst and no more`)
  assert.equal(rp.counters.bans, 1)
  assert.ok(Math.max(...latencies) < 2000, `calm peer latencies: ${latencies.join(',')} ms`)

  // the banned key is refused at the handshake while the ban lasts
  const node = new HyperDHT({ bootstrap: net.bootstrap, host: '127.0.0.1' })
  teardown(t, () => node.destroy())
  const retry = (node as any).connect(rp.publicKey, { keyPair: flooder.swarm.keyPair })
  const outcome = await new Promise(resolve => {
    retry.on('error', () => resolve('refused'))
    retry.on('data', () => resolve('served'))
  })
  assert.equal(outcome, 'refused')
})

test('a peer that stops reading cannot grow the daemon\'s memory: nothing more is handled for it, and it is dropped after the stall timeout', async t => {
  const net = await testnet(t)
  // the daemon as a child process: a peer in another process can then be stopped for real (SIGSTOP)
  const d = daemon(t, [], {
    STORAGE_DIR: await tmpDir(t), DHT_BOOTSTRAP: bootstrapEnv(net), DHT_HOST: '127.0.0.1', STATS_INTERVAL: '0',
    RATE_MESSAGES: '0', RATE_BYTES: '0', RATE_SYNCS: '0', STALL_TIMEOUT: '2s'
  })
  const key = await d.ready()
  const stats = async (): Promise<any> => await (await fetch(new URL('/stats', (await d.line(l => l.url !== undefined)).url))).json()
  const writer = await rawPeer(t, net)
  const block = 'b'.repeat(4000)
  for (let i = 0; i < 2000; i++) writer.send({ type: 'message', roomName: 'big', message: block, id: `b${i}` })
  await writer.next(f => f.type === 'message-ack' && f.id === 'b1999', 30_000)
  await writer.close()

  const sentBefore = (await stats()).counters.framesSent['sync-response'] ?? 0
  // 60 requests for the whole 8 MB room (about 30 MB of answers), then the process stops before reading them
  const child = spawn(process.execPath, ['--import', 'tsx', path.join(ROOT, 'test/fixtures/stopping-client.ts'), bootstrapEnv(net), key, 'big', '60'], { cwd: ROOT, stdio: ['ignore', 'pipe', 'inherit'] })
  teardown(t, () => { child.kill('SIGKILL') })
  const stalled = await d.line(l => typeof l.msg === 'string' && l.msg.startsWith('peer stalled'), 30_000)
  assert.match(stalled.peerId, /^[0-9a-f]{64}$/)

  // meanwhile, and after, another peer is served in full
  const reader = await rawPeer(t, net)
  const { messages, pages } = await reader.syncAll('big')
  assert.equal(messages.length, 2000)
  const after = await stats()
  const toStopped = after.counters.framesSent['sync-response'] - sentBefore - pages.length
  console.log(`slow reader: ${toStopped} of 60 requested pages were written to the stopped peer before it was dropped`)
  assert.ok(toStopped < 10, `${toStopped} of 60 pages were written to the stopped peer`)
  assert.equal(after.counters.stalledPeers, 1)
})

test('1,000 concurrent peers are served; the 1,001st over MAX_PEERS is refused with TOO_MANY_PEERS', async t => {
  const net = await testnet(t)
  // every peer here comes from 127.0.0.1 and stays silent: no per-address cap, no idle timeouts
  const rp = await rootPeer(t, net, { maxPeers: 1000, maxPeersPerHost: 0, firstFrameTimeout: 0, idleEvictAfter: 0 })
  const nodes = Array.from({ length: 4 }, () => new HyperDHT({ bootstrap: net.bootstrap, host: '127.0.0.1' }))
  const conns: any[] = []
  teardown(t, async () => {
    for (const c of conns) c.destroy()
    await Promise.all(nodes.map(n => n.destroy()))
  })
  const first = await Promise.all(Array.from({ length: 1000 }, (_, i) => new Promise<string>(resolve => {
    const conn = (nodes[i % 4] as any).connect(rp.publicKey, { keyPair: HyperDHT.keyPair() })
    conns.push(conn)
    conn.on('error', () => resolve('error'))
    conn.once('data', (d: Buffer) => resolve(JSON.parse(d.toString()).type))
  })))
  assert.equal(first.filter(x => x === 'root-peer-announcement').length, 1000)
  assert.equal(rp.peers.size, 1000)
  const extra = (nodes[0] as any).connect(rp.publicKey, { keyPair: HyperDHT.keyPair() })
  conns.push(extra)
  extra.on('error', () => {})
  const [data] = await once(extra, 'data')
  const refusal = JSON.parse(data.toString())
  assert.equal(refusal.code, 'TOO_MANY_PEERS')
  // the daemon ends its side, and destroys the stream if this peer does not end its own
  await new Promise(resolve => extra.once('close', resolve))
  // the peers already in are still served
  conns[0].write(JSON.stringify({ type: 'message', roomName: 'busy', message: 'still here', id: 'm' }))
  const [ack] = await once(conns[0], 'data')
  assert.equal(JSON.parse(ack.toString()).type, 'message-ack')
})

test('room caps: MAX_ROOMS answers TOO_MANY_ROOMS once every room has history, and new rooms per peer are rate-limited', async t => {
  const net = await testnet(t)
  await rootPeer(t, net, { maxRooms: 3, newRoomsPerMinute: 2 })
  const peer = await rawPeer(t, net)
  for (const r of ['r1', 'r2', 'r3']) peer.send({ type: 'register-room', roomName: r, requestId: r })
  assert.equal((await peer.next(f => f.requestId === 'r1')).type, 'room-registered')
  assert.equal((await peer.next(f => f.requestId === 'r2')).type, 'room-registered')
  const limited = await peer.next(f => f.requestId === 'r3')
  assert.equal(limited.code, 'RATE_LIMITED')
  assert.ok(limited.retryAfterMs > 0)
  // an existing room costs no new-room budget
  peer.send({ type: 'message', roomName: 'r1', message: 'x', id: 'x1' })
  assert.equal((await peer.nextOfType('message-ack')).messageIndex, 0)

  const other = await rawPeer(t, net)
  other.send({ type: 'register-room', roomName: 'r3', requestId: 1 })
  assert.equal((await other.next(f => f.requestId === 1)).type, 'room-registered')
  // an empty room would give its place up to a new one: these have history
  peer.send({ type: 'message', roomName: 'r2', message: 'x', id: 'x2' })
  assert.equal((await peer.next(f => f.id === 'x2')).type, 'message-ack')
  other.send({ type: 'message', roomName: 'r3', message: 'x', id: 'x3' })
  assert.equal((await other.next(f => f.id === 'x3')).type, 'message-ack')
  other.send({ type: 'message', roomName: 'r4', message: 'x', id: 'y' })
  const full = await other.nextOfType('error')
  assert.equal(full.code, 'TOO_MANY_ROOMS')
  assert.equal(full.id, 'y')
})

test('exactly once: a resent id is acked with its original index and duplicate: true, also after a restart', async t => {
  const net = await testnet(t)
  const storage = await tmpDir(t)
  const env = { STORAGE_DIR: storage, DHT_BOOTSTRAP: bootstrapEnv(net), DHT_HOST: '127.0.0.1', STATS_INTERVAL: '0' }
  const first = daemon(t, [], env)
  await first.ready()
  const a = await rawPeer(t, net)
  a.send({ type: 'message', roomName: 'once', message: 'm0', id: 'id-0' })
  a.send({ type: 'message', roomName: 'once', message: 'm1', id: 'id-1' })
  a.send({ type: 'message', roomName: 'once', message: 'm1 again', id: 'id-1' })
  assert.deepEqual(await a.next(f => f.id === 'id-0'), { type: 'message-ack', roomName: 'once', id: 'id-0', messageIndex: 0 })
  assert.deepEqual(await a.next(f => f.id === 'id-1'), { type: 'message-ack', roomName: 'once', id: 'id-1', messageIndex: 1 })
  assert.deepEqual(await a.next(f => f.id === 'id-1'), { type: 'message-ack', roomName: 'once', id: 'id-1', messageIndex: 1, duplicate: true })
  await a.close()
  assert.equal((await first.stop('SIGTERM')).code, 0)

  const second = daemon(t, [], env)
  await second.ready()
  const b = await rawPeer(t, net)
  b.send({ type: 'message', roomName: 'once', message: 'm0 resent', id: 'id-0' })
  assert.deepEqual(await b.next(f => f.id === 'id-0'), { type: 'message-ack', roomName: 'once', id: 'id-0', messageIndex: 0, duplicate: true })
  b.send({ type: 'message', roomName: 'once', message: 'm2', id: 'id-2' })
  assert.equal((await b.next(f => f.id === 'id-2')).messageIndex, 2)
  const { messages } = await b.syncAll('once')
  assert.deepEqual(messages.map(m => m.message), ['m0', 'm1', 'm2'])
})

test('room names that look like prototype keys are ordinary rooms, and survive a restart', async t => {
  const net = await testnet(t)
  const storage = await tmpDir(t)
  const rp = await rootPeer(t, net, { storageDir: storage })
  const peer = await rawPeer(t, net)
  for (const name of ['__proto__', 'constructor', 'hasOwnProperty']) {
    peer.send({ type: 'message', roomName: name, message: `in ${name}`, id: name })
    assert.equal((await peer.next(f => f.id === name)).messageIndex, 0)
  }
  await peer.close()
  await rp.close()
  const again = await rootPeer(t, net, { storageDir: storage })
  assert.equal(again.stats().totalRooms, 3)
  const reader = await rawPeer(t, net)
  const { messages } = await reader.syncAll('__proto__')
  assert.deepEqual(messages.map(m => m.message), ['in __proto__'])
  assert.equal(({} as any).messageCount, undefined)
})

