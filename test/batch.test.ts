import assert from 'node:assert/strict'
import { test } from 'node:test'
import type { Testnet } from 'hyperdht/testnet.js'
import { RootPeerClient } from 'root-peer-client'
import { roomKeyPair, signAccess, signMessage, signedRoomName } from 'root-peer-client/protocol'
import { DEFAULT_LIMITS, decodeFrame } from '../src/protocol/protocol.js'
import { Outbox } from '../packages/client/src/outbox.js'
import { NO_RATES, RawPeer, bootstrapEnv, client, daemon, rawPeer, rootPeer, teardown, testnet, tmpDir } from './helpers.js'

/** A raw peer whose announcement is kept in `announcement`. */
async function peerOf (t: Parameters<typeof rawPeer>[0], net: Testnet): Promise<RawPeer> {
  const peer = await rawPeer(t, net)
  peer.announcement = await peer.nextOfType('root-peer-announcement')
  return peer
}

function batch (roomName: string, messages: object[], requestId: string): object {
  return { type: 'message-batch', roomName, messages, requestId }
}

async function ackOf (peer: RawPeer, requestId: string): Promise<any> {
  const frame = await peer.next(f => f.requestId === requestId)
  assert.equal(frame.type, 'message-batch-ack', JSON.stringify(frame))
  return frame
}

test('fast, no network: a batch decodes to its messages, each refused on its own for its size or a number it would alter, at its own position', () => {
  const limits = { ...DEFAULT_LIMITS, maxMessageBytes: 20 }
  const text = '{"type":"message-batch","roomName":"r","meta":{"x":[{"message":1e999}]},"messages":[' +
    '{"id":"a","message":{"message":1e999}},' + // a key `message` inside a message: its number is the message's own
    '{"id":"b","message":[1,2]},' +
    '{"message":12345678901234567890,"id":"c"},' +
    '{"id":"d","message":"far too long a text for this"},' +
    '{"id":"e","message":1e999,"message":"kept"}' + // a key repeated keeps its last value
    '],"requestId":7}'
  const frame = decodeFrame(Buffer.from(text), limits, 10)
  assert.equal(frame.type, 'message-batch')
  if (frame.type !== 'message-batch') return
  assert.equal(frame.requestId, 7)
  assert.deepEqual(frame.messages.map(m => [m.id, m.refused?.code ?? null]), [['a', 'BAD_FRAME'], ['b', null], ['c', 'BAD_FRAME'], ['d', 'MESSAGE_TOO_LARGE'], ['e', null]])
  assert.match(frame.messages[2].refused!.message, /12345678901234567890 cannot be stored exactly/)
  assert.equal(frame.messages[4].message, 'kept')
  assert.equal(frame.size, frame.messages.reduce((sum, m) => sum + m.size, 0))
  // not offered: an unknown type, as to a root peer that predates it
  assert.throws(() => decodeFrame(Buffer.from(text), limits, 0), { code: 'UNKNOWN_TYPE' })
  assert.throws(() => decodeFrame(Buffer.from(text), limits, 4), { code: 'BATCH_TOO_LARGE' })
})

test('fast, no network: a root peer that announces no frame cap and a huge batch gets batches of at most 1,000 messages and 1 MiB from the client\'s outbox', async () => {
  const frames: any[] = []
  const outbox = new Outbox()
  outbox.connected(frame => frames.push(frame), { maxFrameBytes: 0, messagesPerSecond: 0, bytesPerSecond: 0 }, 1e9)
  const body = 'x'.repeat(1000)
  for (let i = 0; i < 3000; i++) outbox.add('room', body, `id-${i}`).catch(() => {})
  await new Promise(resolve => setImmediate(resolve))
  const sent = frames.flatMap(f => f.type === 'message-batch' ? f.messages.map((m: any) => m.id) : [f.id])
  assert.deepEqual(sent, Array.from({ length: 3000 }, (_, i) => `id-${i}`), 'every message once, in order')
  const largest = Math.max(...frames.map(f => Buffer.byteLength(JSON.stringify(f))))
  const most = Math.max(...frames.map(f => f.messages?.length ?? 1))
  console.log(`3,000 messages of 1 KB to a root peer announcing no cap: ${frames.length} frames, the largest ${largest} bytes and ${most} messages`)
  assert.ok(largest <= 1024 * 1024, `${largest} bytes`)
  assert.ok(most <= 1000, `${most} messages`)
  assert.ok(frames.length < 3000, 'still batched')
})

test('the announcement offers batches; a batch is stored in its order, each id once: inside the batch, across batches, and against message frames', async t => {
  const net = await testnet(t)
  await rootPeer(t, net)
  const peer = await peerOf(t, net)
  assert.deepEqual(peer.announcement.batch, { maxMessages: 100 })
  const room = 'batch-order'

  peer.send(batch(room, ['a0', 'a1', 'a2', 'a3', 'a4'].map(id => ({ id, message: `text of ${id}` })), 'b1'))
  const first = await ackOf(peer, 'b1')
  assert.equal(first.roomName, room)
  assert.deepEqual(first.acks, [0, 1, 2, 3, 4].map(i => ({ id: `a${i}`, messageIndex: i })))

  peer.send({ type: 'message', roomName: room, id: 'p1', message: 'plain' })
  assert.equal((await peer.nextOfType('message-ack')).messageIndex, 5)

  peer.send(batch(room, [
    { id: 'a2', message: 'again' }, // stored by the first batch
    { id: 'p1', message: 'again' }, // stored by a message frame
    { id: 'b0', message: 'new' },
    { id: 'b0', message: 'twice in one batch' },
    { id: 'b1', message: 'new too' }
  ], 'b2'))
  assert.deepEqual((await ackOf(peer, 'b2')).acks, [
    { id: 'a2', messageIndex: 2, duplicate: true },
    { id: 'p1', messageIndex: 5, duplicate: true },
    { id: 'b0', messageIndex: 6 },
    { id: 'b0', messageIndex: 6, duplicate: true },
    { id: 'b1', messageIndex: 7 }
  ])
  // and a message frame after a batch is deduplicated against it
  peer.send({ type: 'message', roomName: room, id: 'b1', message: 'once more' })
  assert.deepEqual(await peer.nextOfType('message-ack'), { type: 'message-ack', roomName: room, id: 'b1', messageIndex: 7, duplicate: true })

  const { messages } = await peer.syncAll(room)
  assert.deepEqual(messages.map(m => [m.messageIndex, m.id, m.message]), [
    [0, 'a0', 'text of a0'], [1, 'a1', 'text of a1'], [2, 'a2', 'text of a2'], [3, 'a3', 'text of a3'], [4, 'a4', 'text of a4'],
    [5, 'p1', 'plain'], [6, 'b0', 'new'], [7, 'b1', 'new too']
  ])
})

test('a batch partly refused: a message over MAX_MESSAGE_BYTES, a number it would alter, a bad signature in a signed room are refused with their codes, the rest acked and stored', async t => {
  const net = await testnet(t)
  const rp = await rootPeer(t, net, { maxMessageBytes: 1024 })
  const peer = await peerOf(t, net)
  const room = 'batch-partial'
  peer.send(batch(room, [
    { id: 'ok-1', message: 'fine' },
    { id: 'big', message: 'x'.repeat(2000) },
    { id: 'ok-2', message: { n: 1.5, list: [1, 2, 3] } },
    { id: 'ok-2b', message: 'placeholder' },
    { id: 'ok-3', message: 'fine too' }
  ], 'p1'))
  const acks = (await ackOf(peer, 'p1')).acks
  assert.deepEqual(acks[0], { id: 'ok-1', messageIndex: 0 })
  assert.equal(acks[1].code, 'MESSAGE_TOO_LARGE')
  assert.equal(acks[1].id, 'big')
  assert.equal(acks[1].maxMessageBytes, 1024)
  assert.deepEqual(acks[2], { id: 'ok-2', messageIndex: 1 })
  assert.deepEqual(acks[3], { id: 'ok-2b', messageIndex: 2 })
  assert.deepEqual(acks[4], { id: 'ok-3', messageIndex: 3 })

  // a number a double cannot hold, in one message of the batch only: written by hand, JSON.stringify cannot
  peer.send(`{"type":"message-batch","roomName":"${room}","requestId":"p2","messages":[{"id":"n-ok","message":{"n":12}},{"id":"n-bad","message":{"n":1e999}},{"id":"n-ok2","message":[7]}]}`)
  const numbers = (await ackOf(peer, 'p2')).acks
  assert.deepEqual(numbers[0], { id: 'n-ok', messageIndex: 4 })
  assert.equal(numbers[1].code, 'BAD_FRAME')
  assert.match(numbers[1].message, /1e999 cannot be stored exactly/)
  assert.deepEqual(numbers[2], { id: 'n-ok2', messageIndex: 5 })
  assert.deepEqual((await peer.syncAll(room)).messages.map(m => m.id), ['ok-1', 'ok-2', 'ok-2b', 'ok-3', 'n-ok', 'n-ok2'])

  // a signed room: one message with another key's signature is refused UNAUTHORIZED, the others are stored
  const kp = roomKeyPair('batch room key')
  const other = roomKeyPair('not the room key')
  const signed = signedRoomName(kp.publicKey)
  const { publicKey, challenge } = peer.announcement
  peer.send({ type: 'register-room', roomName: signed, writerPublicKey: kp.publicKey.toString('hex'), signature: signAccess(kp.secretKey, publicKey, challenge, signed), requestId: 'reg' })
  assert.equal((await peer.next(f => f.requestId === 'reg')).type, 'room-registered')
  const item = (id: string, key = kp.secretKey): object => ({ id, message: `ct ${id}`, signature: signMessage(key, signed, id, `ct ${id}`) })
  peer.send(batch(signed, [item('s1'), item('s2', other.secretKey), { id: 's3', message: 'unsigned' }, item('s4')], 's'))
  const signedAcks = (await ackOf(peer, 's')).acks
  assert.deepEqual(signedAcks[0], { id: 's1', messageIndex: 0 })
  assert.equal(signedAcks[1].code, 'UNAUTHORIZED')
  assert.equal(signedAcks[2].code, 'UNAUTHORIZED')
  assert.deepEqual(signedAcks[3], { id: 's4', messageIndex: 1 })
  const access = signAccess(kp.secretKey, publicKey, challenge, signed)
  peer.send({ type: 'sync-request', roomName: signed, lastIndex: 0, requestId: 'read', signature: access })
  assert.deepEqual((await peer.next(f => f.requestId === 'read')).messages.map((m: any) => m.id), ['s1', 's4'])
  assert.equal(rp.counters.errors.UNAUTHORIZED, 2)
  assert.equal(rp.counters.errors.MESSAGE_TOO_LARGE, 1)
})

test('every bad batch shape is answered with an error frame and a code, and nothing of it is stored', async t => {
  const net = await testnet(t)
  await rootPeer(t, net, { maxBatchMessages: 5 })
  const peer = await peerOf(t, net)
  assert.deepEqual(peer.announcement.batch, { maxMessages: 5 })
  const room = 'batch-shapes'
  const ok = { id: 'fine', message: 'fine' }
  const cases: Array<[string, object, string]> = [
    ['messages not an array', { messages: { id: 'x', message: 'y' } }, 'BAD_FRAME'],
    ['messages missing', {}, 'BAD_FRAME'],
    ['an empty batch', { messages: [] }, 'BAD_FRAME'],
    ['over maxMessages', { messages: [1, 2, 3, 4, 5, 6].map(i => ({ id: `m${i}`, message: 'm' })) }, 'BATCH_TOO_LARGE'],
    ['a message without an id', { messages: [ok, { message: 'no id' }] }, 'BAD_FRAME'],
    ['an id that is not a string', { messages: [ok, { id: 7, message: 'numeric id' }] }, 'BAD_FRAME'],
    ['a message that is null', { messages: [ok, { id: 'null', message: null }] }, 'BAD_FRAME'],
    ['an element that is not an object', { messages: [ok, 'just text'] }, 'BAD_FRAME'],
    ['a malformed signature', { messages: [ok, { id: 'sig', message: 'm', signature: 'abc' }] }, 'BAD_FRAME'],
    ['a bad roomName', { roomName: 'no spaces allowed', messages: [ok] }, 'BAD_ROOM_NAME']
  ]
  for (const [what, fields, code] of cases) {
    const requestId = `shape-${what}`
    peer.send({ type: 'message-batch', roomName: room, requestId, ...fields })
    const answer = await peer.next(f => f.requestId === requestId)
    assert.equal(answer.type, 'error', what)
    assert.equal(answer.code, code, what)
    assert.equal(answer.requestType, 'message-batch', what)
    if (code === 'BATCH_TOO_LARGE') assert.equal(answer.maxBatchMessages, 5)
  }
  const { pages } = await peer.syncAll(room)
  assert.equal(pages[0].totalMessages, 0)
})

test('the budget refuses a batch whole (RATE_LIMITED, nothing charged, nothing stored); a batch is at most a burst of RATE_MESSAGES', async t => {
  const net = await testnet(t)
  const rp = await rootPeer(t, net, { messagesPerSecond: 2 })
  const peer = await peerOf(t, net)
  // 2 a second is a burst of 20: a batch carries at most that, so each of its messages pays a token
  assert.deepEqual(peer.announcement.batch, { maxMessages: 20 })
  const room = 'batch-budget'
  const items = (prefix: string, n: number): object[] => Array.from({ length: n }, (_, i) => ({ id: `${prefix}${i}`, message: `${prefix}${i}` }))
  peer.send(batch(room, items('a', 15), 'first'))
  assert.equal((await ackOf(peer, 'first')).acks.length, 15)
  peer.send(batch(room, items('b', 10), 'second'))
  const refused = await peer.next(f => f.requestId === 'second')
  assert.equal(refused.type, 'error')
  assert.equal(refused.code, 'RATE_LIMITED')
  assert.ok(refused.retryAfterMs > 0 && refused.retryAfterMs <= 5000, String(refused.retryAfterMs))
  // the refused batch took no token: the 5 left still take a batch of 5
  peer.send(batch(room, items('c', 5), 'third'))
  assert.equal((await ackOf(peer, 'third')).acks.length, 5)
  const { messages } = await peer.syncAll(room)
  assert.equal(messages.length, 20)
  assert.ok(messages.every(m => !m.id.startsWith('b')))
  assert.equal(rp.counters.framesReceived['message-batch'], 3)
})

test('an old client sees nothing new: message frames and their acks as before, the limits unchanged; MAX_BATCH_MESSAGES=0 offers no batch and refuses one as an unknown type', async t => {
  const net = await testnet(t)
  const rp = await rootPeer(t, net)
  const peer = await peerOf(t, net)
  assert.deepEqual(Object.keys(peer.announcement).sort(), ['access', 'batch', 'challenge', 'limits', 'publicKey', 'relay', 'type', 'version'])
  assert.deepEqual(peer.announcement.limits, { ...DEFAULT_LIMITS })
  peer.send({ type: 'message', roomName: 'old-style', id: 'm1', message: 'hi' })
  assert.deepEqual(await peer.nextOfType('message-ack'), { type: 'message-ack', roomName: 'old-style', id: 'm1', messageIndex: 0 })
  peer.send({ type: 'message', roomName: 'old-style', message: 'no id, no answer' })
  peer.send({ type: 'sync-request', roomName: 'old-style', requestId: 's' })
  assert.equal((await peer.next(f => f.requestId === 's')).totalMessages, 2)
  assert.deepEqual(peer.frames, [])
  assert.equal(rp.counters.framesSent['message-batch-ack'], undefined)
  await rp.close()

  const off = await rootPeer(t, net, { maxBatchMessages: 0 })
  const old = new RawPeer(net)
  teardown(t, () => old.close())
  await old.connectTo(off.publicKey!.toString('hex'))
  const announcement = await old.nextOfType('root-peer-announcement')
  assert.equal(announcement.batch, undefined)
  old.send(batch('not-offered', [{ id: 'x', message: 'y' }], 'nb'))
  const answer = await old.next(f => f.requestId === 'nb')
  assert.equal(answer.code, 'UNKNOWN_TYPE')
})

test('RootPeerClient sends many messages at once as batches, each promise with its own index; against MAX_BATCH_MESSAGES=0 as message frames', async t => {
  const net = await testnet(t)
  const rp = await rootPeer(t, net, { messagesPerSecond: 0, bytesPerSecond: 0 })
  const c = await client(t, net)
  assert.deepEqual(c.announcement?.batch, { maxMessages: 100 })
  const sent = await Promise.all(Array.from({ length: 250 }, (_, i) => c.sendMessage('client-batch', `message ${i}`, { id: `id-${i}` })))
  assert.deepEqual(sent.map(a => [a.id, a.messageIndex, a.duplicate]), sent.map((_, i) => [`id-${i}`, i, false]))
  assert.equal(rp.counters.framesReceived['message-batch'], 3)
  assert.equal(rp.counters.framesReceived.message, undefined)
  // one refused on its own: the others resolve, it rejects with its code
  const results = await Promise.allSettled([
    c.sendMessage('client-batch', 'fine', { id: 'id-250' }),
    c.sendMessage('client-batch', 'x'.repeat(70_000), { id: 'too-big' }),
    c.sendMessage('client-batch', 'fine', { id: 'id-0' })
  ])
  assert.deepEqual(results[0], { status: 'fulfilled', value: { id: 'id-250', messageIndex: 250, duplicate: false } })
  assert.equal(results[1].status, 'rejected')
  assert.equal((results[1] as PromiseRejectedResult).reason.code, 'MESSAGE_TOO_LARGE')
  assert.deepEqual(results[2], { status: 'fulfilled', value: { id: 'id-0', messageIndex: 0, duplicate: true } })
  assert.equal(c.counters.framesRejected, 0)
  await c.close()
  await rp.close()

  const off = await rootPeer(t, net, { maxBatchMessages: 0, messagesPerSecond: 0, bytesPerSecond: 0 })
  const plain = await client(t, net, { rootPublicKey: off.publicKey! })
  assert.equal(plain.announcement?.batch, undefined)
  const acks = await Promise.all(Array.from({ length: 30 }, (_, i) => plain.sendMessage('client-plain', `m ${i}`, { id: `p-${i}` })))
  assert.deepEqual(acks.map(a => a.messageIndex), acks.map((_, i) => i))
  assert.equal(off.counters.framesReceived.message, 30)
  assert.equal(off.counters.framesReceived['message-batch'], undefined)
})

test('RootPeerClient resends its outbox after a reconnect in batches', async t => {
  const net = await testnet(t)
  const storageDir = await tmpDir(t)
  const first = await rootPeer(t, net, { storageDir })
  const key = first.publicKey!.toString('hex')
  await first.close()
  // the messages wait in the outbox while no root peer is there
  const c = new RootPeerClient({ bootstrap: net.bootstrap, dhtHost: '127.0.0.1', rootPublicKey: key, requestTimeout: 30_000 })
  teardown(t, () => c.close())
  const sending = Array.from({ length: 120 }, (_, i) => c.sendMessage('resent', `m ${i}`, { id: `r-${i}` }))
  assert.equal(c.unacked, 120)
  const again = await rootPeer(t, net, { storageDir, messagesPerSecond: 0, bytesPerSecond: 0 })
  const acks = await Promise.all(sending)
  assert.deepEqual(acks.map(a => a.messageIndex), acks.map((_, i) => i))
  assert.equal(again.counters.framesReceived['message-batch'], 2)
  assert.equal(again.counters.framesReceived.message, undefined)
})

test('RootPeerClient: a batch refused whole (STORAGE_FULL) refuses each of its messages, and they are resent together as one batch', async t => {
  const net = await testnet(t)
  // the first batch fits under the cap (checked before it), every later one is refused whole
  const rp = await rootPeer(t, net, { maxStorageBytes: 1, messagesPerSecond: 0, bytesPerSecond: 0 })
  const c = await client(t, net)
  const first = await Promise.all(Array.from({ length: 10 }, (_, i) => c.sendMessage('full', `m ${i}`)))
  assert.deepEqual(first.map(a => a.messageIndex), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
  const refusals: any[] = []
  c.on('error-frame', f => refusals.push(f))
  const pending = Array.from({ length: 10 }, (_, i) => c.sendMessage('full', `later ${i}`))
  for (const p of pending) p.catch(() => {})
  // refused, then resent after the 1 s backoff: one batch each time, never a message frame
  while (refusals.length < 2) await new Promise(resolve => setTimeout(resolve, 50))
  assert.ok(refusals.every(f => f.code === 'STORAGE_FULL' && f.requestType === 'message-batch'), JSON.stringify(refusals))
  assert.equal(c.unacked, 10)
  assert.equal(rp.counters.framesReceived['message-batch'], 3)
  assert.equal(rp.counters.framesReceived.message, undefined)
})

test('RootPeerClient rejects a message-batch-ack for no batch it sent, and malformed ones, as frame-rejected, and goes on', async t => {
  const net = await testnet(t)
  const rp = await rootPeer(t, net)
  const c = await client(t, net)
  const rejected: any[] = []
  c.on('frame-rejected', r => rejected.push(r))
  const bad = [
    { type: 'message-batch-ack', roomName: 'r', acks: [{ id: 'never-sent', messageIndex: 3 }], requestId: 'batch-77' },
    { type: 'message-batch-ack', roomName: 'r', acks: 'all of them' },
    { type: 'message-batch-ack', roomName: 'r', acks: [] },
    { type: 'message-batch-ack', roomName: 'r', acks: [{ id: 'x' }] },
    { type: 'message-batch-ack', roomName: 'r', acks: [{ id: 'x', messageIndex: -1 }] },
    { type: 'message-batch-ack', roomName: 'r', acks: [{ id: 'x', code: 'lower case' }] },
    { type: 'message-batch-ack', acks: [{ id: 'x', messageIndex: 1 }] }
  ]
  for (const peer of rp.peers.values()) for (const frame of bad) peer.send(frame)
  while (rejected.length < bad.length) await new Promise(resolve => setTimeout(resolve, 20))
  assert.ok(rejected.every(r => r.type === 'message-batch-ack'), JSON.stringify(rejected))
  assert.match(rejected[0].reason, /no batch sent/)
  assert.equal(c.counters.framesRejected, bad.length)
  // and the client goes on: its messages are acked
  assert.equal((await c.sendMessage('after-junk', 'still fine')).messageIndex, 0)
})

test('batches across kill -9: every acked message is stored at its acked index, and resending every batch stores each id once', async t => {
  const net = await testnet(t)
  const storage = await tmpDir(t)
  const env = { STORAGE_DIR: storage, DHT_BOOTSTRAP: bootstrapEnv(net), DHT_HOST: '127.0.0.1', STATS_INTERVAL: '0', ...NO_RATES }
  const BATCHES = 150
  const SIZE = 100
  const room = 'batch-crash'
  const batches = Array.from({ length: BATCHES }, (_, b) => Array.from({ length: SIZE }, (_, i) => ({ id: `b${b}-m${i}`, message: `${'x'.repeat(200)} ${b}/${i}` })))
  const acked = new Map<string, number>()
  const record = (frame: any): void => {
    for (const ack of frame.acks) {
      assert.equal(ack.code, undefined, JSON.stringify(ack))
      const before = acked.get(ack.id)
      if (before !== undefined) assert.equal(ack.messageIndex, before, `${ack.id} acked at two indices`)
      acked.set(ack.id, ack.messageIndex)
    }
  }

  let d = daemon(t, [], env)
  const key = await d.ready()
  const writer = new RawPeer(net)
  teardown(t, () => writer.close())
  await writer.connectTo(key)
  await writer.nextOfType('root-peer-announcement')
  // every batch in flight at once; killed once a few have been acked, while the rest are being stored
  batches.forEach((messages, b) => writer.send(batch(room, messages, `crash-${b}`)))
  for (let b = 0; b < 5; b++) record(await writer.nextOfType('message-batch-ack', 60_000))
  d.child.kill('SIGKILL')
  assert.equal((await d.exited).signal, 'SIGKILL')
  // what reached the writer before the kill
  await new Promise(resolve => setTimeout(resolve, 200))
  for (const frame of writer.frames.splice(0)) if (frame.type === 'message-batch-ack') record(frame)
  await writer.close()
  const ackedBeforeKill = acked.size
  assert.ok(ackedBeforeKill >= 5 * SIZE && ackedBeforeKill < BATCHES * SIZE, `${ackedBeforeKill} acked before the kill`)

  d = daemon(t, [], env)
  assert.equal(await d.ready(), key)
  const reader = new RawPeer(net)
  teardown(t, () => reader.close())
  await reader.connectTo(key)
  await reader.nextOfType('root-peer-announcement')
  const stored = (await reader.syncAll(room, 0, 1000)).messages
  const at = new Map(stored.map(m => [m.id, m.messageIndex]))
  assert.equal(at.size, stored.length, 'an id stored twice')
  // nothing acked that is not stored, at its index
  for (const [id, index] of acked) assert.equal(at.get(id), index, `${id} acked at ${index}`)
  // each batch's stored messages are in its order
  for (const messages of batches) {
    const indices = messages.map(m => at.get(m.id)).filter(i => i !== undefined)
    assert.deepEqual(indices, [...indices].sort((x, y) => x - y))
  }

  // the outbox goes again, whole: what was stored is acked duplicate at its index, the rest stored once
  batches.forEach((messages, b) => reader.send(batch(room, messages, `again-${b}`)))
  for (let b = 0; b < BATCHES; b++) {
    const frame = await reader.next(f => f.requestId === `again-${b}`, 60_000)
    for (const ack of frame.acks) {
      const before = at.get(ack.id)
      if (before !== undefined) assert.deepEqual(ack, { id: ack.id, messageIndex: before, duplicate: true })
    }
    record(frame)
  }
  const final = (await reader.syncAll(room, 0, 1000)).messages
  assert.equal(final.length, BATCHES * SIZE)
  assert.equal(new Set(final.map(m => m.id)).size, BATCHES * SIZE)
  for (const m of final) assert.equal(acked.get(m.id), m.messageIndex)
  console.log(`batch kill -9: ${ackedBeforeKill} of ${BATCHES * SIZE} acked before the kill, ${stored.length} stored at restart, ${final.length} after the resend, each once`)
})
