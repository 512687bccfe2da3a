import assert from 'node:assert/strict'
import { test } from 'node:test'
import { RootPeerError } from 'root-peer-client/protocol'
import { Guard, HOST_ROOMS_FACTOR, MAX_BUDGETS, type GuardOptions, type PeerRecord } from '../src/connection/guard.js'
import { DEFAULT_LIMITS, decodeFrame, type Frame } from '../src/protocol/protocol.js'
import { PeerBudget, TokenBucket, type RateLimits } from '../src/connection/rate-limit.js'

// Fast tests of the abuse control on its own: token buckets with an explicit clock, no network.

const UNLIMITED: RateLimits = { messagesPerSecond: 0, bytesPerSecond: 0, syncsPerSecond: 0, registersPerMinute: 0, newRoomsPerMinute: 0 }
// slow rates: nothing refills measurably while a test runs on the wall clock (admit reads Date.now())
const SLOW: RateLimits = { messagesPerSecond: 1, bytesPerSecond: 1, syncsPerSecond: 1, registersPerMinute: 6, newRoomsPerMinute: 2 }

function guard (opts: Partial<GuardOptions> = {}): Guard {
  const g = new Guard({ ...SLOW, banThreshold: 3, banDuration: 60_000, onUnban: () => {}, ...opts })
  return g
}

function frame (obj: object): Frame {
  return decodeFrame(Buffer.from(JSON.stringify(obj)), DEFAULT_LIMITS)
}

/** A message frame whose payload is `size` bytes. */
function message (size: number): Frame {
  return frame({ type: 'message', roomName: 'r', message: 'x'.repeat(size) })
}
const SYNC = frame({ type: 'sync-request', roomName: 'r' })
const REGISTER = frame({ type: 'register-room', roomName: 'r' })

/** The RATE_LIMITED error `fn` throws. */
function rateLimited (fn: () => void, what: RegExp): RootPeerError {
  let caught: unknown = null
  try {
    fn()
  } catch (err) {
    caught = err
  }
  assert.ok(caught instanceof RootPeerError, `RATE_LIMITED expected, got ${String(caught)}`)
  assert.equal(caught.code, 'RATE_LIMITED')
  assert.match(caught.message, what)
  const retry = caught.details.retryAfterMs as number
  assert.ok(Number.isInteger(retry) && retry > 0, `retryAfterMs ${retry}`)
  return caught
}

/** True when `bucket` holds at least `n` tokens now (asks without taking). */
function holds (bucket: TokenBucket, n: number): boolean {
  return bucket.wait(n) === 0
}

test('TokenBucket: rate 0 is unlimited', () => {
  const b = new TokenBucket(0, 0, 0)
  for (let i = 0; i < 1000; i++) assert.equal(b.take(1_000_000, 0), 0)
  assert.equal(b.wait(Number.MAX_SAFE_INTEGER, 0), 0)
})

test('TokenBucket: a full burst at once, then one token per 1/rate seconds', () => {
  const b = new TokenBucket(10, 100, 1000)
  for (let i = 0; i < 100; i++) assert.equal(b.take(1, 1000), 0, `token ${i} of the burst`)
  assert.equal(b.take(1, 1000), 100, 'the 101st waits 100 ms (rate 10/s)')
  assert.equal(b.take(1, 1050), 50)
  assert.equal(b.take(1, 1090), 10)
  assert.equal(b.take(1, 1100), 0)
  assert.equal(b.take(1, 1100), 100)
  // a refused take takes nothing: 5 tokens there, 10 asked, then 5 taken
  assert.equal(b.take(10, 1600), 500)
  assert.equal(b.take(5, 1600), 0)
  assert.equal(b.take(1, 1600), 100)
  // wait only asks
  assert.equal(b.wait(3, 1900), 0)
  assert.equal(b.wait(3, 1900), 0)
  b.consume(3)
  assert.equal(b.wait(1, 1900), 100)
})

test('TokenBucket: refill stops at the burst', () => {
  const b = new TokenBucket(10, 100, 0)
  assert.equal(b.take(100, 0), 0)
  const later = 3_600_000
  assert.equal(b.take(100, later), 0, 'an hour later: a full burst')
  assert.equal(b.take(1, later), 100, 'but no more than one')
})

test('TokenBucket: a request bigger than the burst waits for a full bucket, then empties it', () => {
  const b = new TokenBucket(10, 100, 0)
  assert.equal(b.take(500, 0), 0, 'a full bucket lets it through')
  assert.equal(b.take(1, 0), 100, 'and is empty after it')
  // 5 s later: half a bucket; a request bigger than the burst waits for the other half
  assert.equal(b.wait(500, 5000), 5000)
  assert.equal(b.take(50, 5000), 0)
  assert.equal(b.wait(500, 5000), 10_000, 'empty: the time a whole burst needs')
  assert.equal(b.wait(10_000, 10_000), 5000, 'half full: the time the other half needs, not 10,000 tokens')
  assert.equal(b.take(10_000, 15_000), 0)
  assert.equal(b.take(1, 15_000), 100, 'and it emptied the bucket')
  // a burst below 1 is 1
  const tiny = new TokenBucket(0.5, 0, 0)
  assert.equal(tiny.take(1, 0), 0)
  assert.equal(tiny.take(1, 0), 2000)
})

test('PeerBudget: each bucket from its limit; bursts are 10 s of a per-second rate and 1 min of a per-minute one', () => {
  const budget = new PeerBudget({ messagesPerSecond: 3, bytesPerSecond: 7, syncsPerSecond: 2, registersPerMinute: 12, newRoomsPerMinute: 6 })
  const now = Date.now()
  const cases: Array<[TokenBucket, number, number]> = [
    // bucket, burst, ms one token takes
    [budget.messages, 30, 334],
    [budget.bytes, 70, 143],
    [budget.syncs, 20, 500],
    [budget.registers, 12, 5000],
    [budget.newRooms, 6, 10_000]
  ]
  for (const [bucket, burst, ms] of cases) {
    assert.equal(bucket.take(burst, now), 0)
    assert.equal(bucket.take(1, now), ms)
  }
  const unlimited = new PeerBudget(UNLIMITED)
  for (const bucket of [unlimited.messages, unlimited.bytes, unlimited.syncs, unlimited.registers, unlimited.newRooms]) {
    assert.equal(bucket.take(1e9, now), 0)
  }
})

test('Guard.admit: a message charges the message and byte buckets; a refused one charges nothing', () => {
  const g = guard()
  const r = g.record('peer')
  const b = r.budget
  g.admit(r, message(8))
  assert.ok(holds(b.messages, 9) && !holds(b.messages, 10), 'one message charged')
  assert.ok(holds(b.bytes, 2) && !holds(b.bytes, 3), '8 bytes charged')
  assert.ok(holds(b.syncs, 10) && holds(b.registers, 6) && holds(b.newRooms, 2), 'no other bucket charged')

  // 5 bytes do not fit in the 2 left: refused, and neither bucket is charged
  const err = rateLimited(() => g.admit(r, message(5)), /too many messages/)
  assert.ok((err.details.retryAfterMs as number) > 2000, 'about 3 s until 3 more bytes')
  assert.ok(holds(b.messages, 9) && holds(b.bytes, 2))
  g.admit(r, message(2))
  assert.ok(holds(b.messages, 8) && !holds(b.messages, 9) && !holds(b.bytes, 1))

  // the message count bounds too, with bytes to spare
  const g2 = guard({ bytesPerSecond: 0 })
  const r2 = g2.record('peer')
  for (let i = 0; i < 10; i++) g2.admit(r2, message(1000))
  rateLimited(() => g2.admit(r2, message(1)), /too many messages/)
})

test('Guard.admit: sync-request and register-room frames each charge their own bucket only', () => {
  const g = guard()
  const r = g.record('peer')
  for (let i = 0; i < 10; i++) g.admit(r, SYNC)
  const err = rateLimited(() => g.admit(r, SYNC), /too many sync-requests/)
  assert.ok((err.details.retryAfterMs as number) > 900)
  for (let i = 0; i < 6; i++) g.admit(r, REGISTER)
  rateLimited(() => g.admit(r, REGISTER), /too many register-room frames/)
  assert.ok(holds(r.budget.messages, 10) && holds(r.budget.bytes, 10) && holds(r.budget.newRooms, 2))
  g.admit(r, message(10))
  // another key's budget is its own
  const other = g.record('other')
  g.admit(other, SYNC)
  g.admit(other, REGISTER)
})

test('Guard.admit: rates of 0 never refuse', () => {
  const g = guard(UNLIMITED)
  const r = g.record('peer')
  const big = message(60_000)
  for (let i = 0; i < 5000; i++) {
    g.admit(r, big)
    g.admit(r, SYNC)
    g.admit(r, REGISTER)
    g.admitNewRoom(r)
  }
})

test('Guard.record: the same record for the same key, so a reconnect does not refill the budget', () => {
  const g = guard()
  const r = g.record('peer', '10.0.0.1')
  for (let i = 0; i < 10; i++) g.admit(r, SYNC)
  const again = g.record('peer', '10.0.0.2')
  assert.equal(again, r)
  rateLimited(() => g.admit(again, SYNC), /sync-requests/)
  assert.notEqual(g.record('other'), r)
  assert.deepEqual(g.remembered, { keys: 2, hosts: 2 })
  // the address bucket is the address's: shared by every key from it, kept when the transport does not say
  const fromHost1 = g.record('third', '10.0.0.1')
  assert.equal(g.record('fourth', '10.0.0.1').hostRooms, fromHost1.hostRooms)
  assert.notEqual(r.hostRooms, fromHost1.hostRooms, 'peer is now charged to 10.0.0.2')
  const kept = r.hostRooms
  assert.equal(g.record('peer').hostRooms, kept)
  assert.equal(g.record('fifth').hostRooms, null)
  g.close()
  assert.deepEqual(g.remembered, { keys: 0, hosts: 0 })
})

test('Guard.record: at most MAX_BUDGETS keys and addresses; the least recently used is forgotten', () => {
  const g = guard()
  const first = g.record('key-0', 'host-0')
  const second = g.record('key-1', 'host-1')
  for (let i = 0; i < 10; i++) g.admit(first, SYNC)
  for (let i = 2; i < MAX_BUDGETS; i++) g.record(`key-${i}`, `host-${i}`)
  assert.deepEqual(g.remembered, { keys: MAX_BUDGETS, hosts: MAX_BUDGETS })
  // key-0 used again: key-1 is now the least recently used
  assert.equal(g.record('key-0'), first)
  g.record('key-new', 'host-new')
  assert.deepEqual(g.remembered, { keys: MAX_BUDGETS, hosts: MAX_BUDGETS })
  assert.equal(g.record('key-0'), first, 'kept: used recently')
  rateLimited(() => g.admit(first, SYNC), /sync-requests/)
  const fresh = g.record('key-1')
  assert.notEqual(fresh, second, 'forgotten: a new record')
  // host-0 was not used again, so it was the first address forgotten
  const host0 = g.record('x', 'host-0').hostRooms
  assert.notEqual(host0, first.hostRooms)

  // a plain loop of MAX_BUDGETS + 1 distinct keys forgets the first, whose budget is then fresh
  const g2 = guard()
  const spent = g2.record('k0')
  for (let i = 0; i < 10; i++) g2.admit(spent, SYNC)
  for (let i = 1; i <= MAX_BUDGETS; i++) g2.record(`k${i}`)
  assert.equal(g2.remembered.keys, MAX_BUDGETS)
  const reborn = g2.record('k0')
  assert.notEqual(reborn, spent)
  for (let i = 0; i < 10; i++) g2.admit(reborn, SYNC)
})

test('Guard.admitNewRoom: charges the key and its address; an address allows HOST_ROOMS_FACTOR times a key', () => {
  const g = guard()
  const a = g.record('a', 'nat')
  g.admitNewRoom(a)
  g.admitNewRoom(a)
  const err = rateLimited(() => g.admitNewRoom(a), /too many new rooms/)
  assert.ok((err.details.retryAfterMs as number) > 25_000, 'a per-minute budget of 2: ~30 s per room')
  // other keys behind the same address: the address's budget is HOST_ROOMS_FACTOR × 2, 2 of which a spent
  const perHost = SLOW.newRoomsPerMinute * HOST_ROOMS_FACTOR
  let created = 2
  for (let k = 1; created < perHost; k++) {
    const r = g.record(`key-${k}`, 'nat')
    g.admitNewRoom(r)
    g.admitNewRoom(r)
    created += 2
  }
  assert.equal(created, perHost)
  // a fresh key behind that address is refused by the address, and its own budget is not charged
  const late = g.record('late', 'nat')
  rateLimited(() => g.admitNewRoom(late), /too many new rooms/)
  assert.ok(holds(late.budget.newRooms, 2))
  // the same key from another address has its own key budget, and that address's
  const moved = g.record('late', 'elsewhere')
  g.admitNewRoom(moved)
  g.admitNewRoom(moved)
  rateLimited(() => g.admitNewRoom(moved), /new rooms/)
  assert.ok(holds(moved.hostRooms!, perHost - 2) && !holds(moved.hostRooms!, perHost - 1))
  // without an address, only the key is charged
  const bare = g.record('bare')
  assert.equal(bare.hostRooms, null)
  g.admitNewRoom(bare)
  g.admitNewRoom(bare)
  rateLimited(() => g.admitNewRoom(bare), /new rooms/)
})

test('Guard.noteRefusal: banThreshold refusals within a minute earn a ban; the count restarts after the window', () => {
  const g = guard({ banThreshold: 3 })
  const r: PeerRecord = g.record('peer')
  const t0 = r.windowStart
  assert.equal(g.noteRefusal(r, t0), false)
  assert.equal(g.noteRefusal(r, t0 + 1000), false)
  assert.equal(g.noteRefusal(r, t0 + 60_000), true, 'the third within the minute')
  assert.equal(g.noteRefusal(r, t0 + 60_000), true, 'and every one after it')
  // past the window: counting starts again at 1
  assert.equal(g.noteRefusal(r, t0 + 60_001), false)
  assert.equal(r.refusals, 1)
  assert.equal(r.windowStart, t0 + 60_001)
  assert.equal(g.noteRefusal(r, t0 + 60_002), false)
  assert.equal(g.noteRefusal(r, t0 + 120_001), true)
  // the count is the key's, kept across its connections
  assert.equal(g.record('peer').refusals, 3)
  const never = guard({ banThreshold: 0 })
  const n = never.record('peer')
  for (let i = 0; i < 1000; i++) assert.equal(never.noteRefusal(n, n.windowStart), false)
})

test('Guard.ban: banned until banDuration has passed, then onUnban is called once', { timeout: 10_000 }, async () => {
  const unbanned: string[] = []
  let resolve: (id: string) => void = () => {}
  const ended = new Promise<string>(done => { resolve = done })
  const g = guard({ banDuration: 30, onUnban: id => { unbanned.push(id); resolve(id) } })
  // the ban's timer is unref'd (a ban never keeps the process up): this keeps the test's event loop alive
  const alive = setInterval(() => {}, 1000)
  try {
    const started = Date.now()
    assert.equal(g.banDuration, 30)
    g.ban('bad')
    g.ban('bad')
    assert.equal(g.isBanned('bad'), true)
    assert.equal(g.isBanned('good'), false)
    assert.equal(g.banned, 1, 'a second ban of the same key is not another')
    assert.equal(await ended, 'bad')
    assert.ok(Date.now() - started >= 25, 'not before banDuration')
    assert.equal(g.isBanned('bad'), false)
    assert.equal(g.banned, 0)
    assert.deepEqual(unbanned, ['bad'])
    // banned again later: a new ban
    g.ban('bad')
    assert.equal(g.isBanned('bad'), true)
  } finally {
    clearInterval(alive)
    g.close()
  }
})

test('Guard.ban: at most 10,000 bans, the oldest unbanned first; close clears them without onUnban', () => {
  const unbanned: string[] = []
  const g = guard({ banDuration: 3_600_000, onUnban: id => unbanned.push(id) })
  for (let i = 0; i < 10_000; i++) g.ban(`k${i}`)
  assert.equal(g.banned, 10_000)
  assert.deepEqual(unbanned, [])
  g.ban('k-new')
  assert.equal(g.banned, 10_000)
  assert.deepEqual(unbanned, ['k0'])
  assert.equal(g.isBanned('k0'), false)
  assert.equal(g.isBanned('k1'), true)
  assert.equal(g.isBanned('k-new'), true)
  g.close()
  assert.equal(g.banned, 0)
  assert.equal(g.isBanned('k1'), false)
  assert.deepEqual(unbanned, ['k0'])
})
