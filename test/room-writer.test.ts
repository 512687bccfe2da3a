import assert from 'node:assert/strict'
import { once } from 'node:events'
import { test, type TestContext } from 'node:test'
import Corestore from 'corestore'
import { createCounters, type Counters } from '../src/monitor/stats.js'
import { RootPeerError } from 'root-peer-client/protocol'
import { parseRecord } from '../src/protocol/protocol.js'
import { roomKeyPair, signMessage, signedRoomName } from 'root-peer-client/protocol'
import { Pruner } from '../src/storage/pruner.js'
import { RoomWriter, type WriteRequest } from '../src/storage/room-writer.js'
import { Rooms, coreName } from '../src/storage/rooms.js'
import { StorageHealth } from '../src/storage/storage-health.js'
import { teardown, tmpDir } from './helpers.js'

// The room writer on its own: a real Corestore and Rooms in a temp dir, no network, no cluster.

const PEER = 'cd'.repeat(32)

interface Setup {
  store: Corestore
  rooms: Rooms
  writer: RoomWriter
  storage: StorageHealth
  counters: Counters
  stored: Array<{ roomName: string, messageIndex: number, messageCount: number, totalMessages: number, id?: string }>
  appendErrors: Array<{ roomName: string, err: unknown }>
}

async function setup (t: TestContext, { closing = false, pruner = null as Pruner | null, rooms: given = null as Rooms | null, store: givenStore = null as Corestore | null } = {}): Promise<Setup> {
  const dir = await tmpDir(t)
  const store = givenStore ?? new Corestore(dir)
  if (givenStore === null) teardown(t, () => store.close())
  const rooms = given ?? new Rooms(store)
  if (given === null) {
    teardown(t, () => rooms.close())
    await rooms.load(null)
  }
  const storage = new StorageHealth({ dir, writeBuffer: 0, reopen: async () => {} })
  teardown(t, () => storage.close())
  const counters = createCounters()
  const writer = new RoomWriter({
    rooms: () => rooms,
    storage,
    walSync: null,
    cluster: () => null,
    pruner,
    counters,
    closing: () => closing,
    onLatency: null
  })
  const stored: Setup['stored'] = []
  writer.on('message-stored', e => stored.push(e))
  const appendErrors: Setup['appendErrors'] = []
  writer.on('append-error', e => appendErrors.push(e))
  return { store, rooms, writer, storage, counters, stored, appendErrors }
}

function request (roomName: string, message: unknown, extra: Partial<WriteRequest> = {}): WriteRequest {
  return { roomName, message, messageJson: JSON.stringify(message), fromPeer: PEER, ...extra }
}

/** The messages stored in the room's core, read from a session of its own. */
async function storedMessages (store: Corestore, name: string): Promise<unknown[]> {
  const core = store.get({ name: coreName(name) })
  await core.ready()
  const out = []
  for (let i = 0; i < core.length; i++) out.push(parseRecord((await core.get(i))!)?.message)
  await core.close()
  return out
}

async function refusal (promise: Promise<unknown>): Promise<RootPeerError> {
  const err = await promise.then(() => null, (e: unknown) => e)
  assert.ok(err instanceof RootPeerError, `refused with a RootPeerError, got ${String(err)}`)
  return err
}

test('RoomWriter: records queued one after another, and concurrent writes, get consecutive indices and one message-stored each', async t => {
  const { store, rooms, writer, counters, stored } = await setup(t)
  await rooms.register('r')
  // as a connection does: the next record is queued once the one before is, its result awaited later
  const results = []
  for (let i = 0; i < 50; i++) results.push((await writer.queue(request('r', `m${i}`))).result)
  const indices = (await Promise.all(results)).map(r => r.index)
  assert.deepEqual(indices, Array.from({ length: 50 }, (_, i) => i), 'appended in the order queued')

  const concurrent = await Promise.all(Array.from({ length: 20 }, (_, i) => writer.write(request('r', `c${i}`, { id: `c${i}` }))))
  assert.deepEqual(concurrent.map(r => r.index).sort((a, b) => a - b), Array.from({ length: 20 }, (_, i) => 50 + i))
  assert.ok(concurrent.every(r => !r.duplicate))

  assert.equal(stored.length, 70)
  assert.deepEqual(stored.slice(0, 50).map(e => e.messageIndex), indices)
  assert.ok(stored.every(e => e.roomName === 'r'))
  assert.deepEqual(stored.at(-1), { ...stored.at(-1), messageCount: 70, totalMessages: 70 })
  assert.equal(counters.messagesStored, 70)
  assert.equal((await rooms.lookup('r'))!.messageCount, 70)
  assert.equal(rooms.totalMessages, 70)
  const messages = await storedMessages(store, 'r')
  assert.deepEqual(messages.slice(0, 50), Array.from({ length: 50 }, (_, i) => `m${i}`))
  for (const { index } of concurrent) assert.match(String(messages[index]), /^c\d+$/)
})

test('RoomWriter: an id stored twice, later or in flight, gives the first index as a duplicate and stores nothing more', async t => {
  const { store, rooms, writer, counters, stored } = await setup(t)
  await rooms.register('r')
  assert.deepEqual(await writer.write(request('r', 'first', { id: 'a' })), { index: 0, duplicate: false })
  assert.deepEqual(await writer.write(request('r', 'other', { id: 'b' })), { index: 1, duplicate: false })
  assert.deepEqual(await writer.write(request('r', 'resent', { id: 'a' })), { index: 0, duplicate: true })

  const racing = await Promise.all([writer.write(request('r', 'x', { id: 'x' })), writer.write(request('r', 'x again', { id: 'x' }))])
  assert.deepEqual(racing, [{ index: 2, duplicate: false }, { index: 2, duplicate: true }])

  assert.equal(counters.duplicates, 2)
  assert.equal(counters.messagesStored, 3)
  assert.deepEqual(stored.map(e => e.id), ['a', 'b', 'x'], 'no message-stored for a duplicate')
  assert.deepEqual(await storedMessages(store, 'r'), ['first', 'other', 'x'])
})

test('RoomWriter: a write to a room that is not registered (or was removed) is refused with UNKNOWN_ROOM, not TOO_MANY_ROOMS, and creates nothing', async t => {
  const { rooms, writer, stored } = await setup(t)
  const err = await refusal(writer.write(request('gone', 'hello', { id: '1' })))
  assert.equal(err.code, 'UNKNOWN_ROOM')
  assert.equal(((await rooms.lookup('gone')) !== undefined), false)
  assert.equal(stored.length, 0)
})

test('RoomWriter: a failed append emits append-error, refuses with STORAGE_ERROR, marks storage failed and stores nothing', async t => {
  const { store, rooms, writer, storage, counters, stored, appendErrors } = await setup(t)
  await rooms.register('r')
  await writer.write(request('r', 'kept', { id: 'kept' }))
  const room = rooms.getIfOpen('r')!
  await room.core.close()
  rooms.release(room)

  const err = await refusal(writer.write(request('r', 'lost', { id: 'lost' })))
  assert.equal(err.code, 'STORAGE_ERROR')
  assert.equal(appendErrors.length, 1)
  assert.equal(appendErrors[0].roomName, 'r')
  assert.ok(appendErrors[0].err instanceof Error)
  assert.equal(storage.failure, err, 'every later message gets the same refusal until storage recovers')
  assert.equal(stored.length, 1)
  assert.equal(counters.messagesStored, 1)
  assert.equal((await rooms.lookup('r'))!.messageCount, 1)
  assert.deepEqual(await storedMessages(store, 'r'), ['kept'])
})

test('RoomWriter: a failed append while shutting down is STORAGE_ERROR without marking storage failed', async t => {
  const { rooms, writer, storage, appendErrors } = await setup(t, { closing: true })
  await rooms.register('r')
  await writer.write(request('r', 'kept'))
  const room = rooms.getIfOpen('r')!
  await room.core.close()
  rooms.release(room)
  const err = await refusal(writer.write(request('r', 'lost')))
  assert.equal(err.code, 'STORAGE_ERROR')
  assert.equal(appendErrors.length, 1)
  assert.equal(storage.failure, null)
})

test('RoomWriter: a signed room refuses unsigned, forged and non-string records with UNAUTHORIZED, and stores a signed one', async t => {
  const { store, rooms, writer, stored } = await setup(t)
  const { publicKey, secretKey } = roomKeyPair('members only')
  const name = signedRoomName(publicKey)
  const key = publicKey.toString('hex')
  await rooms.register(name, key)

  assert.equal((await refusal(writer.write(request(name, 'unsigned', { id: 'u' })))).code, 'UNAUTHORIZED')
  const forged = signMessage(secretKey, name, 'f', 'something else')
  assert.equal((await refusal(writer.write(request(name, 'forged', { id: 'f', signature: forged })))).code, 'UNAUTHORIZED')
  assert.equal((await refusal(writer.write(request(name, { not: 'a string' }, { id: 'o' })))).code, 'UNAUTHORIZED')

  const signature = signMessage(secretKey, name, 's', 'signed')
  assert.deepEqual(await writer.write(request(name, 'signed', { id: 's', signature })), { index: 0, duplicate: false })
  assert.deepEqual(stored.map(e => e.id), ['s'])
  assert.deepEqual(await storedMessages(store, name), ['signed'])
})

test('RoomWriter: with a pruner, a write that takes a room over its retention bound has it pruned', { timeout: 30_000 }, async t => {
  const dir = await tmpDir(t)
  const store = new Corestore(dir)
  teardown(t, () => store.close())
  const rooms = new Rooms(store)
  teardown(t, () => rooms.close())
  await rooms.load(null)
  const pruner = new Pruner({ messages: 3, bytes: 0, maxAgeMs: 0 }, () => rooms)
  teardown(t, () => pruner.close())
  const { writer } = await setup(t, { pruner, rooms, store })
  await rooms.register('r')
  for (let i = 0; i < 5; i++) await writer.write(request('r', `m${i}`))
  while (((await rooms.lookup('r'))!.firstIndex ?? 0) < 2) await once(pruner, 'room-pruned')
  assert.equal((await rooms.lookup('r'))!.firstIndex, 2, 'the newest 3 kept')
  assert.equal((await rooms.lookup('r'))!.messageCount, 5, 'indices keep their meaning')
  assert.equal(rooms.prunedMessages, 2)
})
