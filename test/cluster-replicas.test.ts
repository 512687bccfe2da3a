import assert from 'node:assert/strict'
import { test } from 'node:test'
import { rendezvousHolders } from '../src/cluster/rendezvous.js'
import { dial, sendAll, startCluster, testnet, type Member, type RawPeer } from './helpers.js'

/**
 * Issue 23, rooms on k of N members: five members, REPLICAS=3, MIN_MIRRORS=1. Rooms are created and written through
 * every member; each member keeps only the rooms it is one of the three holders of, and serves every room, forwarding
 * to a holder what it holds no copy of.
 */
const ROOMS = 250
const K = 3
const EXTRA = { REPLICAS: String(K), MIN_MIRRORS: '1', REPLICATION_TIMEOUT: '5s' }

async function statsAt (m: Member): Promise<{ totalRooms: number }> {
  const url = (await m.d.line(l => l.url !== undefined)).url as string
  return await (await fetch(new URL('/stats', url))).json() as { totalRooms: number }
}

/** Resolves once `check` passes, polling the members' HTTP endpoints (no event tells of a room stored at a mirror). */
async function until (what: () => Promise<string | null>, timeout = 60_000): Promise<void> {
  const deadline = Date.now() + timeout
  let last: string | null = null
  while (Date.now() < deadline) {
    last = await what()
    if (last === null) return
    await new Promise(resolve => setTimeout(resolve, 200))
  }
  assert.fail(`not within ${timeout} ms: ${last ?? ''}`)
}

async function readAt (peer: RawPeer, room: string, index: number, requestId: string): Promise<any> {
  peer.send({ type: 'sync-request', roomName: room, lastIndex: index, limit: 1, requestId })
  return await peer.next(f => f.requestId === requestId, 30_000)
}

test(`five members, REPLICAS=${K}: ${ROOMS} rooms written through every member; each member stores only the rooms it holds (${K}/5 of them ±20%); every room is read and written through every member, the ones without a copy forwarding; each holder serves the acked indices`, { timeout: 240_000 }, async t => {
  const net = await testnet(t)
  const members = await startCluster(t, net, EXTRA, 5)
  const keys = members.map(m => m.key)
  const peers = await Promise.all(members.map(m => dial(t, net, m)))
  const rooms = Array.from({ length: ROOMS }, (_, i) => `replicas-${i}`)
  const holdersOf = new Map(rooms.map(r => [r, rendezvousHolders(r, keys, K)]))

  // the first message of each room through member i % 5 (a new room: placed at its rendezvous owner)
  const byMember = members.map((_, i) => rooms.filter((_, r) => r % 5 === i))
  await Promise.all(byMember.map(async (mine, i) => {
    for (const room of mine) {
      const ack = (await sendAll(peers[i], room, [`${room}-0`])).get(`${room}-0`)
      assert.equal(ack.type, 'message-ack', `${room} through ${i}: ${JSON.stringify(ack)}`)
      assert.equal(ack.messageIndex, 0)
    }
  }))

  // each member holds exactly the rooms it is a holder of, and no other
  const expected = members.map(m => rooms.filter(r => holdersOf.get(r)!.includes(m.key)).length)
  await until(async () => {
    const counts = await Promise.all(members.map(async m => (await statsAt(m)).totalRooms))
    return counts.every((n, i) => n === expected[i]) ? null : `rooms held ${JSON.stringify(counts)}, expected ${JSON.stringify(expected)}`
  })
  for (const n of expected) assert.ok(n >= ROOMS * K / 5 * 0.8 && n <= ROOMS * K / 5 * 1.2, `a member holds ${n} of ${ROOMS} rooms`)
  console.log(`rooms held per member: ${JSON.stringify(expected)} of ${ROOMS} (${K}/5 = ${ROOMS * K / 5})`)

  // a second message to each room through the next member but one: acked at index 1 whether it holds a copy or not
  await Promise.all(members.map(async (_, i) => {
    const through = (i + 2) % 5
    for (const room of byMember[i]) {
      const ack = (await sendAll(peers[through], room, [`${room}-1`])).get(`${room}-1`)
      assert.equal(ack.type, 'message-ack', `${room} through ${through}: ${JSON.stringify(ack)}`)
      assert.equal(ack.messageIndex, 1, `${room} through ${through}`)
    }
  }))

  // every room read through every member: both messages at their acked indices (a member without a copy forwards)
  let forwarded = 0
  await Promise.all(members.map(async (m, i) => {
    for (const room of rooms) {
      const page = (await peers[i].syncAll(room)).messages
      assert.deepEqual(page.map(e => [e.messageIndex, e.id]), [[0, `${room}-0`], [1, `${room}-1`]], `${room} read at member ${i}`)
      if (!holdersOf.get(room)!.includes(m.key)) forwarded++
    }
  }))
  assert.equal(forwarded, ROOMS * 5 - expected.reduce((a, b) => a + b, 0))

  // each holder serves both acked indices from its own copy (MIN_MIRRORS=1: a third holder may still be catching up)
  await until(async () => {
    for (const room of rooms) {
      for (const key of holdersOf.get(room)!) {
        const i = keys.indexOf(key)
        const page = await readAt(peers[i], room, 1, `holder-${room}-${i}-${Date.now()}`)
        if (page.messages[0]?.id !== `${room}-1`) return `${room} at holder ${i}: ${JSON.stringify(page).slice(0, 200)}`
      }
    }
    return null
  })

  // a follow at a member without a copy is refused with a coded error (not forwarded yet), never left silent
  const room = rooms.find(r => !holdersOf.get(r)!.includes(keys[0]))!
  peers[0].send({ type: 'follow', roomName: room, requestId: 'f1' })
  const refused = await peers[0].next(f => f.requestId === 'f1')
  assert.equal(refused.type, 'error', JSON.stringify(refused))
  assert.equal(refused.code, 'PRIMARY_UNAVAILABLE')
})
