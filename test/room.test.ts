import assert from 'node:assert/strict'
import { test, type TestContext } from 'node:test'
import Corestore from 'corestore'
import fc from 'fast-check'
import { encodeRecord, pageEntry } from '../src/protocol/protocol.js'
import { DEDUP_ID_CHARS, DEDUP_WINDOW, DedupIds, Room } from '../src/storage/room.js'
import { roomKeyPair, signedRoomName } from 'root-peer-client/protocol'
import { Rooms, coreName } from '../src/storage/rooms.js'
import { RoomIndex } from '../src/storage/room-index.js'
import { IdSnapshot } from '../src/storage/id-snapshot.js'
import type { PersistentState, RoomState } from '../src/storage/state-file.js'
import { teardown, tmpDir } from './helpers.js'

// Fast tests of the room writer and the room table on their own: a real Corestore in a temp dir, no network.

const PEER = 'ab'.repeat(32)

/** A Corestore in a fresh temp dir, closed (then the dir removed) after the test. */
async function newStore (t: TestContext, dir?: string): Promise<{ store: Corestore, dir: string }> {
  const at = dir ?? await tmpDir(t)
  const store = new Corestore(at)
  teardown(t, () => store.close())
  await store.ready()
  return { store, dir: at }
}

function roomInfo (name: string): RoomState {
  return { name, messageCount: 0, createdAt: 0, lastActivity: 0, byteLength: 0 }
}

/** A Room on the store's core `name`, closed after the test. */
async function openRoom (t: TestContext, store: Corestore, name = 'r', onBatch: (() => void) | null = null, info = roomInfo(name)): Promise<Room> {
  const core = store.get({ name: coreName(name) })
  await core.ready()
  const room = new Room(name, core, info, onBatch)
  teardown(t, () => room.close())
  return room
}

/** A stored block as the root peer writes it. */
function block (message: unknown, id?: string): Buffer {
  return Buffer.from(encodeRecord({ message, storedAt: 1, fromPeer: PEER, senderPublicKey: PEER, ...(id === undefined ? {} : { id }) }, JSON.stringify(message)))
}

/** Rooms over `store`, loaded, closed after the test. */
async function newRooms (t: TestContext, store: Corestore, opts: { maxOpen?: number, onBatch?: () => void } = {}, saved: PersistentState | null = null): Promise<Rooms> {
  const rooms = new Rooms(store, opts)
  teardown(t, () => rooms.close())
  await rooms.load(saved)
  return rooms
}

/** The rooms the index holds, read from the store. */
async function indexed (store: Corestore): Promise<RoomState[]> {
  const index = new RoomIndex(store, () => [])
  const list: RoomState[] = []
  for await (const record of index.rooms()) list.push(record)
  await index.close()
  return list
}

async function listAll (rooms: Rooms): Promise<RoomState[]> {
  const list: RoomState[] = []
  for await (const info of rooms.list()) list.push(info)
  return list
}

/** Stores `n` messages in room `name` as the root peer does: get, append, count, release. */
async function storeMessages (rooms: Rooms, name: string, n: number): Promise<number[]> {
  const room = (await rooms.get(name, { create: true }))!
  const indices = []
  try {
    for (let i = 0; i < n; i++) {
      const b = block(`${name}-${i}`)
      indices.push(await room.append(b))
      rooms.recordAppend(room, b.byteLength)
    }
  } finally {
    rooms.release(room)
  }
  return indices
}

// ---------- Room: the group-commit writer ----------

test('Room.append: appends in flight resolve with consecutive indices in call order, in far fewer core appends', async t => {
  const { store } = await newStore(t)
  let batches = 0
  const room = await openRoom(t, store, 'r', () => { batches++ })
  for (let i = 0; i < 10; i++) await room.append(block(`first-${i}`))
  assert.equal(batches, 10, 'one append at a time: one batch each')
  const base = room.core.length
  assert.equal(base, 10)

  // nextIndex is exact at every moment: as appends are queued, and as the core grows under them
  const seen: number[] = []
  room.core.on('append', () => seen.push(room.nextIndex))
  const N = 3000
  const order: number[] = []
  const appends: Array<Promise<number>> = []
  for (let i = 0; i < N; i++) {
    const p = room.append(block(`m${i}`))
    p.then(index => order.push(index), () => {})
    appends.push(p)
    assert.equal(room.nextIndex, base + i + 1)
  }
  assert.equal(room.core.length, base, 'nothing appended synchronously')
  // one more wave, queued from inside the first resolution while later batches are in flight
  let extra: Array<Promise<number>> = []
  const firstDone = appends[0].then(index => {
    assert.equal(room.nextIndex, base + N)
    extra = Array.from({ length: 100 }, (_, i) => room.append(block(`x${i}`)))
    assert.equal(room.nextIndex, base + N + 100)
    return index
  })
  const indices = await Promise.all(appends)
  await firstDone
  const extraIndices = await Promise.all(extra)
  assert.deepEqual(indices, Array.from({ length: N }, (_, i) => base + i))
  assert.deepEqual(extraIndices, Array.from({ length: 100 }, (_, i) => base + N + i))
  assert.deepEqual(order, indices, 'resolved in call order')
  assert.ok(batches - 10 <= 10, `${batches - 10} core appends for ${N + 100} blocks`)
  assert.ok(seen.length > 0 && seen.every(n => n === base + N || n === base + N + 100), `nextIndex seen at each core append: ${seen.join()}`)
  assert.equal(room.nextIndex, room.core.length)
  assert.equal(room.core.length, base + N + 100)
  // each block at the index its append resolved with
  for (const i of [0, 1, 777, N - 1]) assert.deepEqual(await room.core.get(base + i), block(`m${i}`))
  assert.deepEqual(await room.core.get(base + N + 99), block('x99'))
})

test('Room.barrier waits for the appends queued before it; settled for all of them', async t => {
  const { store } = await newStore(t)
  const room = await openRoom(t, store)
  await room.barrier()
  await room.settled()
  const done = new Set<number>()
  const first = Array.from({ length: 500 }, (_, i) => room.append(block(i)).then(index => { done.add(index); return index }))
  const barrier = room.barrier()
  const later = Array.from({ length: 500 }, (_, i) => room.append(block(500 + i)).then(index => { done.add(index); return index }))
  await barrier
  for (let i = 0; i < 500; i++) assert.ok(done.has(i), `append ${i} done before the barrier resolved`)
  await room.settled()
  assert.equal(done.size, 1000)
  assert.equal(room.core.length, 1000)
  assert.equal(room.nextIndex, 1000)
  await Promise.all([...first, ...later])
})

test('Room.append: a failed append rejects its batch; storeOnce forgets the id it could not store', async t => {
  const { store } = await newStore(t)
  const room = await openRoom(t, store)
  await room.idsReady()
  assert.deepEqual(await room.storeOnce('ok', block('ok', 'ok')), { index: 0, duplicate: false })
  await room.core.close()
  const failed = await Promise.allSettled([room.append(block('a')), room.storeOnce('lost', block('b', 'lost'))])
  assert.deepEqual(failed.map(r => r.status), ['rejected', 'rejected'])
  assert.equal(room.idCount, 1, 'the id whose append failed is not held: a resend stores it')
  await room.settled()
})

// ---------- Room: exactly-once by id ----------

test('Room.storeOnce: a second store of one id, even in flight, resolves with the first index as a duplicate', async t => {
  const { store } = await newStore(t)
  const room = await openRoom(t, store)
  assert.throws(() => room.storeOnce('a', block('a', 'a')), /storeOnce before idsReady/)
  const loading = room.idsReady()
  assert.ok(loading instanceof Promise)
  await loading
  assert.equal(room.idsReady(), null, 'loaded: nothing to wait for')

  const results = await Promise.all([
    room.storeOnce('a', block('a', 'a')),
    room.storeOnce('b', block('b', 'b')),
    room.storeOnce('a', block('a again', 'a')),
    room.storeOnce('c', block('c', 'c')),
    room.storeOnce('b', block('b again', 'b'))
  ])
  assert.deepEqual(results, [
    { index: 0, duplicate: false },
    { index: 1, duplicate: false },
    { index: 0, duplicate: true },
    { index: 2, duplicate: false },
    { index: 1, duplicate: true }
  ])
  assert.equal(room.core.length, 3)
  assert.deepEqual(await room.storeOnce('a', block('a', 'a')), { index: 0, duplicate: true })
  assert.deepEqual(await room.storeOnce('d', block('d', 'd')), { index: 3, duplicate: false })
  assert.equal(room.idCount, 4)
  assert.equal(room.idChars, 4)
  // appends without an id do not take part
  assert.equal(await room.append(block('no id')), 4)
  assert.deepEqual(await room.storeOnce('e', block('e', 'e')), { index: 5, duplicate: false })

  // forgetIds: a stored id stores again
  room.forgetIds()
  await room.settled()
  assert.equal(room.idCount, 0)
  assert.deepEqual(await room.storeOnce('a', block('a', 'a')), { index: 6, duplicate: false })
  assert.deepEqual(await room.storeOnce('a', block('a', 'a')), { index: 6, duplicate: true })
})

/** Counts the blocks the room's core reads from now on (a page's read batches, and Hypercore's own gets, read through its storage). */
function countGets (room: Room): { n: number } {
  const reads = { n: 0 }
  const storage = room.core.state.storage
  const read = storage.read.bind(storage)
  storage.read = () => {
    const rx = read()
    const getBlock = rx.getBlock.bind(rx)
    rx.getBlock = (index: number) => {
      reads.n++
      return getBlock(index)
    }
    return rx
  }
  return reads
}

test('Room ids survive a reopen: a snapshot written as the room closes, and only the records past it read back (newest index of an id, none below signedFrom)', async t => {
  const { store } = await newStore(t)
  const room = await openRoom(t, store)
  await room.idsReady()
  for (const id of ['a', 'b', 'c']) await room.storeOnce(id, block(id, id))
  await room.append(Buffer.from('not a record'))
  await room.append(block('no id'), null)
  // pruned below 1: a is stored again, at its newest index
  room.forgetIdsBelow(1)
  assert.deepEqual(await room.storeOnce('a', block('a2', 'a')), { index: 5, duplicate: false })
  await room.close()

  const again = await openRoom(t, store)
  const reads = countGets(again)
  assert.equal(again.idCount, 0, 'not read before idsReady')
  assert.equal(await again.idsReady(), undefined)
  assert.equal(reads.n, 0, 'after a clean close: the snapshot only, no record read')
  assert.equal(again.idCount, 3, 'a, b, c')
  assert.deepEqual(await again.storeOnce('a', block('a', 'a')), { index: 5, duplicate: true }, 'its newest index')
  assert.deepEqual(await again.storeOnce('b', block('b', 'b')), { index: 1, duplicate: true })
  // blocks appended past the snapshot that no close noted (as a kill -9 leaves them): read back from the core
  await again.core.append([block('t', 't'), block('long', 'x'.repeat(200)), Buffer.from('not a record')])
  await again.close()

  const crashed = await openRoom(t, store)
  const tail = countGets(crashed)
  await crashed.idsReady()
  assert.equal(tail.n, 3, 'the 3 records past the snapshot')
  assert.equal(crashed.idCount, 4, 'a, b, c, t; no id of more than MAX_ID characters')
  assert.deepEqual(await crashed.storeOnce('t', block('t', 't')), { index: 6, duplicate: true })
  assert.deepEqual(await crashed.storeOnce('x'.repeat(200), block('long', 'x'.repeat(200))), { index: 9, duplicate: false })
  await crashed.close()

  // a signed room: ids stored below signedFrom are a stranger's, not its members'
  const info = { ...roomInfo('r'), signedFrom: 2 }
  const signed = await openRoom(t, store, 'r', null, info)
  await signed.idsReady()
  assert.deepEqual(await signed.storeOnce('a', block('a', 'a')), { index: 5, duplicate: true })
  assert.deepEqual(await signed.storeOnce('b', block('b', 'b')), { index: 10, duplicate: false })
  assert.deepEqual(await signed.storeOnce('c', block('c', 'c')), { index: 2, duplicate: true })
})

test('Room ids across sleeps: a new id reads only the snapshot\'s state and filter, a resend reads its entries; the segments are merged, under the bounds, past the filter\'s capacity', async t => {
  const { store } = await newStore(t)
  const key = async (): Promise<string> => {
    const core = store.get({ name: coreName('r') })
    await core.ready()
    const k = core.key!.toString('hex')
    await core.close()
    return k
  }
  const prefix = `ids/${await key()}/e/`
  const segments = async (): Promise<number> => {
    const db = store.storage.rocks.session()
    let n = 0
    for await (const _ of db.iterator({ gte: prefix, lt: prefix + '\xff' })) n++
    await db.close()
    return n
  }
  const entryReads = { n: 0 }
  const entries = IdSnapshot.prototype.entries
  IdSnapshot.prototype.entries = async function (core) {
    entryReads.n++
    return await entries.call(this, core)
  }
  t.after(() => { IdSnapshot.prototype.entries = entries })

  const first = await openRoom(t, store)
  await first.idsReady()
  for (let i = 0; i < 100; i++) await first.storeOnce(`i${i}`, block(i, `i${i}`))
  await first.close()
  assert.equal(await segments(), 1)

  // woken five times by a new id each: the filter says no, nothing more is read; each sleep adds a segment
  for (let k = 0; k < 5; k++) {
    const room = await openRoom(t, store)
    const reads = countGets(room)
    assert.ok(room.idsReady(`n${k}`) instanceof Promise)
    await room.idsReady(`n${k}`)
    assert.equal(room.idsReady(`n${k + 1}`), null, 'read: nothing to wait for')
    assert.deepEqual(await room.storeOnce(`n${k}`, block(k, `n${k}`)), { index: 100 + k, duplicate: false })
    assert.deepEqual([reads.n, entryReads.n, room.idCount], [0, 0, 1])
    await room.close()
  }
  assert.equal(await segments(), 6)

  // a resend: the entries are read, and it is a duplicate with its index, whichever segment holds it
  const resend = await openRoom(t, store)
  await resend.idsReady('i5')
  assert.equal(entryReads.n, 1)
  assert.equal(resend.idCount, 105)
  assert.deepEqual(await resend.storeOnce('i5', block(5, 'i5')), { index: 5, duplicate: true })
  assert.deepEqual(await resend.storeOnce('n3', block(3, 'n3')), { index: 103, duplicate: true })
  await resend.close()
  assert.equal(await segments(), 6, 'nothing stored: nothing written')
  const again = await openRoom(t, store)
  await again.idsReady('i6')
  assert.deepEqual(await again.storeOnce('i6', block(6, 'i6')), { index: 6, duplicate: true })
  assert.deepEqual(await again.storeOnce('r', block(0, 'r')), { index: 105, duplicate: false })
  await again.close()
  assert.equal(await segments(), 1, 'read whole and a new id: written whole')

  // past the filter's capacity (twice the ids written whole): merged as the room sleeps
  const many = await openRoom(t, store)
  await many.idsReady('m0')
  for (let i = 0; i < 100; i++) await many.storeOnce(`m${i}`, block(i, `m${i}`))
  await many.close()
  assert.equal(await segments(), 2)
  const more = await openRoom(t, store)
  await more.idsReady('x')
  for (let i = 0; i < 10; i++) await more.storeOnce(`x${i}`, block(i, `x${i}`))
  await more.close()
  assert.equal(await segments(), 1, '106 + 100 + 10 entries past a capacity of 212: merged')
  const all = await openRoom(t, store)
  await all.idsReady()
  assert.equal(all.idCount, 216)
  assert.deepEqual(await all.storeOnce('i0', block(0, 'i0')), { index: 0, duplicate: true })
  assert.deepEqual(await all.storeOnce('x9', block(0, 'x9')), { index: 215, duplicate: true })
})

test('Room ids: a room never closed (a kill -9) reads the records past its last snapshot; a snapshot past the blocks held (a truncated core) is not used', async t => {
  const { store } = await newStore(t)
  const room = await openRoom(t, store)
  await room.idsReady()
  for (const id of ['a', 'b']) await room.storeOnce(id, block(id, id))
  await room.close()
  const open = await openRoom(t, store)
  await open.idsReady()
  for (const id of ['c', 'd', 'e']) await open.storeOnce(id, block(id, id))
  await open.append(block('no id'), null)

  // a second room on the core while the first is open: what a restart after a kill -9 finds
  const killed = new Room('r', open.core, open.info)
  const reads = countGets(killed)
  await killed.idsReady()
  assert.equal(reads.n, 4, 'the records past the snapshot (2 .. 5), not the history')
  assert.equal(killed.idCount, 5)
  for (const [id, index] of [['a', 0], ['c', 2], ['e', 4]] as const) assert.deepEqual(await killed.storeOnce(id, block(id, id)), { index, duplicate: true })
  await open.close()

  // a snapshot naming blocks that are gone (the core truncated, as a mirror's fork does): the records are read instead
  const core = store.get({ name: coreName('r') })
  await core.ready()
  await (core as any).truncate(3)
  await core.close()
  const cut = await openRoom(t, store)
  await cut.idsReady()
  assert.equal(cut.idCount, 3, 'a, b, c: not d or e')
  assert.deepEqual(await cut.storeOnce('d', block('d', 'd')), { index: 3, duplicate: false })
  assert.deepEqual(await cut.storeOnce('c', block('c', 'c')), { index: 2, duplicate: true })
})

test('Room ids are bounded: at most DEDUP_WINDOW ids, the oldest forgotten, in memory and when read back', async t => {
  const { store } = await newStore(t)
  const room = await openRoom(t, store)
  await room.idsReady()
  const N = DEDUP_WINDOW + 1
  const results = await Promise.all(Array.from({ length: N }, (_, i) => room.storeOnce(`id${i}`, block(i, `id${i}`))))
  assert.ok(results.every((r, i) => r.index === i && !r.duplicate))
  assert.equal(room.idCount, DEDUP_WINDOW)
  assert.deepEqual(await room.storeOnce('id1', block(1, 'id1')), { index: 1, duplicate: true })
  assert.deepEqual(await room.storeOnce('id0', block(0, 'id0')), { index: N, duplicate: false }, 'forgotten: stored again')
  assert.equal(room.idCount, DEDUP_WINDOW)
  await room.close()

  // from its snapshot: the newest DEDUP_WINDOW ids (2 .. N-1, then 0), so id1 is forgotten and id0 is at its new index
  const again = await openRoom(t, store)
  await again.idsReady()
  assert.equal(again.idCount, DEDUP_WINDOW)
  assert.deepEqual(await again.storeOnce('id0', block(0, 'id0')), { index: N, duplicate: true })
  assert.deepEqual(await again.storeOnce('id2', block(2, 'id2')), { index: 2, duplicate: true })
  assert.deepEqual(await again.storeOnce('id1', block(1, 'id1')), { index: N + 1, duplicate: false })
})

test('Room ids: nothing written for them as messages are stored; a snapshot as the room sleeps, without pruned ids; a removed room takes it with it', async t => {
  const { store } = await newStore(t)
  const rooms = await newRooms(t, store, { maxOpen: 1 })
  await rooms.register('gone')
  await rooms.register('other')
  const room = (await rooms.get('gone'))!
  await room.idsReady()
  const key = room.core.key!.toString('hex')
  const keys = async (): Promise<number> => {
    const db = store.storage.rocks.session()
    let n = 0
    for await (const _ of db.iterator({ gte: `ids/${key}/`, lt: `ids/${key}/\xff` })) n++
    await db.close()
    return n
  }
  for (const id of ['a', 'b', 'c', 'd']) {
    const b = block(id, id)
    await room.storeOnce(id, b)
    rooms.recordAppend(room, b.byteLength)
  }
  room.forgetIdsBelow(2)
  assert.equal(room.idCount, 2, 'c, d')
  assert.deepEqual(await room.storeOnce('a', block('a', 'a')), { index: 4, duplicate: false })
  rooms.recordAppend(room, 1)
  assert.equal(await keys(), 0, 'the write path writes no id')
  rooms.release(room)

  // asleep (another room takes its place): its snapshot's state, filter and one segment
  rooms.release((await rooms.get('other'))!)
  assert.equal(await keys(), 3)
  const back = (await rooms.get('gone'))!
  const reads = countGets(back)
  await back.idsReady()
  assert.equal(reads.n, 0)
  assert.deepEqual([back.idCount, (await back.storeOnce('b', block('b', 'b'))).duplicate, (await back.storeOnce('c', block('c', 'c'))).index], [3, false, 2])
  rooms.recordAppend(back, 1)
  rooms.release(back)
  assert.equal(await rooms.remove('gone', { clear: true }), true)
  assert.equal(await keys(), 0)
})

test('Room ids are bounded: at most DEDUP_ID_CHARS characters of ids', async t => {
  const { store } = await newStore(t)
  const room = await openRoom(t, store)
  await room.idsReady()
  const id = (i: number): string => String(i).padStart(128, '-')
  const fit = DEDUP_ID_CHARS / 128
  await Promise.all(Array.from({ length: fit + 1 }, (_, i) => room.storeOnce(id(i), block(i, id(i)))))
  assert.equal(room.idCount, fit)
  assert.equal(room.idChars, DEDUP_ID_CHARS)
  assert.deepEqual(await room.storeOnce(id(1), block(1, id(1))), { index: 1, duplicate: true })
  assert.deepEqual(await room.storeOnce(id(0), block(0, id(0))), { index: fit + 1, duplicate: false })
  assert.ok(room.idChars <= DEDUP_ID_CHARS)

  // the table itself: both bounds, and characters counted back on delete
  const ids = new DedupIds()
  ids.set('x'.repeat(DEDUP_ID_CHARS - 1), 0)
  ids.set('ab', 1)
  assert.deepEqual([...ids.keys()], ['ab'])
  assert.equal(ids.chars, 2)
  ids.set('ab', 5)
  assert.equal(ids.chars, 2, 'setting a held id again adds nothing')
  assert.equal(ids.get('ab'), 5)
  ids.set('c', 2)
  ids.delete('ab')
  assert.equal(ids.chars, 1)
  // one id longer than the whole budget is still held (the newest is never dropped)
  ids.set('y'.repeat(DEDUP_ID_CHARS + 1), 3)
  assert.equal(ids.size, 1)
  assert.equal(ids.chars, DEDUP_ID_CHARS + 1)
  ids.clear()
  assert.equal(ids.chars, 0)
  for (let i = 0; i < DEDUP_WINDOW + 5; i++) ids.set(`i${i}`, i)
  assert.equal(ids.size, DEDUP_WINDOW)
  assert.equal(ids.has('i4'), false)
  assert.equal(ids.has('i5'), true)
})

// ---------- Room: paged reads ----------

/** Bytes of a page's entries joined by commas. */
function pageBytes (entries: Buffer[]): number {
  return entries.reduce((bytes, e) => bytes + e.byteLength, Math.max(0, entries.length - 1))
}

/** A room of `n` records of varied sizes (multi-byte characters among them); resolves with the room and its blocks. */
async function variedRoom (t: TestContext, n: number): Promise<{ room: Room, blocks: Buffer[] }> {
  const { store } = await newStore(t)
  const room = await openRoom(t, store)
  const blocks: Buffer[] = []
  for (let i = 0; i < n; i++) {
    const size = (i * 7919) % 613
    const message = i % 3 === 0 ? 'é'.repeat(size) : i % 3 === 1 ? '😀'.repeat(size >> 2) : 'x'.repeat(size)
    blocks.push(block(message, `id-${i}`))
  }
  blocks[17] = Buffer.from('a block that is not a record')
  await Promise.all(blocks.map(b => room.append(b)))
  return { room, blocks }
}

test('Room.readPage: the records with messageIndex, in order; nextIndex and totalMessages; from the middle and past the end', async t => {
  const { room, blocks } = await variedRoom(t, 60)
  const all = await room.readPage(0, 1000, 10 * 1024 * 1024)
  assert.equal(all.entries.length, 60)
  assert.equal(all.nextIndex, 60)
  assert.equal(all.totalMessages, 60)
  all.entries.forEach((entry, i) => {
    const parsed = JSON.parse(entry.toString())
    assert.equal(parsed.messageIndex, i)
    if (i === 17) assert.deepEqual(parsed, { message: 'a block that is not a record', messageIndex: 17 })
    else assert.deepEqual(parsed, { ...JSON.parse(blocks[i].toString()), messageIndex: i })
  })

  const middle = await room.readPage(25, 10, 10 * 1024 * 1024)
  assert.deepEqual(middle.entries, all.entries.slice(25, 35), 'limit 10 from 25')
  assert.equal(middle.nextIndex, 35)
  assert.equal(middle.totalMessages, 60)
  const tail = await room.readPage(55, 10, 10 * 1024 * 1024)
  assert.deepEqual(tail.entries, all.entries.slice(55))
  assert.equal(tail.nextIndex, 60)
  for (const from of [60, 61, 1000]) {
    assert.deepEqual(await room.readPage(from, 10, 1000), { entries: [], nextIndex: from, totalMessages: 60 })
  }
  const empty = await openRoom(t, (await newStore(t)).store, 'empty')
  assert.deepEqual(await empty.readPage(0, 10, 1000), { entries: [], nextIndex: 0, totalMessages: 0 })
})

test('Room.readPage: entries joined by commas take at most maxBytes, or are one entry larger than it', async t => {
  const { room, blocks } = await variedRoom(t, 60)
  const entries = blocks.map((b, i) => pageEntry(b, i))
  const largest = Math.max(...entries.map(e => Buffer.byteLength(e)))
  // one entry over the bound: exactly that one
  const big = entries.findIndex(e => Buffer.byteLength(e) === largest)
  const one = await room.readPage(big, 50, largest - 1)
  assert.deepEqual(one.entries, [entries[big]])
  assert.equal(one.nextIndex, big + 1)
  assert.deepEqual((await room.readPage(big, 50, 1)).entries, [entries[big]])
  // one byte short of 5 entries with their commas: fewer than 5
  const five = pageBytes(entries.slice(10, 15))
  const under = await room.readPage(10, 50, five - 1)
  assert.ok(under.entries.length < 5 && under.entries.length >= 1)
  assert.ok(pageBytes(under.entries) <= five - 1)
  assert.deepEqual(under.entries, entries.slice(10, 10 + under.entries.length))
  assert.deepEqual((await room.readPage(10, 4, 10 * 1024 * 1024)).entries, entries.slice(10, 14), 'limit first')
  // every bound from one entry to the whole room, from one place
  for (let maxBytes = 1; maxBytes < pageBytes(entries.slice(3)) + 100; maxBytes += 211) {
    const page = await room.readPage(3, 1000, maxBytes)
    assert.ok(page.entries.length === 1 || pageBytes(page.entries) <= maxBytes, `${pageBytes(page.entries)} bytes in a page of ${maxBytes}`)
    assert.deepEqual(page.entries, entries.slice(3, page.nextIndex))
  }
})

test('property: any page is a run of the room\'s entries from `from`, within limit and maxBytes, and about maxBytes when cut short', async t => {
  const { room, blocks } = await variedRoom(t, 150)
  const entries = blocks.map((b, i) => pageEntry(b, i))
  const total = entries.length
  await fc.assert(fc.asyncProperty(fc.nat(160), fc.integer({ min: 1, max: 200 }), fc.integer({ min: 1, max: 60_000 }), async (from, limit, maxBytes) => {
    const page = await room.readPage(from, limit, maxBytes)
    assert.equal(page.totalMessages, total)
    if (from >= total) {
      assert.deepEqual(page.entries, [])
      assert.equal(page.nextIndex, from)
      return
    }
    assert.ok(page.entries.length >= 1, 'at least one entry when one is there')
    assert.ok(page.entries.length <= limit)
    assert.deepEqual(page.entries, entries.slice(from, from + page.entries.length))
    assert.equal(page.nextIndex, from + page.entries.length)
    assert.ok(pageBytes(page.entries) <= maxBytes || page.entries.length === 1, `${pageBytes(page.entries)} bytes > ${maxBytes}`)
    // a page stops short only for want of room: with the next entry it would pass maxBytes, once the room the page
    // reserves for messageIndex (the largest index's overhead, for each block that fits without it) is counted
    const end = Math.min(total, from + limit)
    if (page.nextIndex < end) {
      const overhead = 17 + String(end - 1).length
      let fit = 0
      for (let raw = 0; from + fit < end && raw + blocks[from + fit].byteLength <= maxBytes; fit++) raw += blocks[from + fit].byteLength
      const withNext = pageBytes(entries.slice(from, page.nextIndex + 1))
      assert.ok(withNext + Math.max(fit, 1) * overhead > maxBytes, `stopped at ${page.nextIndex} (${withNext} bytes with the next) with room for more`)
    }
  }), { numRuns: 300 })
})

// ---------- Rooms: the room table ----------

test('Rooms.register creates a room once: concurrent registers of one name make one index entry', async t => {
  const { store } = await newStore(t)
  const rooms = await newRooms(t, store)
  const created: string[] = []
  rooms.on('created', name => created.push(name))
  const [a, b, room, c] = await Promise.all([rooms.register('lobby'), rooms.register('lobby'), rooms.get('lobby', { create: true }), rooms.register('lobby'), rooms.register('other')])
  assert.equal(a.info, b.info)
  assert.equal(a.info, c.info)
  assert.equal(room!.info, a.info)
  rooms.release(room!)
  assert.deepEqual(created.sort(), ['lobby', 'other'])
  assert.equal(rooms.size, 2)
  await rooms.register('lobby')
  assert.deepEqual((await indexed(store)).map(r => r.name).sort(), ['lobby', 'other'])

  // unknown: null, and not created
  assert.equal(await rooms.get('nobody'), null)
  assert.equal(((await rooms.lookup('nobody')) !== undefined), false)
  assert.equal((await rooms.lookup('nobody')), undefined)
  assert.equal((await indexed(store)).length, 2)

  // an empty room removed: gone, its removal in the index; registered again, the same (empty) core
  const removed: string[] = []
  rooms.on('removed', name => removed.push(name))
  assert.equal(await rooms.remove('other'), true)
  assert.deepEqual(removed, ['other'])
  assert.equal(((await rooms.lookup('other')) !== undefined), false)
  assert.equal(await rooms.get('other'), null)
  assert.deepEqual((await indexed(store)).map(r => r.name), ['lobby'])
  assert.equal((await rooms.register('other')).info.generation, undefined)
})

test('Rooms.coreKey of a room of this root peer\'s own is derived without opening it, and is the key its core opens with', async t => {
  const { store } = await newStore(t)
  const rooms = await newRooms(t, store)
  await rooms.register('k')
  const derived = await rooms.coreKey('k')
  assert.equal(rooms.openCount, 0, 'not opened to learn its key')
  const room = (await rooms.get('k'))!
  assert.equal(room.core.key.toString('hex'), derived)
  await storeMessages(rooms, 'k', 1)
  rooms.release(room)
  // a room removed and registered again has a new generation's core, and key
  assert.equal(await rooms.remove('k'), true)
  await rooms.register('k')
  const again = await rooms.coreKey('k')
  assert.notEqual(again, derived)
  const reopened = (await rooms.get('k'))!
  assert.equal(reopened.core.key.toString('hex'), again)
  rooms.release(reopened)
})

test('Rooms: a reload of 3,000 rooms reads totals and opens no core; messages to sleeping rooms keep every count right, also across a crash', async t => {
  const { store } = await newStore(t)
  let rooms = await newRooms(t, store, { maxOpen: 4 })
  const names = Array.from({ length: 3000 }, (_, i) => `r${i}`)
  await Promise.all(names.map(name => rooms.register(name).then(r => r.stored)))
  for (const name of names.slice(0, 20)) await storeMessages(rooms, name, 2)
  await rooms.close()

  // reloaded: totals from the index, no core opened, no room in memory but what the last state file listed
  const loaded: string[] = []
  rooms = new Rooms(store, { maxOpen: 4 })
  rooms.on('room-loaded', ({ name }) => loaded.push(name))
  teardown(t, () => rooms.close())
  await rooms.load(null)
  assert.deepEqual(loaded, [])
  assert.equal(rooms.openCount, 0)
  assert.equal(rooms.size, 3000)
  assert.equal(rooms.totalMessages, 40)
  assert.equal(rooms.emptyCount, 2980)
  assert.equal(rooms.recent(Infinity).length, 0, 'no record in memory')

  // messages to rooms that slept: one that had messages, one that had none
  await storeMessages(rooms, 'r5', 3)
  await storeMessages(rooms, 'r2999', 1)
  assert.equal((await rooms.lookup('r5'))!.messageCount, 5)
  assert.equal(rooms.totalMessages, 44)
  assert.equal(rooms.emptyCount, 2979)

  // a crash: the records of the awake rooms were not written (this Rooms is never closed); the next load takes
  // their counts from their cores
  const crashed = new Rooms(store, { maxOpen: 4 })
  const checked: string[] = []
  crashed.on('room-loaded', ({ name }) => checked.push(name))
  teardown(t, () => crashed.close())
  await crashed.load(null)
  assert.deepEqual(checked.sort(), ['r2999', 'r5'], 'only the rooms awake at the crash are checked')
  assert.equal(crashed.totalMessages, 44)
  assert.equal(crashed.size, 3000)
  assert.equal(crashed.emptyCount, 2979)
  assert.equal((await crashed.lookup('r5'))!.messageCount, 5)
  assert.equal((await crashed.lookup('r2999'))!.messageCount, 1)
  const listed = await listAll(crashed)
  assert.equal(listed.length, 3000)
  assert.equal(listed.reduce((sum, r) => sum + r.messageCount, 0), 44)
})

test('Rooms: a store of an earlier version (a legacy index core) is migrated once: rooms, counts, keys, removals and generations', async t => {
  const { store } = await newStore(t)
  const writer = roomKeyPair('legacy').publicKey.toString('hex')
  const legacy = store.get({ name: 'root-peer-rooms' })
  await legacy.ready()
  const entries = [
    { name: 'a', createdAt: 1 },
    { name: 'b', createdAt: 2 },
    { name: 'b', removed: true, generation: 1 },
    { name: 'c', createdAt: 3 },
    { name: 'c', createdAt: 3, writerPublicKey: writer, signedFrom: 1 }
  ]
  await legacy.append(entries.map(e => Buffer.from(JSON.stringify(e))))
  await legacy.close()
  const a = store.get({ name: coreName('a') })
  await a.ready()
  await a.append([block('a0'), block('a1')])
  await a.close()

  const loaded: string[] = []
  const rooms = new Rooms(store)
  rooms.on('room-loaded', ({ name }) => loaded.push(name))
  teardown(t, () => rooms.close())
  await rooms.load(null)
  assert.deepEqual(loaded.sort(), ['a', 'c'], 'every room checked against its core, once')
  assert.equal(rooms.size, 2)
  assert.equal(rooms.totalMessages, 2)
  assert.equal((await rooms.lookup('a'))!.messageCount, 2)
  assert.equal((await rooms.lookup('b')), undefined)
  assert.equal((await rooms.lookup('c'))!.writerPublicKey, writer)
  assert.equal((await rooms.lookup('c'))!.signedFrom, 1)
  assert.equal((await rooms.register('b')).info.generation, 1, 'a removed room registered again gets a new core')
  await rooms.close()

  const again = new Rooms(store)
  again.on('room-loaded', ({ name }) => loaded.push(name))
  teardown(t, () => again.close())
  await again.load(null)
  assert.equal(loaded.length, 2, 'not migrated twice')
  assert.equal(again.size, 3)
  assert.equal(again.totalMessages, 2)
})

test('Rooms: with maxOpen 2, five rooms used in turn never have more than 2 cores open, and keep their history', async t => {
  const { store } = await newStore(t)
  let batches = 0
  const rooms = await newRooms(t, store, { maxOpen: 2, onBatch: () => { batches++ } })
  const names = ['a', 'b', 'c', 'd', 'e']
  let most = 0
  for (let round = 0; round < 4; round++) {
    for (const name of names) {
      const room = (await rooms.get(name, { create: true }))!
      most = Math.max(most, rooms.openCount)
      assert.equal(room.core.length, round, `${name} reopened with its history`)
      const b = block(`${name}${round}`)
      assert.equal(await room.append(b), round)
      rooms.recordAppend(room, b.byteLength)
      most = Math.max(most, rooms.openCount)
      rooms.release(room)
    }
  }
  assert.ok(most <= 2, `${most} cores open at once`)
  assert.equal(batches, 20)
  assert.equal(rooms.totalMessages, 20)
  for (const name of names) assert.equal((await rooms.lookup(name))!.messageCount, 4)
})

test('Rooms: the least recently released room is closed first; a held room is never closed', async t => {
  const { store } = await newStore(t)
  const rooms = await newRooms(t, store, { maxOpen: 2 })
  const a = (await rooms.get('a', { create: true }))!
  rooms.release(a)
  const b = (await rooms.get('b', { create: true }))!
  rooms.release(b)
  const a2 = (await rooms.get('a'))!
  assert.equal(a2, a, 'still open: the same room')
  rooms.release(a2)
  // a was used last: b is closed to open c
  const c = (await rooms.get('c', { create: true }))!
  assert.equal(b.core.closed, true)
  assert.equal(a.core.closed, false)
  assert.deepEqual([...rooms.openRooms()].map(r => r.name).sort(), ['a', 'c'])

  // c held, a released: d takes a's place, never c's
  const d = (await rooms.get('d', { create: true }))!
  assert.equal(a.core.closed, true)
  assert.equal(c.core.closed, false)
  rooms.release(d)

  // maxOpen 2 with both held: a third waits until one is released, and the held ones stay open
  const d2 = (await rooms.get('d'))!
  let opened: Room | null = null
  const e = rooms.get('e', { create: true }).then(room => { opened = room; return room })
  for (let i = 0; i < 5; i++) {
    await c.append(block(`c${i}`))
    await d2.append(block(`d${i}`))
  }
  assert.equal(opened, null, 'e waits while every open room is held')
  assert.equal(c.core.closed, false)
  assert.equal(d2.core.closed, false)
  assert.ok(rooms.openCount <= 2)
  rooms.release(d2)
  const eRoom = (await e)!
  assert.equal(d2.core.closed, true, 'the released one made way')
  assert.equal(c.core.closed, false)
  assert.equal(c.core.length, 5)
  rooms.release(eRoom)
  rooms.release(c)
})

test('Rooms.remove, removeEmpty and expireEmpty take out empty rooms not in use, least recently used first', async t => {
  const { store } = await newStore(t)
  const saved: PersistentState = {
    rooms: Object.fromEntries(['old1', 'old2', 'old3'].map((name, i) => [name, { name, messageCount: 0, createdAt: 1000 * (i + 1), lastActivity: 1000 * (i + 1), byteLength: 0 }])),
    totalMessages: 0,
    rootPeerCreatedAt: 0,
    lastSaved: 0
  }
  const rooms = await newRooms(t, store, {}, saved)
  assert.equal(rooms.emptyCount, 3)
  const removed: string[] = []
  rooms.on('removed', name => removed.push(name))

  // expireEmpty: the rooms unused since `before`, by their last use
  assert.deepEqual(await rooms.expireEmpty(1000), [])
  assert.deepEqual(await rooms.expireEmpty(2500), ['old1', 'old2'])
  assert.deepEqual(removed, ['old1', 'old2'])
  assert.equal(((await rooms.lookup('old1')) !== undefined), false)
  assert.equal(((await rooms.lookup('old3')) !== undefined), true)
  const held = (await rooms.get('old3'))!
  assert.deepEqual(await rooms.expireEmpty(Date.now() + 1000), [], 'a held room is in use')
  rooms.release(held)

  // a room with history is never empty
  await storeMessages(rooms, 'history', 2)
  const e1 = (await rooms.get('e1', { create: true }))!
  await rooms.register('e2')
  await rooms.register('e3')
  assert.equal(rooms.emptyCount, 4, 'old3, e1, e2, e3, least recently used first')
  // removeEmpty: the least recently used empty room not in use
  assert.equal(await rooms.removeEmpty(), 'old3')
  assert.equal(await rooms.removeEmpty(), 'e2', 'e1 is held')
  assert.equal(await rooms.remove('e1'), false, 'held')
  assert.equal(((await rooms.lookup('e1')) !== undefined), true)
  rooms.release(e1)
  await rooms.register('e3')
  assert.equal(await rooms.removeEmpty(), 'e1', 'released, and e3 was used since')
  assert.ok(![...rooms.openRooms()].includes(e1), 'its core closed')
  assert.equal(await rooms.removeEmpty(), 'e3')
  assert.equal(await rooms.removeEmpty(), null)
  assert.equal(rooms.emptyCount, 0)
  assert.equal(((await rooms.lookup('history')) !== undefined), true)
  assert.deepEqual(await rooms.expireEmpty(Date.now() + 1000), [])
  assert.equal(await rooms.remove('nobody'), false)

  // the index has only the room with history; an empty room's core is not cleared, so no new generation
  assert.deepEqual(removed, ['old1', 'old2', 'old3', 'e2', 'e1', 'e3'])
  assert.deepEqual((await indexed(store)).map(r => r.name), ['history'])
  const index = new RoomIndex(store, () => [])
  for (const name of removed) assert.equal((await index.get(name)).generation, undefined)
  await index.close()

  // after a reload they stay removed, and the room with history stays
  await rooms.close()
  const reloaded = await newRooms(t, store)
  assert.deepEqual((await listAll(reloaded)).map(r => r.name), ['history'])
  assert.equal((await reloaded.lookup('history'))!.messageCount, 2)
  assert.equal(reloaded.totalMessages, 2)
})

test('Rooms.remove of a room with history: registered again it starts at index 0 in a new core, also after a reload', async t => {
  const dir = await tmpDir(t)
  let { store } = await newStore(t, dir)
  let rooms = await newRooms(t, store)
  assert.deepEqual(await storeMessages(rooms, 'h', 3), [0, 1, 2])
  assert.equal(rooms.totalMessages, 3)
  assert.equal(await rooms.remove('h'), true)
  assert.equal(((await rooms.lookup('h')) !== undefined), false)
  assert.equal(rooms.totalMessages, 0)
  // the old core's blocks are cleared
  const old = store.get({ name: coreName('h') })
  await old.ready()
  assert.equal(await old.get(0, { wait: false }), null)
  await old.close()

  // removed, then reloaded (store closed and opened again), then registered: generation 1, empty
  await rooms.close()
  await store.close()
  ;({ store } = await newStore(t, dir))
  rooms = await newRooms(t, store)
  assert.equal(((await rooms.lookup('h')) !== undefined), false)
  await rooms.register('h')
  assert.equal((await rooms.lookup('h'))!.generation, 1)
  assert.deepEqual(await storeMessages(rooms, 'h', 2), [0, 1])

  // and the new core is the one a reload finds
  await rooms.close()
  await store.close()
  ;({ store } = await newStore(t, dir))
  rooms = await newRooms(t, store)
  const info = (await rooms.lookup('h'))!
  assert.equal(info.generation, 1)
  assert.equal(info.messageCount, 2)
  const room = (await rooms.get('h'))!
  assert.deepEqual(await room.core.get(0), block('h-0'))
  assert.equal(room.core.length, 2)
  rooms.release(room)

  // removed and registered again in one run: generation 2, index 0 again
  assert.equal(await rooms.remove('h'), true)
  await rooms.register('h')
  assert.equal((await rooms.lookup('h'))!.generation, 2)
  assert.deepEqual(await storeMessages(rooms, 'h', 1), [0])
  await rooms.close()
  const again = await newRooms(t, store)
  assert.equal((await again.lookup('h'))!.generation, 2)
  assert.equal((await again.lookup('h'))!.messageCount, 1)
})

test('Rooms: a room signed after unsigned blocks is signed from the next index, forgets older ids, and keeps it across a reload', async t => {
  const { store } = await newStore(t)
  const rooms = await newRooms(t, store)
  const keyPair = roomKeyPair('the room key')
  const name = signedRoomName(keyPair.publicKey)
  const writer = keyPair.publicKey.toString('hex')

  await rooms.register(name)
  const room = (await rooms.get(name))!
  await room.idsReady()
  for (let i = 0; i < 3; i++) {
    const b = block(`stranger ${i}`, `u${i}`)
    await room.storeOnce(`u${i}`, b)
    rooms.recordAppend(room, b.byteLength)
  }
  // two more queued, not yet stored, when the key comes: they are below signedFrom too
  const inFlight = [room.append(block('q0')), room.append(block('q1'))]
  assert.equal(room.nextIndex, 5)
  const { info } = await rooms.register(name, writer)
  assert.equal(info.writerPublicKey, writer)
  assert.equal(info.signedFrom, 5)
  assert.deepEqual(await Promise.all(inFlight), [3, 4])
  await rooms.waitForSigning(name)
  assert.deepEqual(await room.storeOnce('u0', block('member', 'u0')), { index: 5, duplicate: false }, 'ids below signedFrom forgotten')
  rooms.recordAppend(room, 1)
  rooms.release(room)
  // a second key does not replace the first
  const other = roomKeyPair('another key').publicKey.toString('hex')
  assert.equal((await rooms.register(name, other)).info.writerPublicKey, writer)
  assert.equal((await rooms.lookup(name))!.signedFrom, 5)

  // a room signed when created has no unsigned history
  const fresh = roomKeyPair('fresh')
  const freshName = signedRoomName(fresh.publicKey)
  const { info: freshInfo } = await rooms.register(freshName, fresh.publicKey.toString('hex'))
  assert.equal(freshInfo.writerPublicKey, fresh.publicKey.toString('hex'))
  assert.equal(freshInfo.signedFrom, undefined)

  await rooms.close()
  const reloaded = await newRooms(t, store)
  assert.equal((await reloaded.lookup(name))!.writerPublicKey, writer)
  assert.equal((await reloaded.lookup(name))!.signedFrom, 5)
  assert.equal((await reloaded.lookup(name))!.messageCount, 6)
  assert.equal((await reloaded.lookup(freshName))!.writerPublicKey, fresh.publicKey.toString('hex'))
  assert.equal((await reloaded.lookup(freshName))!.signedFrom, undefined)
  // its ids read back: the member's, not the stranger's
  const back = (await reloaded.get(name))!
  await back.idsReady()
  assert.deepEqual(await back.storeOnce('u0', block('member', 'u0')), { index: 5, duplicate: true })
  assert.deepEqual(await back.storeOnce('u1', block('member', 'u1')), { index: 6, duplicate: false })
  reloaded.release(back)
})
