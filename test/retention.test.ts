import assert from 'node:assert/strict'
import { once } from 'node:events'
import { setTimeout as sleep } from 'node:timers/promises'
import { test } from 'node:test'
import type { ChatRootPeer } from '../src/root-peer.js'
import { bootstrapEnv, daemon, rawPeer, rootPeer, runBin, testnet, tmpDir, type RawPeer } from './helpers.js'

/** Resolves once `done()` holds, checked now and after every prune (check and wait are adjacent: no race). */
async function untilPruned (rp: ChatRootPeer, done: () => boolean): Promise<void> {
  while (!done()) await once(rp, 'room-pruned')
}

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

test('retention by age prunes what is older, at start and as time passes', async t => {
  const net = await testnet(t)
  const storage = await tmpDir(t)
  const rp = await rootPeer(t, net, { storageDir: storage })
  const peer = await rawPeer(t, net)
  await send(peer, 'age', ['old0', 'old1', 'old2'], 'o')
  // the bound is an age: a second and a half of the wall clock has to pass
  await sleep(1500)
  await send(peer, 'age', ['new0', 'new1'], 'n')
  await peer.close()
  await rp.close()

  // 1.2 s; applied when the daemon starts
  const again = await rootPeer(t, net, { storageDir: storage, retentionAge: 1200 })
  await untilPruned(again, () => again.pruned.messages >= 3)
  const reader = await rawPeer(t, net)
  const page = (await reader.syncAll('age')).pages[0]
  assert.equal(page.firstIndex, 3)
  assert.deepEqual(page.messages.map((m: any) => m.message), ['new0', 'new1'])
  assert.equal(page.totalMessages, 5)
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
