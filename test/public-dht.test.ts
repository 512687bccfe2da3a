import assert from 'node:assert/strict'
import { once } from 'node:events'
import fs from 'node:fs/promises'
import { test } from 'node:test'
import crypto from 'hypercore-crypto'
import { roomKeyPair, signAccess, signedRoomName, signMessage } from 'root-peer-client/protocol'
import { bootstrapEnv, client, daemon, RawPeer, rawPeer, rootPeer, runBin, teardown, testnet, tmpDir } from './helpers.js'

/** The daemon child's resident memory, in MiB. */
async function rssMiB (pid: number): Promise<number> {
  const status = await fs.readFile(`/proc/${pid}/status`, 'utf8')
  return Number(/VmRSS:\s+(\d+) kB/.exec(status)![1]) / 1024
}

/**
 * Writes a frame header announcing `length` bytes straight onto the transport, under the Noise layer, then `body`
 * bytes of it. (UDX holds up to 64 KiB of a frame natively before it hands the bytes on; past that the daemon sees them.)
 */
function halfFrame (peer: RawPeer, length: number, body: number): void {
  const raw = peer.conn!.rawStream
  raw.on('error', () => {})
  raw.write(Buffer.from([length & 0xff, (length >> 8) & 0xff, (length >> 16) & 0xff]))
  for (let sent = 0; sent < body; sent += 64 * 1024) raw.write(Buffer.alloc(Math.min(64 * 1024, body - sent)))
}

function closed (peer: RawPeer): Promise<void> {
  // not events.once: a reset before the close is an 'error', which once() would reject with
  return peer.closed ? Promise.resolve() : new Promise(resolve => peer.conn!.once('close', () => resolve()))
}

test('half-sent frames: a length over MAX_FRAME_BYTES ends the connection before its body is held', async t => {
  const net = await testnet(t)
  const storage = await tmpDir(t)
  const d = daemon(t, [], { STORAGE_DIR: storage, DHT_BOOTSTRAP: bootstrapEnv(net), DHT_HOST: '127.0.0.1', STATS_INTERVAL: '0' })
  await d.ready()
  const before = await rssMiB(d.child.pid!)
  const started = Date.now()
  const attackers = await Promise.all(Array.from({ length: 4 }, () => rawPeer(t, net)))
  for (const a of attackers) {
    await a.nextOfType('root-peer-announcement')
    halfFrame(a, 16 * 1024 * 1024 - 1, 15 * 1024 * 1024)
  }
  const refusals = await Promise.all(attackers.map(a => a.nextOfType('error')))
  await Promise.all(attackers.map(closed))
  const seconds = (Date.now() - started) / 1000
  const after = await rssMiB(d.child.pid!)
  console.log(`4 connections announcing 16 MiB: refused ${refusals.map(r => r.code).join(', ')}, closed after ${seconds.toFixed(2)} s; daemon RSS ${before.toFixed(0)} -> ${after.toFixed(0)} MiB`)
  for (const r of refusals) assert.equal(r.code, 'FRAME_TOO_LARGE')
  assert.ok(after - before < 32, `the daemon grew by ${(after - before).toFixed(0)} MiB`)
  // and it still serves
  const good = await client(t, net)
  assert.equal((await good.sendMessage('after', 'hello', { id: 'm' })).messageIndex, 0)
})

test('half-sent frames: a frame not finished within FRAME_TIMEOUT ends the connection', async t => {
  const net = await testnet(t)
  const rp = await rootPeer(t, net, { frameTimeout: 1500 })
  const a = await rawPeer(t, net)
  await a.nextOfType('root-peer-announcement')
  const started = Date.now()
  halfFrame(a, 200_000, 100_000)
  const refusal = await a.nextOfType('error')
  await closed(a)
  const seconds = (Date.now() - started) / 1000
  console.log(`a frame stopped half-way: ${refusal.code} after ${seconds.toFixed(2)} s (FRAME_TIMEOUT 1.5 s); inbound bytes held now ${rp.inboundBytes}`)
  assert.equal(refusal.code, 'FRAME_INCOMPLETE')
  assert.ok(seconds >= 1.4 && seconds < 5)
  assert.equal(rp.counters.droppedPeers['frame-timeout'], 1)
})

test('half-sent frames: all connections together hold at most MAX_BUFFERED_BYTES', async t => {
  const net = await testnet(t)
  const max = 1024 * 1024
  const rp = await rootPeer(t, net, { maxBufferedBytes: max })
  const attackers = await Promise.all(Array.from({ length: 8 }, () => rawPeer(t, net)))
  let most = 0
  const watch = setInterval(() => { most = Math.max(most, rp.inboundBytes) }, 5)
  teardown(t, () => clearInterval(watch))
  for (const a of attackers) {
    await a.nextOfType('root-peer-announcement')
    halfFrame(a, 200_000, 150_000)
  }
  // every attacker has announced 200 kB: at most five fit in 1 MiB, the other three are dropped
  // eslint-disable-next-line no-unmodified-loop-condition
  while ((rp.counters.droppedPeers['buffer-full'] ?? 0) < 3) {
    const [, err] = await once(rp, 'peer-dropped')
    assert.equal(err.code, 'OVERLOADED')
  }
  most = Math.max(most, rp.inboundBytes)
  console.log(`8 connections holding 200 kB frames: ${rp.counters.droppedPeers['buffer-full']} dropped with OVERLOADED, ${rp.peers.size} left; at most ${most} bytes held (cap ${max})`)
  assert.ok(most <= max)
  assert.equal(rp.counters.droppedPeers['buffer-full'], 3)
  // a good client is served meanwhile (the library's client: it redials a dial the daemon never saw)
  const good = await client(t, net)
  assert.equal((await good.sendMessage('after', 'hello', { id: 'm' })).messageIndex, 0)
})

test('idle connections: silent ones are dropped after FIRST_FRAME_TIMEOUT, so they cannot lock clients out', async t => {
  const net = await testnet(t)
  const rp = await rootPeer(t, net, { maxPeers: 3, firstFrameTimeout: 1500 })
  const silent = await Promise.all(Array.from({ length: 3 }, () => rawPeer(t, net)))
  const started = Date.now()
  const idle = await Promise.all(silent.map(s => s.nextOfType('error')))
  await Promise.all(silent.map(closed))
  const seconds = (Date.now() - started) / 1000
  const member = await client(t, net)
  await member.registerRoom('after-the-silent-ones')
  console.log(`3 silent connections at MAX_PEERS=3: ${idle.map(e => e.code).join(', ')} after ${seconds.toFixed(2)} s; a client then registered a room; idle disconnects ${rp.counters.idleDisconnects}`)
  for (const e of idle) assert.equal(e.code, 'IDLE')
  assert.equal(rp.counters.idleDisconnects, 3)
})

test('idle connections: at MAX_PEERS a newcomer takes the place of the peer idle longest; MAX_PEERS_PER_HOST caps one address', async t => {
  const net = await testnet(t)
  const rp = await rootPeer(t, net, { maxPeers: 2, firstFrameTimeout: 0, idleEvictAfter: 500 })
  const quiet = await rawPeer(t, net)
  quiet.send({ type: 'register-room', roomName: 'q', requestId: 1 })
  await quiet.next(f => f.requestId === 1)
  const busy = await rawPeer(t, net)
  // the quiet one goes idle past IDLE_EVICT_AFTER while the busy one talks every 100 ms
  const idleSince = Date.now()
  for (let i = 0; Date.now() - idleSince < 700; i++) {
    busy.send({ type: 'sync-request', roomName: 'q', requestId: `b${i}` })
    await busy.next(f => f.requestId === `b${i}`)
    await new Promise(resolve => setTimeout(resolve, 100))
  }
  const newcomer = await rawPeer(t, net)
  await newcomer.nextOfType('root-peer-announcement')
  const evicted = await quiet.nextOfType('error')
  await closed(quiet)
  console.log(`MAX_PEERS=2: the newcomer got in; the peer idle ${Date.now() - idleSince} ms got ${evicted.code}; the busy one is ${busy.closed ? 'gone' : 'still connected'}`)
  assert.equal(evicted.code, 'IDLE')
  assert.equal(busy.closed, false)
  assert.equal(rp.peers.size, 2)

  const capped = await rootPeer(t, net, { maxPeersPerHost: 2 })
  const peers: RawPeer[] = []
  for (let i = 0; i < 3; i++) {
    const p = new RawPeer(net)
    teardown(t, () => p.close())
    const c = once(p.swarm, 'connection')
    p.swarm.joinPeer(capped.publicKey!)
    await c
    peers.push(p)
  }
  // RawPeer.connect attaches its frame reader; these dial directly, so read the first frame of each
  const first = await Promise.all(peers.map(async p => {
    const conn = [...p.swarm.connections][0]
    conn.on('error', () => {})
    const [data] = await once(conn, 'data')
    return JSON.parse(data.toString())
  }))
  const refused = first.filter(f => f.code === 'TOO_MANY_PEERS')
  console.log(`MAX_PEERS_PER_HOST=2 from 127.0.0.1: ${first.length - refused.length} announced, ${refused.length} refused (${JSON.stringify(refused[0])})`)
  assert.equal(refused.length, 1)
  assert.equal(refused[0].maxPeersPerHost, 2)
})

test('budgets: a key that reconnects keeps its spent budget, and one address shares a new-room budget', async t => {
  const net = await testnet(t)
  const rp = await rootPeer(t, net, { newRoomsPerMinute: 3 })
  const keyPair = crypto.keyPair()
  const first = new RawPeer(net, keyPair)
  teardown(t, () => first.close())
  await first.connect()
  for (let i = 0; i < 3; i++) first.send({ type: 'register-room', roomName: `k-${i}`, requestId: i })
  for (let i = 0; i < 3; i++) assert.equal((await first.next(f => f.requestId === i)).type, 'room-registered')
  await first.close()
  const again = new RawPeer(net, keyPair)
  teardown(t, () => again.close())
  await again.connect()
  again.send({ type: 'register-room', roomName: 'k-3', requestId: 3 })
  const limited = await again.next(f => f.requestId === 3)
  console.log(`one key, 3 new rooms a minute: 3 created, reconnected, the 4th: ${limited.code} (retry after ${limited.retryAfterMs} ms)`)
  assert.equal(limited.code, 'RATE_LIMITED')

  // 27 more from fresh keys on the same address: the address may create 10 × 3 = 30 in all
  let created = 3
  let refused = 0
  for (let k = 0; k < 10; k++) {
    const p = await rawPeer(t, net)
    for (let i = 0; i < 3; i++) p.send({ type: 'register-room', roomName: `h-${k}-${i}`, requestId: i })
    for (let i = 0; i < 3; i++) {
      const answer = await p.next(f => f.requestId === i)
      if (answer.type === 'room-registered') created++
      else if (answer.code === 'RATE_LIMITED') refused++
    }
    await p.close()
  }
  console.log(`10 fresh keys from 127.0.0.1, 3 rooms each: the address created ${created} rooms in all, ${refused} refused; budgets remembered ${JSON.stringify(rp.budgets)}`)
  assert.equal(created, 30)
  assert.equal(refused, 3)
})

test('MAX_ROOMS: strangers\' empty rooms give their place to a signed room and to a room with history, and expire', async t => {
  const net = await testnet(t)
  const rp = await rootPeer(t, net, { maxRooms: 20, newRoomsPerMinute: 0, emptyRoomTtl: 2000 })
  for (const s of [0, 1]) {
    const stranger = await rawPeer(t, net)
    for (let i = 0; i < 10; i++) stranger.send({ type: 'register-room', roomName: `junk-${s}-${i}`, requestId: i })
    for (let i = 0; i < 10; i++) assert.equal((await stranger.next(f => f.requestId === i)).type, 'room-registered')
  }
  assert.equal(rp.roomCounts.total, 20)
  const member = await client(t, net)
  const { roomName } = await member.registerRoom(Buffer.from('a real room'))
  assert.equal((await member.sendMessage(roomName, 'ciphertext', { id: 'm0' })).messageIndex, 0)
  assert.equal((await member.sendMessage('plain-room', 'hello', { id: 'p0' })).messageIndex, 0)
  console.log(`MAX_ROOMS=20 filled by strangers: the signed room and a plain room with a message got in; ${rp.counters.roomsRemoved.evicted} empty rooms evicted; ${rp.roomCounts.total} rooms`)
  assert.equal(rp.counters.roomsRemoved.evicted, 2)
  assert.equal(rp.roomCounts.total, 20)

  // the strangers' rooms expire after EMPTY_ROOM_TTL; rooms with history stay
  const started = Date.now()
  while (rp.roomCounts.total > 2) await once(rp, 'room-removed')
  console.log(`EMPTY_ROOM_TTL=2 s: ${rp.counters.roomsRemoved.expired} empty rooms expired within ${((Date.now() - started) / 1000).toFixed(1)} s; left: ${rp.roomCounts.total}`)
  assert.equal(rp.counters.roomsRemoved.expired, 18)
  assert.deepEqual((await member.syncPage('plain-room', 0)).messages.map(m => m.message), ['hello'])
})

test('signed rooms: an unsigned write racing the signing register never reaches members, and a squatter takes no member ids', async t => {
  const net = await testnet(t)
  const rp = await rootPeer(t, net)
  const rootKey = rp.publicKey!.toString('hex')
  const member = await rawPeer(t, net)
  const { challenge } = await member.nextOfType('root-peer-announcement')
  const outsider = await rawPeer(t, net)
  await outsider.nextOfType('root-peer-announcement')
  let unsignedAcked = 0
  const trials = 30
  for (let i = 0; i < trials; i++) {
    const kp = roomKeyPair(`race room ${i}`)
    const roomName = signedRoomName(kp.publicKey)
    const writerPublicKey = kp.publicKey.toString('hex')
    member.send({ type: 'register-room', roomName, writerPublicKey, signature: signAccess(kp.secretKey, rootKey, challenge, roomName), requestId: `r${i}` })
    outsider.send({ type: 'message', roomName, message: 'squat', id: 'msg-1' })
    assert.equal((await member.next(f => f.requestId === `r${i}`)).type, 'room-registered')
    const answer = await outsider.next(f => f.id === 'msg-1' && f.roomName === roomName)
    if (answer.type === 'message-ack') unsignedAcked++
    // the member's own msg-1 is stored, never a duplicate of the outsider's
    const message = `ciphertext ${i}`
    member.send({ type: 'message', roomName, message, id: 'msg-1', signature: signMessage(kp.secretKey, roomName, 'msg-1', message) })
    const ack = await member.next(f => f.id === 'msg-1' && f.roomName === roomName)
    assert.equal(ack.type, 'message-ack')
    assert.equal(ack.duplicate, undefined)
    member.send({ type: 'sync-request', roomName, lastIndex: 0, signature: signAccess(kp.secretKey, rootKey, challenge, roomName), requestId: `s${i}` })
    const page = await member.next(f => f.requestId === `s${i}`)
    assert.deepEqual(page.messages.map((m: any) => m.message), [message], `trial ${i}: ${JSON.stringify(page)}`)
    assert.equal(page.firstIndex, ack.messageIndex)
  }
  console.log(`${trials} races of a signed register-room and an unsigned message: the unsigned one was acked ${unsignedAcked} times (stored below the signed history), served to members 0 times; every member msg-1 stored, none a duplicate`)

  // squatting: the outsider's messages are stored and acked before the members come
  const kp = roomKeyPair('squatted room')
  const roomName = signedRoomName(kp.publicKey)
  for (let i = 0; i < 3; i++) {
    outsider.send({ type: 'message', roomName, message: `squat ${i}`, id: `msg-${i}` })
    assert.equal((await outsider.next(f => f.id === `msg-${i}` && f.roomName === roomName)).messageIndex, i)
  }
  member.send({ type: 'register-room', roomName, writerPublicKey: kp.publicKey.toString('hex'), signature: signAccess(kp.secretKey, rootKey, challenge, roomName), requestId: 'squat-reg' })
  assert.equal((await member.next(f => f.requestId === 'squat-reg')).type, 'room-registered')
  const acks = []
  for (let i = 0; i < 3; i++) {
    const message = `member ${i}`
    member.send({ type: 'message', roomName, message, id: `msg-${i}`, signature: signMessage(kp.secretKey, roomName, `msg-${i}`, message) })
    acks.push(await member.next(f => f.id === `msg-${i}` && f.roomName === roomName))
  }
  assert.deepEqual(acks.map(a => [a.type, a.messageIndex, a.duplicate]), [['message-ack', 3, undefined], ['message-ack', 4, undefined], ['message-ack', 5, undefined]])
  member.send({ type: 'sync-request', roomName, lastIndex: 0, signature: signAccess(kp.secretKey, rootKey, challenge, roomName), requestId: 'squat-sync' })
  const page = await member.next(f => f.requestId === 'squat-sync')
  assert.equal(page.firstIndex, 3)
  assert.deepEqual(page.messages.map((m: any) => m.message), ['member 0', 'member 1', 'member 2'])
  console.log(`a squatter's 3 acked messages before the members came: members are served from firstIndex ${page.firstIndex}, ${page.messages.length} of their own messages, ids msg-0..2 stored again (none a duplicate)`)
})

test('root-peer rooms --remove: a room removed on purpose is gone, and comes back empty when registered again', async t => {
  const net = await testnet(t)
  const storageDir = await tmpDir(t)
  const first = await rootPeer(t, net, { storageDir })
  const member = await client(t, net)
  for (let i = 0; i < 3; i++) await member.sendMessage('doomed', `m${i}`, { id: `m${i}` })
  await member.sendMessage('kept', 'k', { id: 'k' })
  await member.close()
  await first.close()
  const removed = await runBin(['rooms', '--remove', 'doomed'], { STORAGE_DIR: storageDir })
  assert.equal(removed.code, 0, removed.stderr)
  console.log(`rooms --remove doomed: ${removed.stdout.trim()}`)
  assert.deepEqual(JSON.parse(removed.stdout), { removed: 'doomed', messages: 3, bytes: JSON.parse(removed.stdout).bytes })
  const unknown = await runBin(['rooms', '--remove', 'never-was'], { STORAGE_DIR: storageDir })
  assert.equal(unknown.code, 1)
  assert.match(unknown.stderr, /UNKNOWN_ROOM|never-was/)
  const listed = await runBin(['rooms', '--json'], { STORAGE_DIR: storageDir })
  assert.deepEqual(JSON.parse(listed.stdout).map((r: any) => r.name), ['kept'])

  const again = await rootPeer(t, net, { storageDir })
  assert.equal(again.roomCounts.total, 1)
  const back = await client(t, net)
  assert.equal((await back.sendMessage('doomed', 'fresh', { id: 'm0' })).messageIndex, 0)
  assert.deepEqual((await back.syncPage('doomed', 0)).messages.map(m => m.message), ['fresh'])
  assert.deepEqual((await back.syncPage('kept', 0)).messages.map(m => m.message), ['k'])
})
