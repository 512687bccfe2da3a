import assert from 'node:assert/strict'
import { once } from 'node:events'
import { test } from 'node:test'
import Corestore from 'corestore'
import type { Testnet } from 'hyperdht/testnet.js'
import type { ChatRootPeer } from '../src/root-peer.js'
import { roomKeyPair, signAccess, signedRoomName, signMessage, type KeyPair } from 'root-peer-client/protocol'
import { Rooms } from '../src/storage/rooms.js'
import { rawPeer, rootPeer, teardown, testnet, tmpDir, type RawPeer } from './helpers.js'

// an empty signed room can be removed (EMPTY_ROOM_TTL, MAX_ROOMS) but its name stays signed: docs/security.md

interface Member {
  peer: RawPeer
  kp: KeyPair
  roomName: string
  access: string
}

let requests = 0

/** A member's connection, as frames only: what it signs is over this connection's challenge. */
async function connect (t: Parameters<typeof rawPeer>[0], net: Testnet): Promise<{ peer: RawPeer, rootKey: string, challenge: string }> {
  const peer = await rawPeer(t, net)
  const { publicKey, challenge } = await peer.nextOfType('root-peer-announcement')
  return { peer, rootKey: publicKey, challenge }
}

function member (conn: { peer: RawPeer, rootKey: string, challenge: string }, roomKey: string): Member {
  const kp = roomKeyPair(roomKey)
  const roomName = signedRoomName(kp.publicKey)
  return { peer: conn.peer, kp, roomName, access: signAccess(kp.secretKey, conn.rootKey, conn.challenge, roomName) }
}

async function ask (peer: RawPeer, frame: Record<string, unknown>): Promise<any> {
  const requestId = `q${requests++}`
  peer.send({ ...frame, requestId })
  return await peer.next(f => f.requestId === requestId)
}

async function register (m: Member): Promise<any> {
  return await ask(m.peer, { type: 'register-room', roomName: m.roomName, writerPublicKey: m.kp.publicKey.toString('hex'), signature: m.access })
}

async function write (m: Member, id: string, message: string): Promise<any> {
  m.peer.send({ type: 'message', roomName: m.roomName, message, id, signature: signMessage(m.kp.secretKey, m.roomName, id, message) })
  return await m.peer.next(f => f.id === id && f.roomName === m.roomName)
}

async function read (m: Member): Promise<any> {
  return await ask(m.peer, { type: 'sync-request', roomName: m.roomName, lastIndex: 0, signature: m.access })
}

/** What a stranger without the key gets for the name: each answer's code. */
async function probe (stranger: RawPeer, roomName: string): Promise<Record<string, string>> {
  const answers: Record<string, string> = {}
  const sync = await ask(stranger, { type: 'sync-request', roomName, lastIndex: 0 })
  answers.sync = sync.code ?? sync.type
  const follow = await ask(stranger, { type: 'follow', roomName })
  answers.follow = follow.code ?? follow.type
  if (follow.code === undefined) stranger.send({ type: 'unfollow', roomName })
  const reg = await ask(stranger, { type: 'register-room', roomName })
  answers.register = reg.code ?? reg.type
  const id = `junk-${requests++}`
  stranger.send({ type: 'message', roomName, message: 'junk', id })
  const msg = await stranger.next(f => f.id === id)
  answers.message = msg.code ?? msg.type
  return answers
}

const REFUSED = { sync: 'UNAUTHORIZED', follow: 'UNAUTHORIZED', register: 'UNAUTHORIZED', message: 'UNAUTHORIZED' }

function removals (rp: ChatRootPeer): Array<{ roomName: string, reason: string }> {
  const seen: Array<{ roomName: string, reason: string }> = []
  rp.on('room-removed', e => seen.push(e))
  return seen
}

async function removedNow (rp: ChatRootPeer, seen: Array<{ roomName: string }>, roomName: string): Promise<void> {
  while (!seen.some(e => e.roomName === roomName)) await once(rp, 'room-removed')
}

test('MAX_ROOMS: a stranger\'s register-room flood evicts the members\' empty signed room, but its name stays theirs and every acked message is served', async t => {
  const net = await testnet(t)
  const rp = await rootPeer(t, net, { maxRooms: 20, newRoomsPerMinute: 0, emptyRoomTtl: 0 })
  const seen = removals(rp)
  const m = member(await connect(t, net), 'the members\' room key')
  assert.equal((await register(m)).type, 'room-registered')
  const { peer: stranger } = await connect(t, net)
  assert.deepEqual(await probe(stranger, m.roomName), REFUSED, 'a live signed room')

  const started = Date.now()
  for (let i = 0; i < 20; i++) stranger.send({ type: 'register-room', roomName: `flood-${i}`, requestId: `flood-${i}` })
  for (let i = 0; i < 20; i++) assert.equal((await stranger.next(f => f.requestId === `flood-${i}`)).type, 'room-registered')
  await removedNow(rp, seen, m.roomName)
  const evictedAfter = Date.now() - started
  assert.equal(rp.roomCounts.total, 20)

  // gone, and nothing tells the stranger so: the same refusals as for the live room
  const probes = await probe(stranger, m.roomName)
  assert.deepEqual(probes, REFUSED, 'an evicted signed room')
  assert.equal(rp.roomCounts.total, 20, 'the stranger\'s frames created nothing')

  // the members write on the connection that had the room joined: it is joined again, signed under its key
  const acks = []
  for (let i = 0; i < 3; i++) acks.push(await write(m, `m${i}`, `ciphertext ${i}`))
  assert.deepEqual(acks.map(a => [a.type, a.messageIndex]), [['message-ack', 0], ['message-ack', 1], ['message-ack', 2]], JSON.stringify(acks))
  // and while the stranger floods on, the room has history: it never gives its place up again
  for (let i = 20; i < 40; i++) stranger.send({ type: 'register-room', roomName: `flood-${i}`, requestId: `flood-${i}` })
  for (let i = 20; i < 40; i++) await stranger.next(f => f.requestId === `flood-${i}`)
  assert.deepEqual(await probe(stranger, m.roomName), REFUSED, 'the room back, with history')

  const page = await read(m)
  assert.equal(page.firstIndex, 0)
  assert.deepEqual(page.messages.map((r: any) => [r.messageIndex, r.message]), [[0, 'ciphertext 0'], [1, 'ciphertext 1'], [2, 'ciphertext 2']])
  for (const r of page.messages) assert.equal(r.signature, signMessage(m.kp.secretKey, m.roomName, r.id, r.message), 'signatures kept')
  const served = page.messages.length
  console.log(`MAX_ROOMS=20: the members' empty signed room was evicted ${evictedAfter} ms into a flood of 20 register-room frames; stranger's probes after: ${JSON.stringify(probes)}; members' messages acked at ${acks.map(a => a.messageIndex).join(',')}, served ${served} of 3 from firstIndex ${page.firstIndex}; evictions ${rp.counters.roomsRemoved.evicted}, rooms ${rp.roomCounts.total}`)
})

test('EMPTY_ROOM_TTL: a followed empty signed room is not expired; an unfollowed one expires, stays signed, and takes its member\'s next messages (no TOO_MANY_ROOMS)', async t => {
  const net = await testnet(t)
  const ttl = 1000
  const rp = await rootPeer(t, net, { emptyRoomTtl: ttl, newRoomsPerMinute: 0 })
  const seen = removals(rp)
  const conn = await connect(t, net)
  const followed = member(conn, 'a followed room')
  const quiet = member(conn, 'a quiet room')
  assert.equal((await register(followed)).type, 'room-registered')
  assert.equal((await register(quiet)).type, 'room-registered')
  const live = await ask(conn.peer, { type: 'follow', roomName: followed.roomName, signature: followed.access })
  assert.equal(live.type, 'follow-live', JSON.stringify(live))
  const registeredAt = Date.now()

  await removedNow(rp, seen, quiet.roomName)
  const expiredAfter = Date.now() - registeredAt
  // a room registered after the quiet one expired, expired too: a sweep has passed with the followed room past its TTL
  const later = member(conn, 'a later room')
  assert.equal((await register(later)).type, 'room-registered')
  await removedNow(rp, seen, later.roomName)
  const unusedFor = Date.now() - registeredAt
  assert.ok(unusedFor > 2 * ttl)
  assert.equal(seen.some(e => e.roomName === followed.roomName), false, 'a followed room is in use')
  assert.equal(conn.peer.frames.some(f => f.type === 'follow-ended'), false)

  // the quiet room is gone: a stranger learns nothing, and cannot take the name
  const { peer: stranger } = await connect(t, net)
  const probes = await probe(stranger, quiet.roomName)
  assert.deepEqual(probes, REFUSED)

  // its member writes on, on the connection that had it joined
  const acks = []
  for (let i = 0; i < 3; i++) acks.push(await write(quiet, `q${i}`, `after expiry ${i}`))
  assert.deepEqual(acks.map(a => [a.type, a.code, a.messageIndex]), [['message-ack', undefined, 0], ['message-ack', undefined, 1], ['message-ack', undefined, 2]], JSON.stringify(acks))
  const page = await read(quiet)
  assert.deepEqual(page.messages.map((r: any) => [r.messageIndex, r.message]), acks.map((a, i) => [a.messageIndex, `after expiry ${i}`]))

  // the followed room's follower gets its first message live
  assert.equal((await write(followed, 'f0', 'live one')).messageIndex, 0)
  const delivered = await conn.peer.next(f => f.type === 'follow-messages' && f.roomName === followed.roomName)
  assert.deepEqual(delivered.messages.map((r: any) => r.message), ['live one'])
  console.log(`EMPTY_ROOM_TTL=${ttl} ms: the unfollowed signed room expired after ${expiredAfter} ms; the followed one was still there after ${unusedFor} ms unused (expired: ${rp.counters.roomsRemoved.expired}); stranger's probes of the expired name: ${JSON.stringify(probes)}; the member's next 3 messages acked at ${acks.map(a => a.messageIndex).join(',')}, ${page.messages.length} served`)
})

test('a signed message never goes into an unsigned room: a squatter\'s unsigned room hides no acked message of a member', async t => {
  const net = await testnet(t)
  await rootPeer(t, net)
  const conn = await connect(t, net)
  const m = member(conn, 'a squatted room')
  const { peer: stranger } = await connect(t, net)
  for (let i = 0; i < 2; i++) {
    stranger.send({ type: 'message', roomName: m.roomName, message: `squat ${i}`, id: `s${i}` })
    assert.equal((await stranger.next(f => f.id === `s${i}`)).type, 'message-ack')
  }
  // a member writing before its register-room: refused, not stored unsigned (where the signing would hide it)
  const early = await write(m, 'early', 'before register')
  assert.equal(early.code, 'UNAUTHORIZED', JSON.stringify(early))
  assert.equal((await register(m)).type, 'room-registered')
  const acks = []
  for (let i = 0; i < 3; i++) acks.push(await write(m, `m${i}`, `member ${i}`))
  const page = await read(m)
  const served = new Set(page.messages.map((r: any) => r.messageIndex))
  assert.deepEqual(acks.filter(a => !served.has(a.messageIndex)), [], 'every acked member message is served')
  assert.equal(page.firstIndex, 2)
  console.log(`a squatter's 2 unsigned messages first: a member's signed message before its register-room refused ${early.code}; after it, acks ${acks.map(a => a.messageIndex).join(',')}, all ${served.size} served from firstIndex ${page.firstIndex}`)
})

test('Rooms: a removed signed room leaves its key in the index; registered again by anyone, after a reload too, it is signed under that key', async t => {
  const store = new Corestore(await tmpDir(t))
  teardown(t, () => store.close())
  let rooms = new Rooms(store)
  await rooms.load(null)
  const kp = roomKeyPair('a room removed while empty')
  const name = signedRoomName(kp.publicKey)
  const key = kp.publicKey.toString('hex')
  await (await rooms.register(name, key)).stored
  await (await rooms.register('plain')).stored
  assert.deepEqual(await rooms.expireEmpty(Date.now() + 1000, n => n === 'plain'), [name], 'a followed room is not expired')
  assert.equal(await rooms.lookup(name), undefined)
  assert.equal(await rooms.writerKey(name), key)
  assert.equal(await rooms.writerKey('plain'), undefined)
  await rooms.close()

  rooms = new Rooms(store)
  await rooms.load(null)
  teardown(t, () => rooms.close())
  assert.equal(await rooms.writerKey(name), key, 'the key is in the store')
  // register without a key (the caller checked the proof against writerKey): back signed, not unsigned
  const { info } = await rooms.register(name)
  assert.equal(info.writerPublicKey, key)
  assert.equal(info.signedFrom, undefined)
  assert.equal((await rooms.lookup('plain'))?.writerPublicKey, undefined)
  const db = store.storage.rocks.session()
  const value = await db.get(`rooms/k/${name}`)
  await db.close()
  console.log(`a removed signed room's key in the index: ${`rooms/k/${name}`.length + value.byteLength} bytes (key and value), read back after a reload`)
})
