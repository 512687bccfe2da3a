import assert from 'node:assert/strict'
import { test } from 'node:test'
import type { ChatRootPeer } from '../src/root-peer.js'
import { ReadAhead, READ_AHEAD_HOLD_MS } from '../src/connection/read-ahead.js'
import { createCounters } from '../src/monitor/stats.js'
import type { Room } from '../src/storage/room.js'
import type { Rooms } from '../src/storage/rooms.js'
import { type RawPeer, rawPeer, rootPeer, testnet } from './helpers.js'

const LIMIT = 1000

/** `count` messages into `room` from `peer`, in batches of 100, every one acked. */
async function fill (peer: RawPeer, room: string, from: number, count: number): Promise<void> {
  for (let i = from; i < from + count; i += 100) {
    const requestId = `fill-${i}`
    peer.send({ type: 'message-batch', roomName: room, requestId, messages: Array.from({ length: Math.min(100, from + count - i) }, (_, k) => ({ id: `m${i + k}`, message: `text ${i + k}` })) })
    const ack = await peer.next(f => f.requestId === requestId)
    assert.equal(ack.type, 'message-batch-ack', JSON.stringify(ack))
  }
}

async function page (peer: RawPeer, room: string, lastIndex: number, requestId: string): Promise<any> {
  peer.send({ type: 'sync-request', roomName: room, lastIndex, limit: LIMIT, requestId })
  const frame = await peer.next(f => f.requestId === requestId)
  assert.equal(frame.type, 'sync-response', JSON.stringify(frame))
  return frame
}

function readAheads (rp: ChatRootPeer): { used: number, unused: number } {
  return { used: rp.counters.pagesReadAhead, unused: rp.counters.pagesReadAheadUnused }
}

test('a catch-up\'s next page is read while the page before is on the wire, and served only as a fresh read would be', async t => {
  const net = await testnet(t)
  const rp = await rootPeer(t, net, { messagesPerSecond: 0, syncsPerSecond: 0 })
  const writer = await rawPeer(t, net)
  const room = 'read-ahead'
  await fill(writer, room, 0, 2500)

  // a catch-up in three pages: the second and third were read ahead, and are what the room holds
  const reader = await rawPeer(t, net)
  const seen: number[] = []
  let next = 0
  for (let k = 0; ; k++) {
    const p = await page(reader, room, next, `p${k}`)
    for (const m of p.messages) {
      assert.equal(m.message, `text ${m.messageIndex}`)
      seen.push(m.messageIndex)
    }
    next = p.nextIndex
    if (!p.hasMore) break
  }
  assert.deepEqual(seen, Array.from({ length: 2500 }, (_, i) => i))
  assert.deepEqual(readAheads(rp), { used: 2, unused: 0 })

  // the room grows between two pages: the page read ahead at 2,500 messages is not served, the fresh read is
  const first = await page(reader, room, 0, 'grow-0')
  assert.equal(first.totalMessages, 2500)
  await fill(writer, room, 2500, 300)
  const second = await page(reader, room, first.nextIndex, 'grow-1')
  assert.equal(second.totalMessages, 2800)
  assert.deepEqual(second.messages.map((m: any) => m.messageIndex), Array.from({ length: LIMIT }, (_, i) => LIMIT + i))
  assert.deepEqual(readAheads(rp), { used: 2, unused: 1 })

  // a request for another range drops the page read ahead (read for 2,000) and reads its own
  await page(reader, room, 0, 'other-0')
  const elsewhere = await page(reader, room, 1500, 'other-1')
  assert.deepEqual([elsewhere.messages[0].messageIndex, elsewhere.messages.length], [1500, LIMIT])
  // and one to another connection is not given this connection's page
  const stranger = await rawPeer(t, net)
  const theirs = await page(stranger, room, LIMIT, 'stranger')
  assert.equal(theirs.messages[0].messageIndex, LIMIT)
  assert.deepEqual(readAheads(rp), { used: 2, unused: 3 })
  console.log(`read ahead: ${JSON.stringify(readAheads(rp))}`)
})

test('fast, no network: read-ahead holds at most its pages, the oldest dropped for a newer one, and none past 5 s', async t => {
  t.mock.timers.enable({ apis: ['setTimeout'] })
  const counters = createCounters()
  // a room whose reads resolve at once with the page asked for; pinned and released as Rooms does
  let pinned = 0
  // blocks from 5,000 on are not held yet, as at a mirror catching up
  let reads = 0
  const room = {
    length: 10_000,
    core: { length: 10_000, fork: 0, closed: false, has: async (from: number, to: number) => to <= 5000 },
    readPage: async (from: number, limit: number) => { reads++; return { entries: [], nextIndex: from + limit, totalMessages: 10_000 } }
  } as unknown as Room
  const rooms = { getIfOpen: () => { pinned++; return room }, release: () => { pinned-- } } as unknown as Rooms
  const ahead = new ReadAhead(3, counters)
  const owners = [{}, {}, {}, {}]
  owners.forEach((owner, k) => ahead.start(owner, rooms, 'r', 1000 * k, 1000, 1 << 19))
  assert.equal(ahead.size, 3, 'the fourth took the first one\'s place')
  assert.equal(counters.pagesReadAheadUnused, 1)
  assert.equal(await ahead.take(owners[0], room, 0, 1000, 1 << 19), null, 'the first one\'s page was dropped')
  assert.deepEqual(await ahead.take(owners[1], room, 1000, 1000, 1 << 19), { entries: [], nextIndex: 2000, totalMessages: 10_000 })
  assert.equal(counters.pagesReadAhead, 1)
  // a request for another range drops its page; one for the range takes it only once
  assert.equal(await ahead.take(owners[2], room, 0, 1000, 1 << 19), null)
  assert.equal(counters.pagesReadAheadUnused, 2)
  t.mock.timers.tick(READ_AHEAD_HOLD_MS)
  assert.equal(ahead.size, 0, 'the last one dropped after READ_AHEAD_HOLD_MS')
  assert.equal(counters.pagesReadAheadUnused, 3)
  assert.equal(await ahead.take(owners[3], room, 3000, 1000, 1 << 19), null)
  // a range with blocks still to come is not read (they would arrive at the same length): the request reads its own
  reads = 0
  ahead.start(owners[0], rooms, 'r', 4500, 1000, 1 << 19)
  assert.equal(await ahead.take(owners[0], room, 4500, 1000, 1 << 19), null)
  assert.equal(reads, 0)
  await new Promise(resolve => setImmediate(resolve))
  assert.equal(pinned, 0, 'every room pinned for a read was released')
})
