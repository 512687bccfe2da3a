import assert from 'node:assert/strict'
import { once } from 'node:events'
import { test } from 'node:test'
import type { ChatRootPeer } from '../src/root-peer.js'
import { bootstrapEnv, daemon, rawPeer, rootPeer, runBin, testnet, tmpDir, type RawPeer } from './helpers.js'

/** Resolves once `done()` holds, checked now and after every prune (check and wait are adjacent: no race). */
async function untilPruned (rp: ChatRootPeer, done: () => boolean): Promise<void> {
  while (!done()) await once(rp, 'room-pruned')
}

const DAY = 86_400_000

async function send (peer: RawPeer, room: string, messages: string[], prefix: string): Promise<number[]> {
  messages.forEach((m, i) => peer.send({ type: 'message', roomName: room, message: m, id: `${prefix}${i}` }))
  const acks = []
  for (let i = 0; i < messages.length; i++) acks.push((await peer.next(f => f.id === `${prefix}${i}`)).messageIndex)
  return acks
}

/** Sends `body` to `room` one message at a time until one is refused; resolves with how many were stored, and the refusal. */
async function fillToCap (peer: RawPeer, room: string, body: string, prefix: string): Promise<{ stored: number, refusal: any }> {
  for (let stored = 0; ; stored++) {
    peer.send({ type: 'message', roomName: room, message: body, id: `${prefix}${stored}` })
    const answer = await peer.next(f => f.id === `${prefix}${stored}`)
    if (answer.type === 'error') return { stored, refusal: answer }
  }
}

/** The exact bytes of a stored block, rebuilt from a synced record. */
function blockBytes (m: any): number {
  const { messageIndex, ...record } = m
  return Buffer.byteLength(JSON.stringify(record))
}

test('retention by count keeps the newest messages and every index; a sync below the horizon answers from it with firstIndex', async t => {
  const net = await testnet(t)
  const rp = await rootPeer(t, net, { retentionMessages: 10, messagesPerSecond: 0 })
  const peer = await rawPeer(t, net)
  const acks = await send(peer, 'count', Array.from({ length: 25 }, (_, i) => `m${i}`), 'c')
  assert.deepEqual(acks, Array.from({ length: 25 }, (_, i) => i))
  await untilPruned(rp, () => rp.pruned.messages >= 15)
  assert.equal(rp.pruned.messages, 15)

  const { messages, pages } = await peer.syncAll('count')
  assert.deepEqual(messages.map(m => m.messageIndex), Array.from({ length: 10 }, (_, i) => 15 + i))
  assert.deepEqual(messages.map(m => m.message), Array.from({ length: 10 }, (_, i) => `m${15 + i}`))
  assert.equal(pages[0].firstIndex, 15)
  assert.equal(pages[0].totalMessages, 25)
  // a client whose lastIndex is past the horizon sees no difference
  const { messages: tail, pages: tailPages } = await peer.syncAll('count', 20)
  assert.deepEqual(tail.map(m => m.messageIndex), [20, 21, 22, 23, 24])
  assert.equal(tailPages[0].firstIndex, 15)
  // indices keep their meaning: the next message is 25
  assert.deepEqual(await send(peer, 'count', ['m25'], 'n'), [25])
  const metrics = rp.pruned
  assert.ok(metrics.messages >= 15 && metrics.bytes > 0)
})

test('retention by bytes keeps at most that many message bytes', async t => {
  const net = await testnet(t)
  const rp = await rootPeer(t, net, { retentionBytes: 3000, messagesPerSecond: 0, bytesPerSecond: 0 })
  const peer = await rawPeer(t, net)
  await send(peer, 'bytes', Array.from({ length: 30 }, (_, i) => `${i} `.padEnd(300, 'x')), 'b')
  // prunes run after batches: wait until the room is within its bound
  await untilPruned(rp, () => rp.largestRooms(1)[0].bytes <= 3000)
  const { messages, pages } = await peer.syncAll('bytes')
  const first = pages[0].firstIndex
  const held = messages.reduce((n, m) => n + blockBytes(m), 0)
  assert.equal(held, rp.largestRooms(1)[0].bytes)
  assert.ok(held <= 3000, `${held} bytes held`)
  assert.ok(held + blockBytes(messages[0]) > 3000, `${held} bytes held: no more was pruned than needed`)
  assert.equal(messages[0].messageIndex, first)
  assert.equal(messages[messages.length - 1].messageIndex, 29)
})

test('retention by age, applied when the daemon starts, prunes the messages older than RETENTION_DAYS and keeps the younger ones', async t => {
  const net = await testnet(t)
  const storage = await tmpDir(t)
  // three records stored three days ago, slipped in as `root-peer import` lets an operator do: no clock to wait for
  const threeDaysAgo = Date.now() - 3 * DAY
  const old = ['old0', 'old1', 'old2'].map((message, messageIndex) => JSON.stringify({ message, storedAt: threeDaysAgo, fromPeer: 'ab'.repeat(32), senderPublicKey: 'ab'.repeat(32), id: `o${messageIndex}`, messageIndex }))
  const imported = await runBin(['import', '--room', 'age'], { STORAGE_DIR: storage }, old.join('\n') + '\n')
  assert.equal(imported.code, 0, imported.stderr)
  const rp = await rootPeer(t, net, { storageDir: storage })
  const peer = await rawPeer(t, net)
  assert.deepEqual(await send(peer, 'age', ['new0', 'new1'], 'n'), [3, 4])
  await peer.close()
  await rp.close()

  // a day: the imported records are two days past it, the new ones a day short of it
  const again = await rootPeer(t, net, { storageDir: storage, retentionAge: DAY })
  await untilPruned(again, () => again.pruned.messages >= 3)
  assert.equal(again.pruned.messages, 3)
  const reader = await rawPeer(t, net)
  const page = (await reader.syncAll('age')).pages[0]
  assert.equal(page.firstIndex, 3)
  assert.deepEqual(page.messages.map((m: any) => m.message), ['new0', 'new1'])
  assert.equal(page.totalMessages, 5)
})

test('retention by age runs again every RETENTION_DAYS / 24, at least every 10 s: messages stored after the start are pruned without a restart', async t => {
  const net = await testnet(t)
  const started = Date.now()
  // 1.2 s: the period is its 1/24 raised to the 10 s floor
  const rp = await rootPeer(t, net, { retentionAge: 1200 })
  const peer = await rawPeer(t, net)
  const first = once(rp, 'room-pruned').then(([event]) => ({ event, after: Date.now() - started }))
  // the room is created after the start-up pass: only the periodic one can prune it
  assert.deepEqual(await send(peer, 'ticking', ['a', 'b', 'c'], 't'), [0, 1, 2])
  await untilPruned(rp, () => rp.pruned.messages >= 3)
  const { event, after } = await first
  assert.equal(event.roomName, 'ticking')
  // timers never fire early: a prune before 10 s would be another path than the periodic one
  assert.ok(after >= 9_900, `first pruned ${after} ms after the start`)
  assert.equal(rp.pruned.messages, 3)
  assert.ok(rp.pruned.bytes > 0)
  const page = (await peer.syncAll('ticking')).pages[0]
  assert.equal(page.firstIndex, 3)
  assert.deepEqual(page.messages, [])
  assert.equal(page.totalMessages, 3)
})

test('a resent id of a pruned message is stored again as a new message, in an open room and in one reopened; a kept one stays a duplicate', async t => {
  const net = await testnet(t)
  const rp = await rootPeer(t, net, { retentionMessages: 2, maxOpenRooms: 1, messagesPerSecond: 0 })
  const peer = await rawPeer(t, net)
  assert.deepEqual(await send(peer, 'dedup', ['m0', 'm1', 'm2', 'm3'], 'd'), [0, 1, 2, 3])
  await untilPruned(rp, () => rp.pruned.messages >= 2)

  // the room is open: d0 was pruned, so it is not a duplicate any more
  peer.send({ type: 'message', roomName: 'dedup', message: 'm0', id: 'd0' })
  assert.deepEqual(await peer.next(f => f.id === 'd0'), { type: 'message-ack', roomName: 'dedup', id: 'd0', messageIndex: 4 })
  await untilPruned(rp, () => rp.pruned.messages >= 3)
  peer.send({ type: 'message', roomName: 'dedup', message: 'm3', id: 'd3' })
  assert.deepEqual(await peer.next(f => f.id === 'd3'), { type: 'message-ack', roomName: 'dedup', id: 'd3', messageIndex: 3, duplicate: true })

  // another room takes the only open place; dedup reopens with the ids read back from its core
  assert.deepEqual(await send(peer, 'other', ['x'], 'x'), [0])
  peer.send({ type: 'message', roomName: 'dedup', message: 'm1', id: 'd1' })
  assert.deepEqual(await peer.next(f => f.id === 'd1'), { type: 'message-ack', roomName: 'dedup', id: 'd1', messageIndex: 5 })
  peer.send({ type: 'message', roomName: 'other', message: 'x', id: 'x0' })
  assert.equal((await peer.next(f => f.id === 'x0')).duplicate, true)
  peer.send({ type: 'message', roomName: 'dedup', message: 'm0', id: 'd0' })
  assert.deepEqual(await peer.next(f => f.id === 'd0'), { type: 'message-ack', roomName: 'dedup', id: 'd0', messageIndex: 4, duplicate: true })

  await untilPruned(rp, () => rp.pruned.messages >= 4)
  const { messages, pages } = await peer.syncAll('dedup')
  assert.equal(pages[0].firstIndex, 4)
  assert.deepEqual(messages.map(m => [m.messageIndex, m.id, m.message]), [[4, 'd0', 'm0'], [5, 'd1', 'm1']])
  assert.equal(rp.counters.duplicates, 3, 'd3, x0 and d0 the second time')
})

test('MAX_STORAGE_BYTES refuses new messages with STORAGE_FULL, and accepts again once retention has pruned', async t => {
  const net = await testnet(t)
  const storage = await tmpDir(t)
  const rp = await rootPeer(t, net, { storageDir: storage, maxStorageBytes: 5000, messagesPerSecond: 0, bytesPerSecond: 0 })
  const peer = await rawPeer(t, net)
  const body = 'y'.repeat(1000)
  const { stored, refusal } = await fillToCap(peer, 'capped', body, 'f')
  assert.equal(refusal.code, 'STORAGE_FULL')
  assert.equal(refusal.maxStorageBytes, 5000)
  assert.ok(stored >= 4 && stored <= 6, `${stored} stored before the cap`)
  assert.equal(rp.health().ok, true, 'a cap reached is not a failure')
  await peer.close()
  await rp.close()

  const again = await rootPeer(t, net, { storageDir: storage, maxStorageBytes: 5000, retentionMessages: 2 })
  await untilPruned(again, () => again.pruned.messages >= stored - 2)
  const writer = await rawPeer(t, net)
  writer.send({ type: 'message', roomName: 'capped', message: body, id: 'after' })
  assert.equal((await writer.next(f => f.id === 'after')).messageIndex, stored)
})

test('root-peer prune applies retention now on a stopped daemon\'s data dir; the capped daemon accepts again after it', async t => {
  const net = await testnet(t)
  const storage = await tmpDir(t)
  const env = { STORAGE_DIR: storage, DHT_BOOTSTRAP: bootstrapEnv(net), DHT_HOST: '127.0.0.1', STATS_INTERVAL: '0', MAX_STORAGE_BYTES: '5000', RATE_MESSAGES: '0', RATE_BYTES: '0' }
  const first = daemon(t, [], env)
  await first.ready()
  const peer = await rawPeer(t, net)
  const body = 'z'.repeat(1000)
  const { stored, refusal } = await fillToCap(peer, 'offline', body, 'p')
  assert.equal(refusal.code, 'STORAGE_FULL')
  await peer.close()
  assert.equal((await first.stop('SIGTERM')).code, 0)

  const unset = await runBin(['prune'], { STORAGE_DIR: storage })
  assert.equal(unset.code, 2)
  assert.match(unset.stderr, /RETENTION_MESSAGES/)
  const pruned = await runBin(['prune', '--retention-messages', '2'], { STORAGE_DIR: storage })
  assert.equal(pruned.code, 0, pruned.stderr)
  assert.equal(pruned.stdout.trim().split(' ')[1], String(stored - 2), pruned.stdout)
  assert.match(pruned.stdout, /from 1 of 1 rooms/)

  const second = daemon(t, [], env)
  await second.ready()
  const writer = await rawPeer(t, net)
  writer.send({ type: 'message', roomName: 'offline', message: body, id: 'after-prune' })
  assert.equal((await writer.next(f => f.id === 'after-prune')).messageIndex, stored)
  const { messages, pages } = await writer.syncAll('offline')
  assert.equal(pages[0].firstIndex, stored - 2)
  assert.deepEqual(messages.map(m => m.messageIndex), [stored - 2, stored - 1, stored])
})
