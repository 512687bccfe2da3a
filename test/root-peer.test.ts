import assert from 'node:assert/strict'
import { once } from 'node:events'
import { test } from 'node:test'
import { PROTOCOL_VERSION, DEFAULT_LIMITS } from '../src/protocol/protocol.js'
import { RawPeer, rawPeer, rootPeer, teardown, testnet } from './helpers.js'

test('announcement is the first frame, with version, public key and limits', async t => {
  const net = await testnet(t)
  const rp = await rootPeer(t, net)
  const peer = await rawPeer(t, net)
  const first = await peer.next()
  assert.equal(first.type, 'root-peer-announcement')
  assert.equal(first.version, PROTOCOL_VERSION)
  assert.equal(first.publicKey, rp.publicKey!.toString('hex'))
  assert.equal(first.publicKey, peer.conn!.remotePublicKey.toString('hex'))
  assert.deepEqual(first.limits, { ...DEFAULT_LIMITS })
})

test('register-room then message written at once: the message lands in the room and is acked at index 0', async t => {
  const net = await testnet(t)
  const rp = await rootPeer(t, net)
  const peer = await rawPeer(t, net)
  await peer.nextOfType('root-peer-announcement')
  const registered = once(rp, 'room-registered')
  // both frames go out in one tick: the daemon must handle them strictly in order
  peer.send({ type: 'register-room', roomName: 'ordering' })
  peer.send({ type: 'message', roomName: 'ordering', message: 'ciphertext-0', id: 'm0' })
  peer.send({ type: 'sync-request', roomName: 'ordering', lastIndex: 0 })
  const ack = await peer.nextOfType('message-ack')
  assert.deepEqual(ack, { type: 'message-ack', roomName: 'ordering', id: 'm0', messageIndex: 0 })
  const sync = await peer.nextOfType('sync-response')
  assert.equal(sync.totalMessages, 1)
  assert.equal(sync.messages.length, 1)
  const [m] = sync.messages
  assert.equal(m.message, 'ciphertext-0')
  assert.equal(m.id, 'm0')
  assert.equal(m.messageIndex, 0)
  assert.equal(m.fromPeer, peer.swarm.keyPair.publicKey.toString('hex'))
  assert.equal(m.senderPublicKey, peer.swarm.keyPair.publicKey.toString('hex'))
  assert.equal(typeof m.storedAt, 'number')
  const [event] = await registered
  assert.equal(event.roomId, 'ordering')
  assert.equal(event.peerId, peer.swarm.keyPair.publicKey.toString('hex'))
})

test('acks carry consecutive indices; a message without id is stored and not acked', async t => {
  const net = await testnet(t)
  await rootPeer(t, net)
  const peer = await rawPeer(t, net)
  for (let i = 0; i < 5; i++) peer.send({ type: 'message', roomName: 'acks', message: `c${i}`, id: `id-${i}` })
  peer.send({ type: 'message', roomName: 'acks', message: 'no-id' })
  peer.send({ type: 'message', roomName: 'acks', message: 'c5', id: 'id-5' })
  const indices: number[] = []
  for (let i = 0; i < 6; i++) {
    const ack = await peer.next(f => f.type === 'message-ack' && f.id === `id-${i}`)
    indices.push(ack.messageIndex)
  }
  assert.deepEqual(indices, [0, 1, 2, 3, 4, 6])
  const { messages } = await peer.syncAll('acks')
  assert.deepEqual(messages.map(m => m.message), ['c0', 'c1', 'c2', 'c3', 'c4', 'no-id', 'c5'])
  assert.equal(messages[5].id, undefined)
  assert.equal(peer.frames.filter(f => f.type === 'message-ack').length, 0, 'no ack for the message without id')
})

test('paging through 2,000 messages: limits, nextIndex, hasMore, byte cap', async t => {
  const net = await testnet(t)
  await rootPeer(t, net, { limits: { maxPageBytes: 64 * 1024 }, messagesPerSecond: 0, bytesPerSecond: 0 })
  const peer = await rawPeer(t, net)
  const payload = 'x'.repeat(200)
  for (let i = 0; i < 2000; i++) peer.send({ type: 'message', roomName: 'paging', message: `${i}:${payload}`, id: `p${i}` })
  await peer.next(f => f.type === 'message-ack' && f.id === 'p1999', 30_000)

  const byCount = await peer.syncAll('paging', 0, 300)
  assert.equal(byCount.messages.length, 2000)
  assert.deepEqual(byCount.messages.map(m => m.messageIndex), Array.from({ length: 2000 }, (_, i) => i))
  for (const page of byCount.pages) {
    assert.equal(page.totalMessages, 2000)
    assert.ok(page.messages.length <= 300)
    assert.equal(page.nextIndex, page.messages.at(-1).messageIndex + 1)
    assert.equal(page.hasMore, page.nextIndex < 2000)
  }
  // byte cap: 64 KiB pages hold far fewer than 300 records of ~350 bytes
  assert.ok(byCount.pages.length > 2000 / 300 + 1, `pages: ${byCount.pages.length}`)
  for (const page of byCount.pages) assert.ok(JSON.stringify(page).length < 64 * 1024 + 1024)

  // from the middle, inclusive
  const fromMiddle = await peer.syncAll('paging', 1500)
  assert.equal(fromMiddle.messages.length, 500)
  assert.equal(fromMiddle.messages[0].messageIndex, 1500)
  assert.equal(fromMiddle.messages[0].message, `1500:${payload}`)

  // past the end: an empty page
  peer.send({ type: 'sync-request', roomName: 'paging', lastIndex: 5000 })
  const past = await peer.nextOfType('sync-response')
  assert.deepEqual([past.messages.length, past.totalMessages, past.hasMore], [0, 2000, false])
})

test('sync-request limit: without one a page holds defaultPageMessages (500); a limit over maxPageMessages is lowered to exactly 1,000, though more would fit in maxPageBytes', async t => {
  const net = await testnet(t)
  await rootPeer(t, net, { messagesPerSecond: 0, bytesPerSecond: 0 })
  const peer = await rawPeer(t, net)
  for (let i = 0; i < 1500; i++) peer.send({ type: 'message', roomName: 'small', message: `${i}`, id: `${i}` })
  await peer.next(f => f.type === 'message-ack' && f.id === '1499', 30_000)

  peer.send({ type: 'sync-request', roomName: 'small', lastIndex: 0, requestId: 'default' })
  const byDefault = await peer.next(f => f.requestId === 'default')
  assert.deepEqual([byDefault.messages.length, byDefault.nextIndex, byDefault.hasMore], [DEFAULT_LIMITS.defaultPageMessages, 500, true])

  peer.send({ type: 'sync-request', roomName: 'small', lastIndex: 0, limit: 1_000_000, requestId: 'huge' })
  const lowered = await peer.next(f => f.requestId === 'huge')
  assert.deepEqual([lowered.messages.length, lowered.nextIndex, lowered.hasMore], [DEFAULT_LIMITS.maxPageMessages, 1000, true])
  assert.deepEqual(lowered.messages.map((m: any) => m.messageIndex), Array.from({ length: 1000 }, (_, i) => i))
  // the entries of all 1,500 would fit in maxPageBytes: the page stopped at the limit, not at the byte cap
  const bytes = Buffer.byteLength(JSON.stringify(lowered.messages))
  assert.ok(bytes * 1.5 < DEFAULT_LIMITS.maxPageBytes, `${bytes} bytes for 1,000 entries`)
})

test('an unknown room answers an empty page and is not created by being asked', async t => {
  const net = await testnet(t)
  const rp = await rootPeer(t, net)
  const peer = await rawPeer(t, net)
  peer.send({ type: 'sync-request', roomName: 'nobody-here', lastIndex: 0, requestId: 7 })
  const page = await peer.nextOfType('sync-response')
  assert.deepEqual(page, { type: 'sync-response', roomName: 'nobody-here', messages: [], totalMessages: 0, nextIndex: 0, hasMore: false, firstIndex: 0, requestId: 7 })
  assert.equal(rp.stats().totalRooms, 0)
})

test('every kind of bad frame answers an error with a code and stores nothing; the connection stays usable but for a frame over MAX_FRAME_BYTES', async t => {
  const net = await testnet(t)
  const rp = await rootPeer(t, net)
  const peer = await rawPeer(t, net)
  await peer.nextOfType('root-peer-announcement')
  peer.send({ type: 'message', roomName: 'good', message: 'kept', id: 'good-0' })
  await peer.nextOfType('message-ack')

  const cases: Array<[string, string | object, string]> = [
    ['not JSON', 'this is not json {', 'BAD_FRAME'],
    ['JSON array', '[1,2,3]', 'BAD_FRAME'],
    ['JSON string', '"hello"', 'BAD_FRAME'],
    ['no type', { roomName: 'good' }, 'BAD_FRAME'],
    ['type not a string', { type: 42 }, 'BAD_FRAME'],
    ['unknown type', { type: 'delete-everything', roomName: 'good' }, 'UNKNOWN_TYPE'],
    ['prototype type', { type: '__proto__' }, 'UNKNOWN_TYPE'],
    ['register without room', { type: 'register-room' }, 'BAD_ROOM_NAME'],
    ['room name a number', { type: 'register-room', roomName: 12 }, 'BAD_ROOM_NAME'],
    ['room name a path', { type: 'register-room', roomName: '../x' }, 'BAD_ROOM_NAME'],
    ['room name with control characters', { type: 'message', roomName: 'a\u0000b', message: 'x' }, 'BAD_ROOM_NAME'],
    ['room name too long', { type: 'register-room', roomName: 'a'.repeat(129) }, 'BAD_ROOM_NAME'],
    ['message missing', { type: 'message', roomName: 'good', id: 'bad-1' }, 'BAD_FRAME'],
    ['message null', { type: 'message', roomName: 'good', message: null, id: 'bad-2' }, 'BAD_FRAME'],
    ['id wrongly typed', { type: 'message', roomName: 'good', message: 'x', id: 5 }, 'BAD_FRAME'],
    ['message too large', { type: 'message', roomName: 'good', message: 'y'.repeat(70 * 1024), id: 'bad-3' }, 'MESSAGE_TOO_LARGE'],
    ['negative index', { type: 'sync-request', roomName: 'good', lastIndex: -1 }, 'BAD_FRAME'],
    ['non-integer index', { type: 'sync-request', roomName: 'good', lastIndex: 1.5 }, 'BAD_FRAME'],
    ['index as a string', { type: 'sync-request', roomName: 'good', lastIndex: '0' }, 'BAD_FRAME'],
    ['limit zero', { type: 'sync-request', roomName: 'good', lastIndex: 0, limit: 0 }, 'BAD_FRAME'],
    ['bad requestId', { type: 'sync-request', roomName: 'good', lastIndex: 0, requestId: { a: 1 } }, 'BAD_FRAME']
  ]
  for (const [name, frame, code] of cases) {
    peer.send(frame)
    const err = await peer.nextOfType('error')
    assert.equal(err.code, code, name)
    assert.equal(typeof err.message, 'string', name)
    if (typeof frame === 'object' && 'id' in frame && typeof frame.id === 'string') assert.equal(err.id, frame.id, `${name}: error names the id`)
  }
  // usable afterwards, and nothing but the one good message was stored
  const { messages } = await peer.syncAll('good')
  assert.deepEqual(messages.map(m => m.message), ['kept'])
  assert.equal(rp.stats().totalRooms, 1)
  assert.equal(rp.stats().totalMessages, 1)
  assert.equal(peer.closed, false)
  // a frame over MAX_FRAME_BYTES is refused as soon as its length is read, and ends the connection
  peer.send({ type: 'message', roomName: 'good', message: 'z'.repeat(300 * 1024), id: 'bad-4' })
  assert.equal((await peer.nextOfType('error')).code, 'FRAME_TOO_LARGE')
  await new Promise(resolve => peer.closed ? resolve(null) : peer.conn!.once('close', resolve))
  assert.equal(rp.stats().totalMessages, 1)
})

test('two clients see each other\'s messages', async t => {
  const net = await testnet(t)
  await rootPeer(t, net)
  const alice = await rawPeer(t, net)
  const bob = await rawPeer(t, net)
  alice.send({ type: 'register-room', roomName: 'shared' })
  bob.send({ type: 'register-room', roomName: 'shared' })
  alice.send({ type: 'message', roomName: 'shared', message: 'from alice', id: 'a1' })
  await alice.nextOfType('message-ack')
  bob.send({ type: 'message', roomName: 'shared', message: 'from bob', id: 'b1' })
  await bob.nextOfType('message-ack')
  const seenByAlice = await alice.syncAll('shared')
  const seenByBob = await bob.syncAll('shared')
  assert.deepEqual(seenByAlice.messages.map(m => m.message), ['from alice', 'from bob'])
  assert.deepEqual(seenByBob.messages, seenByAlice.messages)
  assert.equal(seenByBob.messages[0].fromPeer, alice.swarm.keyPair.publicKey.toString('hex'))
  assert.equal(seenByBob.messages[1].fromPeer, bob.swarm.keyPair.publicKey.toString('hex'))
})

test('register-room with a requestId is answered; without one it is silent, as the seed\'s clients expect', async t => {
  const net = await testnet(t)
  const rp = await rootPeer(t, net)
  const peer = await rawPeer(t, net)
  await peer.nextOfType('root-peer-announcement')
  peer.send({ type: 'register-room', roomId: 'legacy-id' })
  peer.send({ type: 'register-room', roomName: 'with-request', requestId: 'r1' })
  const answer = await peer.nextOfType('room-registered')
  assert.deepEqual(answer, { type: 'room-registered', roomName: 'with-request', messageCount: 0, requestId: 'r1' })
  assert.equal(peer.frames.length, 0, 'nothing answered the register-room without requestId')
  assert.equal(rp.stats().totalRooms, 2, 'roomId is accepted as the room name')
})

test('a 64-hex room name is announced on its own topic, which clients join directly', async t => {
  const net = await testnet(t)
  await rootPeer(t, net)
  const topic = Buffer.alloc(32, 7).toString('hex')
  const member = await rawPeer(t, net)
  member.send({ type: 'register-room', roomName: topic, requestId: 1 })
  await member.nextOfType('room-registered')
  // a new peer that only knows the room topic finds the root peer on it
  const stranger = new RawPeer(net)
  teardown(t, () => stranger.close())
  await stranger.connect(Buffer.from(topic, 'hex'))
  const first = await stranger.next()
  assert.equal(first.type, 'root-peer-announcement')
})
