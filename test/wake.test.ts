import assert from 'node:assert/strict'
import fs from 'node:fs/promises'
import { test } from 'node:test'
import { NO_RATES, bootstrapEnv, daemon, rawPeer, runBin, testnet, tmpDir, type RawPeer } from './helpers.js'

// Issue 22, item 8: waking a sleeping room of 10,000 records costs a bounded, small step of daemon CPU, not a read
// of its history; its dedup ids are still found (docs/durability.md, "Dedup ids"). An imported room has no snapshot
// of its ids yet: its first wake reads them back from its records, once.

const RECORDS = 10_000
const ROUNDS = 30
const CLOCK_TICKS = 100
const PEER = 'ab'.repeat(32)

/** The daemon's CPU seconds so far (user and system), from /proc: 10 ms ticks, so each figure is over ROUNDS frames. */
async function cpuSeconds (pid: number): Promise<number> {
  const stat = await fs.readFile(`/proc/${pid}/stat`, 'utf8')
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  return (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS
}

/** An export of a room of `count` 1-byte records with ids `${prefix}${i}`, as `import` reads it. */
function history (prefix: string, count: number): string {
  const lines: string[] = []
  for (let i = 0; i < count; i++) lines.push(JSON.stringify({ message: 'x', storedAt: 1_700_000_000_000 + i, fromPeer: PEER, senderPublicKey: PEER, id: `${prefix}${i}`, messageIndex: i }))
  return lines.join('\n') + '\n'
}

async function send (peer: RawPeer, roomName: string, id: string): Promise<any> {
  peer.send({ type: 'message', roomName, message: 'x', id })
  const answer = await peer.next(f => f.id === id || (f.type === 'error' && f.roomName === roomName), 30_000)
  assert.equal(answer.type, 'message-ack', JSON.stringify(answer))
  return answer
}

test('wake: a message that wakes a room of 10,000 records costs a small bounded step of daemon CPU, and its ids are still deduplicated', async t => {
  const net = await testnet(t)
  const storage = await tmpDir(t)
  for (const room of ['big-a', 'big-b']) {
    const imported = await runBin(['import', '--room', room], { STORAGE_DIR: storage }, history(`${room}-`, RECORDS))
    assert.equal(imported.code, 0, imported.stderr)
  }
  // one core open at a time: a message to one room closes the other
  const d = daemon(t, [], { STORAGE_DIR: storage, DHT_BOOTSTRAP: bootstrapEnv(net), DHT_HOST: '127.0.0.1', STATS_INTERVAL: '0', MAX_OPEN_ROOMS: '1', ...NO_RATES })
  await d.ready()
  const pid = d.child.pid!
  const peer = await rawPeer(t, net)

  // an open room: one message at a time
  await send(peer, 'open', 'open-first')
  let cpu0 = await cpuSeconds(pid)
  for (let i = 0; i < ROUNDS; i++) await send(peer, 'open', `open-${i}`)
  const openMs = (await cpuSeconds(pid) - cpu0) * 1000 / ROUNDS

  // the first wake of each: its records read back, once (and a snapshot written as it sleeps)
  cpu0 = await cpuSeconds(pid)
  const first = await send(peer, 'big-a', 'kept')
  assert.equal(first.messageIndex, RECORDS)
  assert.equal((await send(peer, 'big-b', 'first-b')).messageIndex, RECORDS)
  const firstMs = (await cpuSeconds(pid) - cpu0) * 1000 / 2

  // each message wakes a room of 10,000 records (and puts the other to sleep)
  cpu0 = await cpuSeconds(pid)
  for (let i = 0; i < ROUNDS; i++) {
    const ack = await send(peer, i % 2 === 0 ? 'big-a' : 'big-b', `wake-${i}`)
    assert.equal(ack.duplicate, undefined)
  }
  const wakeMs = (await cpuSeconds(pid) - cpu0) * 1000 / ROUNDS

  // asleep and woken again: a resent id, stored since or imported with the history, is a duplicate with its index
  await send(peer, 'big-b', 'sleep-a')
  const resent = await send(peer, 'big-a', 'kept')
  assert.deepEqual([resent.duplicate, resent.messageIndex], [true, RECORDS])
  await send(peer, 'big-b', 'sleep-a-again')
  const old = await send(peer, 'big-a', `big-a-${RECORDS - 1}`)
  assert.deepEqual([old.duplicate, old.messageIndex], [true, RECORDS - 1])
  const fresh = await send(peer, 'big-a', 'new-after-wake')
  assert.equal(fresh.duplicate, undefined)
  assert.equal(fresh.messageIndex, RECORDS + 1 + ROUNDS / 2)
  const resentB = await send(peer, 'big-b', 'first-b')
  assert.deepEqual([resentB.duplicate, resentB.messageIndex], [true, RECORDS])

  console.log(`wake: a 1-byte message with an id costs ${openMs.toFixed(1)} ms of daemon CPU to an open room, ` +
    `${wakeMs.toFixed(1)} ms when it wakes a room of ${RECORDS.toLocaleString('en')} records (${(wakeMs / Math.max(openMs, 0.1)).toFixed(1)}×; was 233 ms vs 7.4 ms); ` +
    `the first wake of an imported room, with no snapshot of its ids yet, ${firstMs.toFixed(1)} ms`)
  // generous for a loaded 2-core machine: reading the room's history back took 233 ms
  assert.ok(wakeMs < 50, `a wake costs ${wakeMs.toFixed(1)} ms of daemon CPU`)
  assert.ok(wakeMs < Math.max(5 * openMs, 25), `a wake costs ${wakeMs.toFixed(1)} ms, an open room's message ${openMs.toFixed(1)} ms`)
})
