import assert from 'node:assert/strict'
import { EventEmitter, once } from 'node:events'
import { test } from 'node:test'
import { roomTopic, type ChatRootPeer } from '../src/root-peer.js'
import { type RawPeer, rawPeer, rootPeer, testnet } from './helpers.js'

const UNLIMITED = { messagesPerSecond: 0, bytesPerSecond: 0, syncsPerSecond: 0, registersPerMinute: 0, newRoomsPerMinute: 0 }

/** Resolves once `count` frames of `type` have arrived; they stay in `peer.frames`, in arrival order. */
async function framesOfType (peer: RawPeer, type: string, count: number, timeout = 30_000): Promise<any[]> {
  const deadline = Date.now() + timeout
  while (true) {
    const found = peer.frames.filter(f => f.type === type)
    if (found.length >= count) return found
    if (Date.now() > deadline) throw new Error(`${found.length} of ${count} ${type} frames within ${timeout} ms`)
    await new Promise(resolve => setTimeout(resolve, 20))
  }
}

/**
 * Follows the room topics of `names` that the root peer's swarm joins and leaves (the real join and leave still run):
 * those joined now, the most joined at once, and `until(done)`, which resolves once `done()` holds after a join or leave.
 */
function watchTopics (rp: ChatRootPeer, names: string[]): { joined: Set<string>, most: () => number, until: (done: () => boolean) => Promise<void> } {
  const swarm = rp.network!
  const byTopic = new Map(names.map(n => [roomTopic(n).toString('hex'), n]))
  const joined = new Set<string>()
  const changes = new EventEmitter()
  let most = 0
  const join = swarm.join.bind(swarm)
  const leave = swarm.leave.bind(swarm)
  swarm.join = (topic, opts) => {
    const name = byTopic.get(topic.toString('hex'))
    if (name !== undefined) {
      joined.add(name)
      most = Math.max(most, joined.size)
      changes.emit('change')
    }
    return join(topic, opts)
  }
  swarm.leave = topic => {
    const name = byTopic.get(topic.toString('hex'))
    if (name !== undefined && joined.delete(name)) changes.emit('change')
    return leave(topic)
  }
  return {
    joined,
    most: () => most,
    until: async done => { while (!done()) await once(changes, 'change') }
  }
}

/** Samples `roomCounts.open` on every stored message and every millisecond; returns the highest seen. */
function watchOpen (rp: ChatRootPeer): { max: () => number, stop: () => void } {
  let max = 0
  const sample = (): void => { max = Math.max(max, rp.roomCounts.open) }
  const timer = setInterval(sample, 1)
  rp.on('message-stored', sample)
  return { max: () => max, stop: () => { clearInterval(timer); rp.off('message-stored', sample) } }
}

test('group commit: 2,000 messages in flight to one room all land in order, each acked once with its own index', async t => {
  const net = await testnet(t)
  const rp = await rootPeer(t, net, UNLIMITED)
  const peer = await rawPeer(t, net)
  await peer.nextOfType('root-peer-announcement')
  const N = 2000
  // every frame is written before the first ack can come back: they are all in flight at once
  for (let i = 0; i < N; i++) peer.send({ type: 'message', roomName: 'batched', message: `m${i}`, id: `id-${i}` })
  const acks = await framesOfType(peer, 'message-ack', N)
  assert.deepEqual(acks.map(a => a.id), Array.from({ length: N }, (_, i) => `id-${i}`), 'one ack per message, in order')
  assert.deepEqual(acks.map(a => a.messageIndex), Array.from({ length: N }, (_, i) => i), 'indices contiguous 0..N-1, each its own')
  assert.ok(acks.every(a => a.duplicate === undefined))
  await new Promise(resolve => setTimeout(resolve, 200))
  assert.equal(peer.frames.filter(f => f.type === 'message-ack').length, N, 'no extra acks')
  assert.equal(peer.frames.filter(f => f.type === 'error').length, 0)
  // grouped: far fewer core appends than messages
  assert.ok(rp.counters.appendBatches < N / 4, `${rp.counters.appendBatches} appends for ${N} messages`)
  peer.frames.length = 0

  const { messages } = await peer.syncAll('batched')
  assert.deepEqual(messages.map(m => m.message), Array.from({ length: N }, (_, i) => `m${i}`))
  assert.deepEqual(messages.map(m => m.messageIndex), Array.from({ length: N }, (_, i) => i))
  assert.equal(rp.stats().totalMessages, N)
})

test('MAX_OPEN_ROOMS 3: ten rooms written and read, at most 3 cores open at every message stored and every millisecond sampled, and 3 reached; closed rooms reopen with history and dedup', async t => {
  const net = await testnet(t)
  const rp = await rootPeer(t, net, { ...UNLIMITED, maxOpenRooms: 3 })
  const peer = await rawPeer(t, net)
  await peer.nextOfType('root-peer-announcement')
  const watch = watchOpen(rp)
  const ROOMS = 10
  const PER_ROOM = 20
  // interleaved, so each message of a room finds it closed again
  for (let i = 0; i < PER_ROOM; i++) {
    for (let r = 0; r < ROOMS; r++) peer.send({ type: 'message', roomName: `lru-${r}`, message: `r${r}-m${i}`, id: `r${r}-${i}` })
  }
  const acks = await framesOfType(peer, 'message-ack', ROOMS * PER_ROOM)
  for (let r = 0; r < ROOMS; r++) {
    assert.deepEqual(acks.filter(a => a.roomName === `lru-${r}`).map(a => a.messageIndex), Array.from({ length: PER_ROOM }, (_, i) => i), `room ${r}`)
  }
  peer.frames.length = 0

  for (let r = 0; r < ROOMS; r++) {
    const { messages } = await peer.syncAll(`lru-${r}`, 0, 7)
    assert.deepEqual(messages.map(m => m.message), Array.from({ length: PER_ROOM }, (_, i) => `r${r}-m${i}`), `room ${r} history`)
  }
  // room 0 was closed long ago (9 rooms were read after it): its dedup ids come back from the core
  for (let r = 0; r < ROOMS; r++) {
    peer.send({ type: 'message', roomName: `lru-${r}`, message: 'resent', id: `r${r}-5` })
    const ack = await peer.nextOfType('message-ack')
    assert.deepEqual(ack, { type: 'message-ack', roomName: `lru-${r}`, id: `r${r}-5`, messageIndex: 5, duplicate: true }, `room ${r} dedup`)
  }
  watch.stop()
  // the cap was reached and held: every room beyond the third was opened by closing another
  assert.equal(watch.max(), 3, `at most 3 open, and 3 reached; saw ${watch.max()}`)
  assert.equal(rp.roomCounts.total, ROOMS)
  assert.equal(rp.stats().totalMessages, ROOMS * PER_ROOM)
  assert.equal(rp.counters.duplicates, ROOMS)
})

test('MAX_ANNOUNCED_ROOMS 2: of five rooms written, the topics of the 2 most recently active are announced, never more at once; after ROOM_IDLE_TIMEOUT both are left and every core closed', async t => {
  const net = await testnet(t)
  // 3 s idle: the paced joins (a tick of 100 ms) come long before the topics are idle, however loaded the machine
  const rp = await rootPeer(t, net, { ...UNLIMITED, maxAnnouncedRooms: 2, roomIdleTimeout: 3000 })
  const names = Array.from({ length: 5 }, (_, r) => `idle-${r}`)
  const topics = watchTopics(rp, names)
  const peer = await rawPeer(t, net)
  names.forEach((name, r) => peer.send({ type: 'message', roomName: name, message: 'x', id: `i${r}` }))
  await framesOfType(peer, 'message-ack', 5)
  await topics.until(() => topics.joined.size === 2 && topics.joined.has('idle-3') && topics.joined.has('idle-4'))
  assert.equal(topics.most(), 2, 'never more than 2 room topics joined at once')
  assert.equal(rp.roomCounts.announced, 2)

  await topics.until(() => topics.joined.size === 0)
  assert.equal(rp.roomCounts.announced, 0)
  // a core's closing has no event: wait for the count (the sweep that left the topics has closed the idle rooms, or the next will)
  const deadline = Date.now() + 60_000
  while (rp.roomCounts.open > 0 && Date.now() < deadline) await new Promise(resolve => setTimeout(resolve, 20))
  assert.equal(rp.roomCounts.open, 0)
  // still served after being closed
  const { messages } = await peer.syncAll('idle-4')
  assert.deepEqual(messages.map(m => m.message), ['x'])
  assert.equal(rp.roomCounts.open, 1)
})
