import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import path from 'node:path'
import { test, type TestContext } from 'node:test'
import HyperDHT from 'hyperdht'
import type { Testnet } from 'hyperdht/testnet.js'
import { ROOT, RawPeer, bootstrapEnv, daemon, rawPeer, rootPeer, teardown, testnet, tmpDir } from './helpers.js'

// The limits of docs/configuration.md#limits set to small or non-default values, each refused as the table says.

/** The daemon as users run it, with `env` over a loopback testnet; resolves once it is announced. */
async function start (t: TestContext, env: Record<string, string>): Promise<{ net: Testnet, key: string }> {
  const net = await testnet(t)
  const d = daemon(t, [], { STORAGE_DIR: await tmpDir(t), DHT_BOOTSTRAP: bootstrapEnv(net), DHT_HOST: '127.0.0.1', STATS_INTERVAL: '0', ...env })
  return { net, key: await d.ready() }
}

/** A connected raw peer whose announcement has been read. */
async function announced (t: TestContext, net: Testnet, keyPair?: { publicKey: Buffer, secretKey: Buffer }): Promise<{ peer: RawPeer, limits: any }> {
  const peer = new RawPeer(net, keyPair)
  teardown(t, () => peer.close())
  await peer.connect()
  const { limits } = await peer.nextOfType('root-peer-announcement')
  return { peer, limits }
}

function closed (peer: RawPeer): Promise<void> {
  // not events.once: a reset before the close is an 'error', which once() would reject with
  return peer.closed ? Promise.resolve() : new Promise(resolve => peer.conn!.once('close', () => resolve()))
}

/** The RATE_LIMITED error frame `match` finds, checked to say when the budget allows the frame. */
async function rateLimited (peer: RawPeer, match: (f: any) => boolean, most: number): Promise<any> {
  const err = await peer.next(match)
  assert.equal(err.code, 'RATE_LIMITED', JSON.stringify(err))
  assert.ok(Number.isInteger(err.retryAfterMs) && err.retryAfterMs > 0 && err.retryAfterMs <= most, `retryAfterMs ${err.retryAfterMs}`)
  return err
}

test('RATE_BYTES=1: 10 s worth of message bytes (UTF-8) are taken at once; the next message is refused with RATE_LIMITED and retryAfterMs, and not stored', async t => {
  const { net } = await start(t, { RATE_BYTES: '1', RATE_MESSAGES: '0' })
  const { peer, limits } = await announced(t, net)
  assert.equal(limits.bytesPerSecond, 1)
  // 6 + 4 bytes (3 + 2 characters): the burst; then 5 bytes, which 5 s of the rate would allow
  peer.send({ type: 'message', roomName: 'bytes', message: 'ééé', id: 'b1' })
  peer.send({ type: 'message', roomName: 'bytes', message: 'éé', id: 'b2' })
  peer.send({ type: 'message', roomName: 'bytes', message: 'xxxxx', id: 'b3' })
  assert.equal((await peer.next(f => f.id === 'b1')).messageIndex, 0)
  assert.equal((await peer.next(f => f.id === 'b2')).messageIndex, 1)
  await rateLimited(peer, f => f.id === 'b3', 5000)
  const { messages } = await peer.syncAll('bytes')
  assert.deepEqual(messages.map(m => m.message), ['ééé', 'éé'])
})

test('RATE_SYNCS=0.2: follow and unfollow frames spend the same budget as sync-requests (10 s worth: 2); the sync-request after them gets RATE_LIMITED and is answered once resent after retryAfterMs; messages are not held up', async t => {
  const { net } = await start(t, { RATE_SYNCS: '0.2' })
  const { peer, limits } = await announced(t, net)
  assert.equal(limits.syncsPerSecond, 0.2)
  peer.send({ type: 'follow', roomName: 'syncs', requestId: 'follow' })
  peer.send({ type: 'unfollow', roomName: 'syncs', requestId: 'unfollow' })
  peer.send({ type: 'sync-request', roomName: 'syncs', requestId: 'sync-1' })
  peer.send({ type: 'message', roomName: 'syncs', message: 'm', id: 'm' })
  assert.equal((await peer.next(f => f.requestId === 'follow')).type, 'follow-live')
  assert.equal((await peer.next(f => f.requestId === 'unfollow')).type, 'follow-ended')
  const err = await rateLimited(peer, f => f.requestId === 'sync-1', 5000)
  assert.equal((await peer.next(f => f.id === 'm')).type, 'message-ack')

  await new Promise(resolve => setTimeout(resolve, err.retryAfterMs))
  peer.send({ type: 'sync-request', roomName: 'syncs', requestId: 'sync-2' })
  const page = await peer.next(f => f.requestId === 'sync-2')
  assert.equal(page.type, 'sync-response')
  assert.deepEqual(page.messages.map((m: any) => m.message), ['m'])
})

test('RATE_REGISTERS=2: register-room frames past a minute\'s worth (2) get RATE_LIMITED, also after reconnecting with the same key; messages, and other keys, are not held up', async t => {
  const { net } = await start(t, { RATE_REGISTERS: '2', RATE_NEW_ROOMS: '0' })
  const { peer, limits } = await announced(t, net)
  assert.equal(limits.registersPerMinute, 2)
  for (const requestId of ['r1', 'r2', 'r3']) peer.send({ type: 'register-room', roomName: 'registers', requestId })
  peer.send({ type: 'message', roomName: 'registers', message: 'm', id: 'm' })
  assert.equal((await peer.next(f => f.requestId === 'r1')).type, 'room-registered')
  assert.equal((await peer.next(f => f.requestId === 'r2')).type, 'room-registered')
  await rateLimited(peer, f => f.requestId === 'r3', 30_000)
  assert.equal((await peer.next(f => f.id === 'm')).type, 'message-ack')

  // the budget is the key's, not the connection's
  const keyPair = peer.swarm.keyPair
  await peer.close()
  const again = await announced(t, net, keyPair)
  again.peer.send({ type: 'register-room', roomName: 'registers', requestId: 'r4' })
  await rateLimited(again.peer, f => f.requestId === 'r4', 30_000)
  const other = await announced(t, net)
  other.peer.send({ type: 'register-room', roomName: 'registers', requestId: 'o1' })
  assert.deepEqual(await other.peer.next(f => f.requestId === 'o1'), { type: 'room-registered', roomName: 'registers', messageCount: 1, requestId: 'o1' })
})

test('BAN_THRESHOLD=3, BAN_DURATION=10s: the third refused frame gets BANNED (retryAfterMs 10,000) and the connection closed; the key is refused at the handshake until the ban ends, then served again; other keys are served meanwhile', async t => {
  const { net, key } = await start(t, { BAN_THRESHOLD: '3', BAN_DURATION: '10s' })
  const { peer } = await announced(t, net)
  // the ban starts when the third frame is handled: after this
  const sent = Date.now()
  for (let i = 0; i < 3; i++) peer.send('not json')
  await closed(peer)
  assert.deepEqual(peer.frames.map(f => f.code), ['BAD_FRAME', 'BAD_FRAME', 'BAD_FRAME', 'BANNED'])
  assert.equal(peer.frames[3].retryAfterMs, 10_000)
  const keyPair = peer.swarm.keyPair
  await peer.close()

  const other = await announced(t, net)
  assert.equal(other.peer.closed, false)

  const node = new HyperDHT({ bootstrap: net.bootstrap, host: '127.0.0.1' })
  teardown(t, () => node.destroy())
  const attempts: Array<{ outcome: string, ms: number }> = []
  while (attempts.at(-1)?.outcome !== 'served') {
    assert.ok(Date.now() - sent < 120_000, `still refused: ${JSON.stringify(attempts)}`)
    if (attempts.length > 0) await new Promise(resolve => setTimeout(resolve, 500))
    const outcome = await new Promise<string>(resolve => {
      const conn = (node as any).connect(Buffer.from(key, 'hex'), { keyPair })
      conn.on('error', () => resolve('refused'))
      conn.once('data', () => {
        resolve('served')
        conn.destroy()
      })
    })
    attempts.push({ outcome, ms: Date.now() - sent })
  }
  console.log(`banned key, dialled again: ${attempts.map(a => `${a.outcome} at ${a.ms} ms`).join(', ')}`)
  assert.equal(attempts[0].outcome, 'refused')
  assert.ok(attempts.at(-1)!.ms >= 10_000, 'served only once the ban was over')
})

test('a peer whose answers go unread has at most 64 of its frames held waiting to be handled; the rest stay with its transport (the stream is paused) until it is dropped at STALL_TIMEOUT', async t => {
  const net = await testnet(t)
  const rp = await rootPeer(t, net, { messagesPerSecond: 0, bytesPerSecond: 0, syncsPerSecond: 0, stallTimeout: 3000 })
  const writer = await rawPeer(t, net)
  for (let i = 0; i < 200; i++) writer.send({ type: 'message', roomName: 'big', message: 'b'.repeat(4000), id: `b${i}` })
  await writer.next(f => f.type === 'message-ack' && f.id === 'b199', 30_000)
  await writer.close()

  // what test/fixtures/stopping-client.ts sends 400 of, then stops (SIGSTOP) at the first answer (a 512 KiB page)
  const size = Buffer.byteLength(JSON.stringify({ type: 'sync-request', roomName: 'big', lastIndex: 0 }))
  let most = 0
  const watch = setInterval(() => { most = Math.max(most, rp.inboundBytes) }, 5)
  teardown(t, () => clearInterval(watch))
  const stalled = once(rp, 'peer-stalled')
  const child = spawn(process.execPath, ['--conditions=source', '--import', 'tsx', path.join(ROOT, 'test/fixtures/stopping-client.ts'), bootstrapEnv(net), rp.publicKey!.toString('hex'), 'big', '400'], { cwd: ROOT, stdio: ['ignore', 'pipe', 'inherit'] })
  teardown(t, () => { child.kill('SIGKILL') })
  const [stalledId] = await stalled
  clearInterval(watch)
  if (rp.peers.has(stalledId)) await new Promise<void>(resolve => rp.on('peer-disconnected', id => { if (id === stalledId) resolve() }))
  const handled = rp.counters.framesReceived['sync-request'] ?? 0
  console.log(`unread answers: ${handled} of 400 frames handled, at most ${most} bytes (${(most / size).toFixed(2)} frames of ${size} bytes) held; then dropped`)
  // 64 frames, and at most one more being received (counted at its length with secret-stream's 17 bytes)
  assert.ok(most >= 64 * size && most <= 64 * size + size + 17, `${most} bytes held`)
  assert.ok(handled + 65 < 400, `${handled} handled`)
  assert.equal(rp.inboundBytes, 0)
  assert.equal(rp.counters.stalledPeers, 1)
})

test('JSON nesting: a frame 32 levels deep is handled, one 33 deep is refused with BAD_FRAME, in the message or in a field the frame table does not name', async t => {
  const { net } = await start(t, {})
  const { peer } = await announced(t, net)
  // the frame object is the first level
  const nested = (levels: number): string => '[{"a":'.repeat(levels / 2) + '1' + '}]'.repeat(levels / 2)
  const frames = [
    `{"type":"message","roomName":"deep","id":"m32","message":${nested(30)}}`,
    `{"type":"message","roomName":"deep","id":"m33","message":${nested(32)}}`,
    `{"type":"message","roomName":"deep","id":"x32","message":"x","extra":[${nested(30)}]}`,
    `{"type":"message","roomName":"deep","id":"x33","message":"x","extra":[[${nested(30)}]]}`
  ]
  for (const f of frames) peer.send(f)
  peer.send({ type: 'sync-request', roomName: 'deep', requestId: 'done' })
  assert.equal((await peer.next(f => f.id === 'm32')).type, 'message-ack')
  assert.equal((await peer.next(f => f.id === 'x32')).type, 'message-ack')
  const page = await peer.next(f => f.requestId === 'done')
  assert.deepEqual(peer.frames.map(f => f.code), ['BAD_FRAME', 'BAD_FRAME'])
  assert.deepEqual(page.messages.map((m: any) => m.id), ['m32', 'x32'])
  assert.deepEqual(page.messages[0].message, JSON.parse(nested(30)))
})

test('MAX_FRAME_BYTES=4KiB, MAX_MESSAGE_BYTES=1000: a frame of exactly 4,096 bytes and a message of exactly 1,000 (UTF-8, or JSON) are stored; one byte more is refused with FRAME_TOO_LARGE or MESSAGE_TOO_LARGE naming the limit, and not stored', async t => {
  const { net } = await start(t, { MAX_FRAME_BYTES: '4KiB', MAX_MESSAGE_BYTES: '1000' })
  const { peer, limits } = await announced(t, net)
  assert.deepEqual([limits.maxFrameBytes, limits.maxMessageBytes], [4096, 1000])
  /** A message frame padded to `size` bytes with a field the table does not name. */
  const padded = (size: number, id: string): string => {
    const frame = { type: 'message', roomName: 'sizes', message: 'm', id, pad: '' }
    return JSON.stringify({ ...frame, pad: 'p'.repeat(size - Buffer.byteLength(JSON.stringify(frame))) })
  }
  assert.deepEqual([Buffer.byteLength(padded(4096, 'f1')), Buffer.byteLength(padded(4097, 'f2'))], [4096, 4097])
  peer.send(padded(4096, 'f1'))
  peer.send({ type: 'message', roomName: 'sizes', message: 'é'.repeat(500), id: 'm1' })
  peer.send({ type: 'message', roomName: 'sizes', message: 'é'.repeat(500) + 'x', id: 'm2' })
  // {"s":"..."} is 8 bytes of JSON around the string
  peer.send({ type: 'message', roomName: 'sizes', message: { s: 'x'.repeat(992) }, id: 'j1' })
  peer.send({ type: 'message', roomName: 'sizes', message: { s: 'x'.repeat(993) }, id: 'j2' })
  assert.equal((await peer.next(f => f.id === 'f1')).type, 'message-ack')
  assert.equal((await peer.next(f => f.id === 'm1')).type, 'message-ack')
  assert.equal((await peer.next(f => f.id === 'j1')).type, 'message-ack')
  for (const id of ['m2', 'j2']) {
    const err = await peer.next(f => f.id === id)
    assert.deepEqual([err.code, err.maxMessageBytes], ['MESSAGE_TOO_LARGE', 1000], id)
  }
  // last: a frame over MAX_FRAME_BYTES that the transport splits ends the connection (docs/protocol.md#error-codes)
  peer.send(padded(4097, 'f2'))
  const err = await peer.nextOfType('error')
  assert.deepEqual([err.code, err.maxFrameBytes], ['FRAME_TOO_LARGE', 4096])
  const reader = await announced(t, net)
  const { messages } = await reader.peer.syncAll('sizes')
  assert.deepEqual(messages.map(m => m.id), ['f1', 'm1', 'j1'])
})
