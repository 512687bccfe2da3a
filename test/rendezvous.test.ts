import assert from 'node:assert/strict'
import { test } from 'node:test'
import crypto from 'hypercore-crypto'
import { rendezvousHolders, rendezvousOwner } from '../src/cluster/rendezvous.js'

const members = (n: number): string[] => Array.from({ length: n }, () => crypto.keyPair().publicKey.toString('hex'))

/** rendezvousOwner as it was before REPLICAS: the primary of every room created so far. */
function ownerBefore (roomName: string, keys: readonly string[]): string {
  let best = ''
  let bestWeight: Buffer | null = null
  for (const member of keys) {
    const weight = crypto.hash([Buffer.from(roomName), Buffer.from(member, 'hex')])
    if (bestWeight === null || Buffer.compare(weight, bestWeight) > 0) {
      best = member
      bestWeight = weight
    }
  }
  return best
}

test('rendezvousHolders: k distinct members, the first the owner rendezvousOwner picked before (so existing rooms keep their primary), in any order of the member list', () => {
  const keys = members(5)
  for (let i = 0; i < 500; i++) {
    const room = `room-${i}`
    const holders = rendezvousHolders(room, keys, 3)
    assert.equal(holders.length, 3)
    assert.equal(new Set(holders).size, 3)
    for (const h of holders) assert.ok(keys.includes(h))
    assert.equal(holders[0], ownerBefore(room, keys))
    assert.equal(rendezvousOwner(room, keys), ownerBefore(room, keys))
    assert.deepEqual(rendezvousHolders(room, [...keys].reverse(), 3), holders)
    // k = N: every member, the same primary first
    const all = rendezvousHolders(room, keys, 5)
    assert.deepEqual(new Set(all), new Set(keys))
    assert.equal(all[0], holders[0])
    assert.deepEqual(all.slice(0, 3), holders)
  }
  assert.deepEqual(rendezvousHolders('r', keys, 9).length, 5)
  assert.deepEqual(rendezvousHolders('r', [], 3), [])
  assert.equal(rendezvousOwner('r', []), '')
})

test('rendezvousHolders: 1,000 rooms on 3 of 5 members put 3/5 of the rooms on each member (±20%); a member leaving moves only the rooms it held', () => {
  const keys = members(5)
  const count = new Map(keys.map(k => [k, 0]))
  const rooms = Array.from({ length: 1000 }, (_, i) => `room-${i}`)
  for (const room of rooms) for (const h of rendezvousHolders(room, keys, 3)) count.set(h, count.get(h)! + 1)
  for (const [member, n] of count) assert.ok(n >= 600 * 0.8 && n <= 600 * 1.2, `${member.slice(0, 8)} holds ${n} of 1000 rooms`)
  const gone = keys[2]
  const left = keys.filter(k => k !== gone)
  for (const room of rooms) {
    const before = rendezvousHolders(room, keys, 3)
    const after = rendezvousHolders(room, left, 3)
    const kept = before.filter(k => k !== gone)
    // the holders left keep the room; a room that lost one gains exactly one new holder
    assert.deepEqual(after.slice(0, kept.length), kept)
    assert.equal(after.length, 3)
  }
})
