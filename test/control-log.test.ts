import assert from 'node:assert/strict'
import { once } from 'node:events'
import { test } from 'node:test'
import Corestore from 'corestore'
import { ControlLog, type Decision } from '../src/cluster/control-log.js'
import { teardown, tmpDir } from './helpers.js'

/** The control log on its own: three members' Corestores in this process, replicated over in-memory streams. */

/** ms within which a decision must be final (issue 23 measured the first final entry 112–123 ms after a loss) */
const FINAL_WITHIN = 3000

interface Members { logs: ControlLog[], keys: string[], cut: (i: number) => void }

async function members (t: any, n = 3, { bootstrapLast = false } = {}): Promise<Members> {
  const stores: Corestore[] = []
  for (let i = 0; i < n; i++) stores.push(new Corestore(await tmpDir(t, 'root-peer-control-')))
  teardown(t, () => Promise.all(stores.map(s => s.close())))
  const keyPairs = await Promise.all(stores.map(s => s.createKeyPair('root-peer-swarm')))
  const keys = keyPairs.map(k => k.publicKey.toString('hex'))
  const logs = stores.map((store, i) => new ControlLog({ store, keyPair: keyPairs[i], members: keys }))
  teardown(t, () => Promise.all(logs.map(l => l.close())))
  for (const log of logs) log.on('log-error', err => { throw err })
  const streams: Array<{ i: number, j: number, a: any, b: any }> = []
  for (let i = 0; i < n; i++) {
    for (let j = i + 1; j < n; j++) {
      const a: any = stores[i].replicate(true)
      const b: any = stores[j].replicate(false)
      a.pipe(b).pipe(a)
      a.on('error', () => {})
      b.on('error', () => {})
      logs[i].attach(a)
      logs[j].attach(b)
      streams.push({ i, j, a, b })
    }
  }
  // linked before they open, as members are; the bootstrap member (lowest key) last, or in key order
  const order = keys.map((_, i) => i).sort((x, y) => keys[x] < keys[y] ? -1 : 1)
  if (bootstrapLast) order.reverse()
  for (const i of order) await logs[i].ready()
  const cut = (k: number): void => {
    for (const { i, j, a, b } of streams) if (i === k || j === k) { a.destroy(); b.destroy() }
  }
  return { logs, keys, cut }
}

async function until (what: string, ok: () => boolean, within: number): Promise<number> {
  const started = Date.now()
  while (!ok()) {
    assert.ok(Date.now() - started < within, `${what} within ${within} ms`)
    await new Promise(resolve => setTimeout(resolve, 20))
  }
  return Date.now() - started
}

function claim (room: string, keys: string[], from: number): Omit<Decision, 'primary'> {
  return { room, epoch: 1, fromLength: 7, core: keys[from], from: keys[from] }
}

for (const bootstrapLast of [false, true]) {
  test(`three members (the bootstrap member opened ${bootstrapLast ? 'last' : 'first'}): all become indexers; a claim is final at every member within ${FINAL_WITHIN} ms, the same decision everywhere`, async t => {
    const { logs, keys } = await members(t, 3, { bootstrapLast })
    const indexers = await until('every member an indexer', () => logs.every(l => l.isIndexer), 10_000)
    const decided = logs.map(l => once(l, 'decision') as Promise<[Decision]>)
    const started = Date.now()
    await logs[1].claim(claim('room-a', keys, 0))
    const decisions = (await Promise.all(decided)).map(([d]) => d)
    const ms = Date.now() - started
    for (const d of decisions) assert.deepEqual(d, { ...claim('room-a', keys, 0), primary: keys[1] })
    for (const log of logs) assert.equal(log.epoch('room-a'), 1)
    assert.ok(ms <= FINAL_WITHIN, `final everywhere in ${ms} ms`)
    console.log(`indexers after ${indexers} ms; a claim final at all three in ${ms} ms`)
  })
}

test(`one member of three gone: two competing claims for the same room and epoch, the same winner at both live members within ${FINAL_WITHIN} ms; alone, nothing becomes final`, async t => {
  const { logs, keys, cut } = await members(t, 3)
  await until('every member an indexer', () => logs.every(l => l.isIndexer), 10_000)
  cut(2)
  const decided = [logs[0], logs[1]].map(l => once(l, 'decision') as Promise<[Decision]>)
  const started = Date.now()
  await Promise.all([logs[0].claim(claim('room-b', keys, 2)), logs[1].claim(claim('room-b', keys, 2))])
  const [[d0], [d1]] = await Promise.all(decided)
  const ms = Date.now() - started
  assert.deepEqual(d0, d1, 'the first claim in Autobase\'s order wins, the same at both')
  assert.ok([keys[0], keys[1]].includes(d0.primary))
  assert.ok(ms <= FINAL_WITHIN, `final at both in ${ms} ms`)
  // the later claim of the same epoch is not a decision: no second one comes, and the epoch stays 1
  assert.equal(logs[0].epoch('room-b'), 1)
  console.log(`two of three: competing claims settled in ${ms} ms`)

  // the member cut off claims alone: its claim is in its log, never final
  const alone = logs[2]
  let decidedAlone = false
  alone.on('decision', () => { decidedAlone = true })
  await alone.claim(claim('room-c', keys, 0))
  const before = Date.now()
  await until('the lone claim in its own log', () => alone.lengths.length >= 1, 2000)
  // as long as a decision takes with a majority, and more
  while (Date.now() - before < 2 * FINAL_WITHIN / 3) await new Promise(resolve => setTimeout(resolve, 50))
  assert.equal(decidedAlone, false, 'a minority of one decides nothing')
  assert.equal(alone.epoch('room-c'), 0)
})
