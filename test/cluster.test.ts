import assert from 'node:assert/strict'
import { test } from 'node:test'
import Corestore from 'corestore'
import type { Testnet } from 'hyperdht/testnet.js'
import { once } from 'node:events'
import { RootPeerClient, type MessageAck } from 'root-peer-client'
import { readPublicKey } from '../src/cluster/cluster.js'
import { coreName } from '../src/storage/rooms.js'
import { signAccess, signedRoomName, signMessage } from 'root-peer-client/protocol'
import { NO_RATES, bootstrapEnv, dial, memberConnected, readUntil, roomOwnedBy, runBin, sendAll, signedRoomOwnedBy, startCluster, startMember, teardown, testnet, tmpDir, type Member, type RawPeer } from './helpers.js'

/** Opens a stopped member's store in this process: the room's core, by key, for `fn`. */
async function withCore<T> (storage: string, key: Buffer, fn: (core: any) => Promise<T>): Promise<T> {
  const store = new Corestore(storage)
  try {
    const core = store.get({ key })
    await core.ready()
    return await fn(core)
  } finally {
    await store.close()
  }
}

/**
 * Writes one message at the room's primary through `writer` and, the moment its ack arrives (in the connection's data
 * event, before anything else runs here), stops the primary (SIGSTOP): it can send no block after its ack. Then each
 * reader (a client of another member) asks its member for the message at the acked index, and the primary continues.
 * Resolves with the ack and, per reader, whether its member served the message there: the mirror's own answer.
 */
async function askMirrorsAtAck (writer: RawPeer, primary: Member, room: string, id: string, readers: RawPeer[]): Promise<{ ack: any, served: boolean[] }> {
  const conn = writer.conn!
  const onData = (data: Buffer): void => {
    let frame: any
    try {
      frame = JSON.parse(data.toString('utf8'))
    } catch {
      return
    }
    if (frame.id !== id) return
    conn.off('data', onData)
    primary.d.child.kill('SIGSTOP')
  }
  conn.on('data', onData)
  writer.send({ type: 'message', roomName: room, message: `payload of ${id}`, id })
  const ack = await writer.next(f => f.id === id, 30_000)
  try {
    assert.equal(ack.type, 'message-ack', JSON.stringify(ack))
    const served = await Promise.all(readers.map(async r => {
      const requestId = `at-ack-${id}`
      r.send({ type: 'sync-request', roomName: room, lastIndex: ack.messageIndex, limit: 1, requestId })
      const page = await r.next(f => f.requestId === requestId)
      return page.messages[0]?.id === id && page.messages[0]?.messageIndex === ack.messageIndex
    }))
    return { ack, served }
  } finally {
    primary.d.child.kill('SIGCONT')
  }
}

async function coreKeyOf (storage: string, room: string): Promise<Buffer> {
  const store = new Corestore(storage)
  try {
    const core = store.get({ name: coreName(room) })
    await core.ready()
    return core.key
  } finally {
    await store.close()
  }
}

test('MIN_MIRRORS=1: at each ack, asked with the primary stopped at that moment, another member already serves the message; kill -9 of the primary after a burst loses no ack; survivors identical; primary down: reads served, writes PRIMARY_UNAVAILABLE; primary back: indices continue, fork 0', async t => {
  const net = await testnet(t)
  const members = await startCluster(t, net, { MIN_MIRRORS: '1', REPLICATION_TIMEOUT: '5s' })
  const [a, b, c] = members
  const room = roomOwnedBy(members, a, 'durable')
  const writer = await dial(t, net, a)
  writer.send({ type: 'register-room', roomName: room, requestId: 'reg' })
  assert.equal((await writer.next(f => f.requestId === 'reg')).type, 'room-registered')

  // one at a time: when the ack arrives (A stopped at once, so it sends nothing more), B or C already serves the message
  const readers = [await dial(t, net, b), await dial(t, net, c)]
  for (let i = 0; i < 5; i++) {
    const { ack, served } = await askMirrorsAtAck(writer, a, room, `one-${i}`, readers)
    assert.equal(ack.messageIndex, i)
    assert.ok(served.includes(true), `ack ${i}: a second member served the message at the moment of the ack (B, C: ${served.join(', ')})`)
  }
  for (const r of readers) await r.close()

  // a burst, then kill -9 of the primary as soon as the last ack is in
  const ids = Array.from({ length: 300 }, (_, i) => `burst-${i}`)
  const acks = await sendAll(writer, room, ids)
  a.d.child.kill('SIGKILL')
  assert.equal((await a.d.exited).signal, 'SIGKILL')
  for (const [id, ack] of acks) assert.equal(ack.type, 'message-ack', `${id}: ${JSON.stringify(ack)}`)
  const total = 5 + ids.length

  // both survivors serve every acked message, at its index (they also replicate from each other)
  for (const m of [b, c]) {
    const messages = await readUntil(t, net, m, room, total)
    assert.equal(messages.length, total, 'every acked message is served by each survivor')
    for (const [id, ack] of acks) assert.equal(messages[ack.messageIndex].id, id)
  }

  // primary down (once B has noticed): reads are served, writes are refused and never acked
  await b.d.line(l => l.msg.startsWith('cluster member disconnected') && l.member === a.key, 30_000)
  const atB = await dial(t, net, b)
  atB.send({ type: 'message', roomName: room, message: 'while down', id: 'down-1' })
  const refused = await atB.next(f => f.id === 'down-1')
  assert.equal(refused.type, 'error')
  assert.equal(refused.code, 'PRIMARY_UNAVAILABLE')
  const health = await fetch(new URL('/health', (await b.d.line(l => l.url !== undefined)).url))
  const body = await health.json() as any
  assert.deepEqual(body.cluster.find((m: any) => m.publicKey === a.key), { publicKey: a.key, connected: false })

  // primary back on the same data dir: indices continue where they were
  const fromB = b.d.lines.length
  const fromC = c.d.lines.length
  const keys = members.map(m => m.key)
  const a2 = startMember(t, net, a.storage, keys, a.key, { MIN_MIRRORS: '1', REPLICATION_TIMEOUT: '5s' })
  await a2.d.ready()
  await Promise.all([memberConnected(b.d, a.key, fromB), memberConnected(c.d, a.key, fromC)])
  atB.send({ type: 'message', roomName: room, message: 'after', id: 'after-1' })
  const after = await atB.next(f => f.id === 'after-1', 30_000)
  assert.equal(after.type, 'message-ack', JSON.stringify(after))
  assert.equal(after.messageIndex, total, 'the next index after every acked one')
  await atB.close()
  await writer.close()
  await readUntil(t, net, c, room, total + 1)

  // the same blocks, the same tree hash and fork 0 on every member (read from their stores once stopped)
  for (const m of [a2, b, c]) assert.equal((await m.d.stop('SIGTERM')).code, 0)
  const key = await coreKeyOf(a.storage, room)
  const copies = await Promise.all([a, b, c].map(m => withCore(m.storage, key, async core => {
    const blocks: string[] = []
    for (let i = 0; i < total + 1; i++) blocks.push((await core.get(i, { wait: false }))?.toString('utf8') ?? 'missing')
    return { fork: core.fork as number, length: core.length as number, hash: (await core.treeHash(total + 1)).toString('hex'), blocks }
  })))
  for (const copy of copies) {
    assert.equal(copy.fork, 0)
    assert.equal(copy.length, total + 1)
    assert.equal(copy.hash, copies[0].hash)
    assert.deepEqual(copy.blocks, copies[0].blocks)
  }
})

test('write anywhere: a message at a mirror is forwarded and acked with the primary\'s index, readable there at once; one new room registered at two members at once is one room; fewer than MIN_MIRRORS mirrors: NOT_REPLICATED, then the resend is acked once, and both mirrors serve it at that ack', async t => {
  const net = await testnet(t)
  const extra = { MIN_MIRRORS: '2', REPLICATION_TIMEOUT: '2s' }
  const members = await startCluster(t, net, extra)
  const [a, b, c] = members
  const room = roomOwnedBy(members, a, 'anywhere')
  const atA = await dial(t, net, a)
  const atB = await dial(t, net, b)
  const atC = await dial(t, net, c)

  // registered at B, created at its owner A, mirrored by B and C
  atB.send({ type: 'register-room', roomName: room, requestId: 'reg-b' })
  assert.equal((await atB.next(f => f.requestId === 'reg-b')).type, 'room-registered')
  const expected: string[] = []
  for (const [peer, label] of [[atB, 'b'], [atC, 'c'], [atA, 'a'], [atB, 'b2']] as const) {
    const id = `w-${label}`
    peer.send({ type: 'message', roomName: room, message: `from ${label}`, id })
    const ack = await peer.next(f => f.id === id, 15_000)
    assert.equal(ack.type, 'message-ack', JSON.stringify(ack))
    assert.equal(ack.messageIndex, expected.length, `${id} is acked with the primary's next index`)
    expected.push(id)
    // the member that acked holds the block: the writer reads its own write there at once
    peer.send({ type: 'sync-request', roomName: room, lastIndex: ack.messageIndex, requestId: `r-${id}` })
    const page = await peer.next(f => f.requestId === `r-${id}`)
    assert.equal(page.messages[0]?.id, id)
  }
  // frames stay in order at a mirror: a sync-request written right after a message, before its ack, sees it
  atC.send({ type: 'message', roomName: room, message: 'then read', id: 'w-c2' })
  atC.send({ type: 'sync-request', roomName: room, lastIndex: expected.length, requestId: 'r-ordered' })
  const ordered = await atC.next(f => f.requestId === 'r-ordered', 15_000)
  assert.deepEqual(ordered.messages.map((m: any) => m.id), ['w-c2'])
  expected.push('w-c2')
  for (const m of members) assert.deepEqual((await readUntil(t, net, m, room, expected.length)).map(x => x.id), expected)

  // one new room, registered by two clients at two members at the same moment: one core, one numbering
  const shared = roomOwnedBy(members, b, 'together')
  atB.send({ type: 'register-room', roomName: shared, requestId: 'together-b' })
  atC.send({ type: 'register-room', roomName: shared, requestId: 'together-c' })
  assert.equal((await atB.next(f => f.requestId === 'together-b')).type, 'room-registered')
  assert.equal((await atC.next(f => f.requestId === 'together-c')).type, 'room-registered')
  atB.send({ type: 'message', roomName: shared, message: 'b', id: 'tb' })
  atC.send({ type: 'message', roomName: shared, message: 'c', id: 'tc' })
  const indices = [(await atB.next(f => f.id === 'tb', 15_000)).messageIndex, (await atC.next(f => f.id === 'tc', 15_000)).messageIndex]
  assert.deepEqual(indices.sort(), [0, 1])
  for (const m of members) assert.deepEqual((await readUntil(t, net, m, shared, 2)).map(x => x.id).sort(), ['tb', 'tc'])

  const url = (await b.d.line(l => l.url !== undefined)).url as string
  // B forwarded w-b and w-b2 (it is the primary of the shared room)
  const metrics = await (await fetch(new URL('/metrics', url))).text()
  assert.match(metrics, /^root_peer_cluster_members_connected 2$/m)
  assert.match(metrics, /^root_peer_forwarded_writes_total 2$/m)
  assert.match(metrics, new RegExp(`^root_peer_mirror_lag_blocks\\{primary="${a.key}"\\} 0$`, 'm'))
  assert.match(metrics, new RegExp(`^root_peer_mirror_lag_seconds\\{primary="${a.key}"\\} 0$`, 'm'))
  // A, the primary, sees B and C caught up on its open room
  const fromPrimary = await (await fetch(new URL('/metrics', (await a.d.line(l => l.url !== undefined)).url))).text()
  for (const m of [b, c]) assert.match(fromPrimary, new RegExp(`^root_peer_replica_lag_blocks\\{mirror="${m.key}"\\} 0$`, 'm'))

  // C stops: A has one mirror of the two required, so the message is not acked
  const fromA = a.d.lines.length
  assert.equal((await c.d.stop('SIGTERM')).code, 0)
  await a.d.line(l => l.msg.startsWith('cluster member disconnected') && l.member === c.key && a.d.lines.indexOf(l) >= fromA, 15_000)
  atA.send({ type: 'message', roomName: room, message: 'payload of nr-1', id: 'nr-1' })
  const refused = await atA.next(f => f.id === 'nr-1', 15_000)
  assert.equal(refused.type, 'error')
  assert.equal(refused.code, 'NOT_REPLICATED')
  assert.equal(refused.minMirrors, 2)

  // C back: the resend is deduplicated and acked with the index the first attempt got, once B and C both hold it
  const keys = members.map(m => m.key)
  const c2 = startMember(t, net, c.storage, keys, c.key, extra)
  await c2.d.ready()
  await memberConnected(a.d, c.key, fromA)
  const atC2 = await dial(t, net, c2)
  const { ack, served } = await askMirrorsAtAck(atA, a, room, 'nr-1', [atB, atC2])
  assert.deepEqual(ack, { type: 'message-ack', roomName: room, id: 'nr-1', messageIndex: expected.length, duplicate: true })
  assert.deepEqual(served, [true, true], 'B and C served the message at the moment of its ack')
  assert.deepEqual((await readUntil(t, net, c2, room, expected.length + 1)).map(x => x.id), [...expected, 'nr-1'])
})

test('client failover: a client pinned to two members moves to the other when its member is killed (kill -9), resends its unacked messages there, and loses no acked message', async t => {
  const net = await testnet(t)
  // batches of 10: the client's outbox sends its 80 messages as 8 batches, acked batch by batch, so most are in flight at the kill
  const members = await startCluster(t, net, { MIN_MIRRORS: '1', MAX_BATCH_MESSAGES: '10' })
  const [a, b, c] = members
  const room = roomOwnedBy(members, a, 'failover')
  // a short connection timeout: root peers send a keep-alive every 5 s, and B will die without closing
  const client = new RootPeerClient({ bootstrap: net.bootstrap, dhtHost: '127.0.0.1', rootPublicKeys: [b.key, c.key], connectionTimeout: 7000, requestTimeout: 15_000 })
  teardown(t, () => client.close())
  await client.ready()
  // B is dialed first, but the discovery topic may find C first: either is one of the two pinned
  const first = [b, c].find(m => m.key === client.rootPublicKey)!
  const other = first === b ? c : b
  assert.ok(first !== undefined, 'connected to a pinned member')
  await client.registerRoom(room)

  const N = 80
  let acked = 0
  const killed = new Promise<void>(resolve => {
    client.on('ack-counted', () => { if (acked === 20) resolve() })
  })
  const sends: Array<Promise<MessageAck>> = []
  for (let i = 0; i < N; i++) {
    sends.push(client.sendMessage(room, `message ${i}`, { id: `fo-${i}` }).then(ack => {
      acked++
      client.emit('ack-counted')
      return ack
    }))
  }
  await killed
  const movedTo = once(client, 'connect')
  first.d.child.kill('SIGKILL')
  const unackedAtKill = client.unacked
  assert.ok(unackedAtKill > 0, 'messages were in flight when the member died')
  assert.equal((await movedTo)[0], other.key, 'the client moved to the other pinned member')
  const acks = await Promise.all(sends)
  assert.equal(acks.length, N)
  console.log(`failover: ${unackedAtKill} of ${N} messages unacked when the member was killed, all acked after the move`)
  const byIndex = new Map(acks.map(ack => [ack.messageIndex, ack.id]))
  assert.equal(byIndex.size, N, 'every message has its own index')
  for (const m of [a, other]) {
    const messages = await readUntil(t, net, m, room, N)
    assert.equal(messages.length, N, 'nothing is stored twice')
    for (const ack of acks) assert.equal(messages[ack.messageIndex].id, ack.id, `${ack.id} is at its acked index on ${m === a ? 'the primary' : 'the member the client moved to'}`)
  }
})

test('promotion: refused while the old primary runs; after it is gone, root-peer promote on a mirror fetches what it lacks from the other mirror, takes the rooms over, every index keeps its meaning, and the other members follow the new primary', async t => {
  const net = await testnet(t)
  const extra = { MIN_MIRRORS: '1' }
  const members = await startCluster(t, net, extra)
  const [a, b, c] = members
  const keys = members.map(m => m.key)
  const room = roomOwnedBy(members, a, 'promoted')
  const atA = await dial(t, net, a)
  const ids = Array.from({ length: 40 }, (_, i) => `p-${i}`)
  for (const [id, ack] of await sendAll(atA, room, ids)) assert.equal(ack.type, 'message-ack', `${id}: ${JSON.stringify(ack)}`)
  assert.deepEqual((await readUntil(t, net, b, room, ids.length)).map(m => m.id), ids)

  // B stopped; 20 more acked with C as the only mirror: B, the member to promote, lacks them
  assert.equal((await b.d.stop('SIGTERM')).code, 0)
  const later = Array.from({ length: 20 }, (_, i) => `p-${ids.length + i}`)
  for (const [id, ack] of await sendAll(atA, room, later)) assert.equal(ack.type, 'message-ack', `${id}: ${JSON.stringify(ack)}`)
  await atA.close()
  ids.push(...later)
  const before = await readUntil(t, net, c, room, ids.length)
  assert.deepEqual(before.map(m => m.id), ids)

  // A still running: refused
  const promoteEnv = { STORAGE_DIR: b.storage, DHT_BOOTSTRAP: bootstrapEnv(net), DHT_HOST: '127.0.0.1', CLUSTER_PEERS: keys.filter(k => k !== b.key).join(',') }
  const refused = await runBin(['promote', '--from', a.key], promoteEnv)
  assert.equal(refused.code, 1, refused.stderr)
  assert.match(refused.stderr, /promote refused: the member [0-9a-f]{64} is reachable/)

  // A gone for good: B fetches the 20 blocks it lacks from C, then takes A's rooms over
  a.d.child.kill('SIGKILL')
  await a.d.exited
  const done = await runBin(['promote', '--from', a.key], promoteEnv)
  assert.equal(done.code, 0, done.stderr)
  const result = JSON.parse(done.stdout.trim().split('\n').pop()!)
  assert.deepEqual(result.rooms.map((r: any) => [r.roomName, r.messages]), [[room, ids.length]])

  // B back: C learns the new primary and follows its core; writes anywhere continue the numbering
  const fromC = c.d.lines.length
  const b2 = startMember(t, net, b.storage, keys, b.key, extra)
  await b2.d.ready()
  await c.d.line(l => l.msg === 'mirroring room' && l.roomName === room && l.primary === b.key && c.d.lines.indexOf(l) >= fromC, 30_000)
  const atC = await dial(t, net, c)
  atC.send({ type: 'message', roomName: room, message: 'after promotion', id: 'p-after' })
  const ack = await atC.next(f => f.id === 'p-after', 15_000)
  assert.deepEqual(ack, { type: 'message-ack', roomName: room, id: 'p-after', messageIndex: ids.length })
  for (const m of [b2, c]) {
    const messages = await readUntil(t, net, m, room, ids.length + 1)
    assert.deepEqual(messages.map(x => x.id), [...ids, 'p-after'])
    // the same records (contents, storedAt, sender) at the same indices as before the promotion
    assert.deepEqual(messages.slice(0, ids.length), before)
  }

  // the old primary started again on its data dir, written to at once: it appends to its old core only after it has
  // heard from a member, by then it has handed the room over (mirrors B's core), and the write goes to B
  const a2 = startMember(t, net, a.storage, keys, a.key, extra)
  await a2.d.ready()
  const atA2 = await dial(t, net, a2)
  atA2.send({ type: 'message', roomName: room, message: 'at the old primary', id: 'p-old' })
  const first = await atA2.next(f => f.id === 'p-old', 15_000)
  if (first.type === 'error') {
    // refused, not stored: it had heard of the hand-over from C before it reached B; the client resends
    assert.equal(first.code, 'PRIMARY_UNAVAILABLE', JSON.stringify(first))
    await memberConnected(a2.d, b.key)
    atA2.send({ type: 'message', roomName: room, message: 'at the old primary', id: 'p-old' })
    assert.deepEqual(await atA2.next(f => f.id === 'p-old', 15_000), { type: 'message-ack', roomName: room, id: 'p-old', messageIndex: ids.length + 1 })
  } else {
    assert.deepEqual(first, { type: 'message-ack', roomName: room, id: 'p-old', messageIndex: ids.length + 1 })
  }
  assert.ok(a2.d.lines.some(l => l.msg === 'mirroring room' && l.roomName === room && l.primary === b.key), 'the old primary follows the new core')
  assert.deepEqual((await readUntil(t, net, b2, room, ids.length + 2)).map(x => x.id), [...ids, 'p-after', 'p-old'])
})

test('mirrored rooms sleep when idle and wake when their core grows: with MIN_MIRRORS=2, a write to each of six rooms asleep at both mirrors is acked, and both mirrors serve it at the ack (asked with the primary stopped at that moment); a mirror restarted with its rooms asleep serves what it missed at the resend\'s ack', async t => {
  const net = await testnet(t)
  const extra = { MIN_MIRRORS: '2', ROOM_IDLE_TIMEOUT: '1s', MAX_OPEN_ROOMS: '2', REPLICATION_TIMEOUT: '5s' }
  const members = await startCluster(t, net, extra)
  const [a, b, c] = members
  const rooms = Array.from({ length: 6 }, (_, i) => roomOwnedBy(members, a, `sleepy${i}`))
  const atA = await dial(t, net, a)
  const atB = await dial(t, net, b)
  const atC = await dial(t, net, c)
  /** one message to each room; at each ack, B and C already serve it */
  const round = async (label: string, index: number): Promise<void> => {
    for (const room of rooms) {
      const { ack, served } = await askMirrorsAtAck(atA, a, room, `${label}-${room}`, [atB, atC])
      assert.deepEqual(ack, { type: 'message-ack', roomName: room, id: `${label}-${room}`, messageIndex: index })
      assert.deepEqual(served, [true, true], `${label}-${room}: B and C served it at the moment of its ack`)
    }
  }
  const activeAt = async (m: Member): Promise<number> => {
    const url = (await m.d.line(l => l.url !== undefined)).url as string
    const metrics = await (await fetch(new URL('/metrics', url))).text()
    return Number(/^root_peer_mirrored_rooms_active (\d+)$/m.exec(metrics)?.[1])
  }
  /** Waits until every mirrored room of `m` sleeps (idle 1 s, swept every second); the metric is read once a second. */
  const allAsleep = async (m: Member): Promise<void> => {
    const deadline = Date.now() + 20_000
    while (await activeAt(m) > 0) {
      assert.ok(Date.now() < deadline, 'mirrored rooms were put to sleep')
      await new Promise(resolve => setTimeout(resolve, 1000))
    }
  }

  await round('first', 0)
  await Promise.all([allAsleep(b), allAsleep(c)])
  // every room asleep at both mirrors: each write is acked only once both have woken the room and stored it
  await round('second', 1)
  assert.ok(await activeAt(b) > 0, 'woken rooms are followed actively')

  // C down: not replicated; C back with its rooms asleep: woken (A's rooms say it holds more), the resend is acked once
  const fromA = a.d.lines.length
  assert.equal((await c.d.stop('SIGTERM')).code, 0)
  await a.d.line(l => l.msg.startsWith('cluster member disconnected') && l.member === c.key && a.d.lines.indexOf(l) >= fromA, 15_000)
  atA.send({ type: 'message', roomName: rooms[0], message: 'payload of third', id: 'third' })
  assert.equal((await atA.next(f => f.id === 'third', 15_000)).code, 'NOT_REPLICATED')
  const c2 = startMember(t, net, c.storage, members.map(m => m.key), c.key, extra)
  await c2.d.ready()
  await memberConnected(a.d, c.key, fromA)
  const atC2 = await dial(t, net, c2)
  const { ack, served } = await askMirrorsAtAck(atA, a, rooms[0], 'third', [atB, atC2])
  assert.deepEqual(ack, { type: 'message-ack', roomName: rooms[0], id: 'third', messageIndex: 2, duplicate: true })
  assert.deepEqual(served, [true, true], 'B, and C restarted with its rooms asleep, served it at the moment of its ack')
})

test('write fence: a member that has heard from no other member since it started takes no writes to its own rooms (PRIMARY_UNAVAILABLE, nothing stored) but serves reads; once a member is linked (its 300 rooms told in two frames), the resend is acked', async t => {
  const net = await testnet(t)
  const storages = [await tmpDir(t, 'root-peer-cluster-'), await tmpDir(t, 'root-peer-cluster-')]
  const keys = [await readPublicKey(storages[0]), await readPublicKey(storages[1])]
  const extra = { REPLICATION_TIMEOUT: '1s', ...NO_RATES }
  const [memberA, memberB] = [{ key: keys[0] }, { key: keys[1] }] as Member[]

  // B alone first, with 300 rooms of its own: its rooms list will take two frames (256 rooms a frame)
  const b1 = startMember(t, net, storages[1], keys, keys[1], extra)
  await b1.d.ready()
  const atB = await dial(t, net, b1)
  const many = Array.from({ length: 300 }, (_, i) => roomOwnedBy([memberA, memberB], memberB, `many${i}`))
  for (const name of many) atB.send({ type: 'register-room', roomName: name, requestId: name })
  for (const name of many) assert.equal((await atB.next(f => f.requestId === name)).type, 'room-registered')
  await atB.close()
  assert.equal((await b1.d.stop('SIGTERM')).code, 0)

  // A alone: B is listed but not running
  const a = startMember(t, net, storages[0], keys, keys[0], extra)
  await a.d.ready()
  const room = roomOwnedBy([memberA, memberB], memberA, 'fenced')
  const atA = await dial(t, net, a)
  atA.send({ type: 'register-room', roomName: room, requestId: 'reg' })
  assert.equal((await atA.next(f => f.requestId === 'reg')).type, 'room-registered')
  atA.send({ type: 'message', roomName: room, message: 'too early', id: 'early' })
  const refused = await atA.next(f => f.id === 'early', 10_000)
  assert.equal(refused.type, 'error')
  assert.equal(refused.code, 'PRIMARY_UNAVAILABLE')
  assert.match(refused.message, /has not heard from any other cluster member since it started/)
  assert.deepEqual((await atA.syncAll(room)).messages, [], 'nothing was stored')

  const b = startMember(t, net, storages[1], keys, keys[1], extra)
  await b.d.ready()
  await memberConnected(a.d, b.key)
  atA.send({ type: 'message', roomName: room, message: 'too early', id: 'early' })
  assert.deepEqual(await atA.next(f => f.id === 'early', 10_000), { type: 'message-ack', roomName: room, id: 'early', messageIndex: 0 })
  // every room of B's two frames is mirrored at A
  const mirrored = (): number => a.d.lines.filter(l => l.msg === 'mirroring room' && l.primary === b.key).length
  await a.d.line(() => mirrored() >= many.length, 30_000)
  assert.equal(mirrored(), many.length)
})

test('signed rooms in a cluster: an outsider\'s unsigned write before the members came stays below the signed history at every member, and takes no member id', async t => {
  const net = await testnet(t)
  const members = await startCluster(t, net, {}, 2)
  const [a, b] = members
  // a signed room whose primary is A, reached through B
  const kp = signedRoomOwnedBy(members, a, 'cluster room')
  const roomName = signedRoomName(kp.publicKey)
  const writerPublicKey = kp.publicKey.toString('hex')

  const outsider = await dial(t, net, b)
  outsider.send({ type: 'message', roomName, message: 'squat', id: 'msg-1' })
  assert.equal((await outsider.next(f => f.id === 'msg-1')).messageIndex, 0)

  const member = await dial(t, net, b)
  const { challenge } = member.announcement
  member.send({ type: 'register-room', roomName, writerPublicKey, signature: signAccess(kp.secretKey, b.key, challenge, roomName), requestId: 'reg' })
  assert.equal((await member.next(f => f.requestId === 'reg')).type, 'room-registered')

  // unsigned writes are refused at either member now
  outsider.send({ type: 'message', roomName, message: 'late', id: 'late-b' })
  assert.equal((await outsider.next(f => f.id === 'late-b')).code, 'UNAUTHORIZED')
  const atA = await dial(t, net, a)
  atA.send({ type: 'message', roomName, message: 'late', id: 'late-a' })
  assert.equal((await atA.next(f => f.id === 'late-a')).code, 'UNAUTHORIZED')

  // the member's own msg-1 is stored, not taken for the outsider's
  const message = 'ciphertext'
  member.send({ type: 'message', roomName, message, id: 'msg-1', signature: signMessage(kp.secretKey, roomName, 'msg-1', message) })
  const ack = await member.next(f => f.id === 'msg-1')
  assert.equal(ack.type, 'message-ack', JSON.stringify(ack))
  assert.equal(ack.duplicate, undefined)
  assert.equal(ack.messageIndex, 1)

  // both members serve the signed history only
  const served: string[] = []
  for (const [m, peer] of [[b, member], [a, atA]] as const) {
    peer.send({ type: 'sync-request', roomName, lastIndex: 0, signature: signAccess(kp.secretKey, m.key, peer.announcement.challenge, roomName), requestId: `sync-${m.key}` })
    const page = await peer.next(f => f.requestId === `sync-${m.key}`)
    assert.equal(page.firstIndex, 1, JSON.stringify(page))
    assert.deepEqual(page.messages.map((r: any) => r.message), [message])
    served.push(`${m === a ? 'A (primary)' : 'B'}: firstIndex ${page.firstIndex}, ${page.messages.length} message`)
  }
  console.log(`signed room in a cluster after an outsider's write: ${served.join('; ')}; unsigned writes refused at both members`)
})
