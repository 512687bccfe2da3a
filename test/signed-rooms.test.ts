import assert from 'node:assert/strict'
import { EventEmitter, once } from 'node:events'
import fs from 'node:fs/promises'
import path from 'node:path'
import { test } from 'node:test'
import HyperDHT from 'hyperdht'
import type { Testnet } from 'hyperdht/testnet.js'
import Hyperswarm, { type NoiseStream } from 'hyperswarm'
import crypto from 'hypercore-crypto'
import { RootPeerClient, type RecordRejected } from 'root-peer-client'
import { DEFAULT_LIMITS } from '../src/protocol/protocol.js'
import { roomKeyPair, signable, signAccess, signMessage, signedRoomName, verifyAccess } from 'root-peer-client/protocol'
import { client, DISCOVERY, RawPeer, rawPeer, rootPeer, runBin, teardown, testnet, tmpDir } from './helpers.js'

const ROOM_KEY = Buffer.from('the room key every member holds, and the root peer never sees')

test('a signed room: members write and read with the room key alone; an outsider who knows the name can do neither, nor learn its size', async t => {
  const net = await testnet(t)
  const rp = await rootPeer(t, net)
  const member = await client(t, net)
  const { roomName } = await member.registerRoom(ROOM_KEY)
  const kp = roomKeyPair(ROOM_KEY)
  // the derivation docs/protocol.md documents
  assert.equal(roomName, crypto.discoveryKey(crypto.keyPair(crypto.hash(ROOM_KEY)).publicKey).toString('hex'))
  for (let i = 0; i < 3; i++) assert.equal((await member.sendMessage(roomName, `ciphertext ${i}`, { id: `m${i}` })).messageIndex, i)
  const page = await member.syncPage(roomName, 0)
  assert.deepEqual(page.messages.map(m => m.message), ['ciphertext 0', 'ciphertext 1', 'ciphertext 2'])
  // each record keeps its signature, so members can check it themselves
  assert.equal(page.messages[1].signature, signMessage(kp.secretKey, roomName, 'm1', 'ciphertext 1'))

  const outsider = await rawPeer(t, net)
  const announcement = await outsider.nextOfType('root-peer-announcement')
  assert.match(announcement.challenge, /^[0-9a-f]{64}$/)
  assert.equal(announcement.access, 2)
  const other = crypto.keyPair()
  const forged = signMessage(other.secretKey, roomName, 'x1', 'junk')
  const refusals: Array<[string, object, string]> = [
    ['a message without a signature', { type: 'message', roomName, message: 'junk', id: 'x0' }, 'UNAUTHORIZED'],
    ['a message signed by another key', { type: 'message', roomName, message: 'junk', id: 'x1', signature: forged }, 'UNAUTHORIZED'],
    ['a signed message altered', { type: 'message', roomName, message: 'ciphertext 1 altered', id: 'm1', signature: page.messages[1].signature }, 'UNAUTHORIZED'],
    ['a message without an id', { type: 'message', roomName, message: 'junk' }, 'UNAUTHORIZED'],
    ['a sync-request without a signature', { type: 'sync-request', roomName, lastIndex: 0, requestId: 'sync' }, 'UNAUTHORIZED'],
    ['a sync-request signed by another key', { type: 'sync-request', roomName, lastIndex: 0, requestId: 'sync2', signature: signAccess(other.secretKey, announcement.publicKey, announcement.challenge, roomName) }, 'UNAUTHORIZED'],
    ['register-room without the key', { type: 'register-room', roomName, requestId: 'reg' }, 'UNAUTHORIZED'],
    ['register-room claiming the name with another key', { type: 'register-room', roomName, writerPublicKey: other.publicKey.toString('hex'), signature: signAccess(other.secretKey, announcement.publicKey, announcement.challenge, roomName), requestId: 'reg2' }, 'BAD_ROOM_KEY']
  ]
  for (const [what, frame, code] of refusals) {
    outsider.send(frame)
    const answer = await outsider.nextOfType('error')
    assert.equal(answer.code, code, what)
    // nothing of the room's contents or size
    assert.deepEqual(Object.keys(answer).filter(k => ['messages', 'totalMessages', 'messageCount', 'nextIndex'].includes(k)), [], what)
  }
  assert.equal((await member.syncPage(roomName, 0)).totalMessages, 3, 'nothing the outsider sent was stored')
  assert.ok(rp.counters.errors.UNAUTHORIZED >= 7)
})

test('a read signed over one connection\'s challenge is refused on another: no replay', async t => {
  const net = await testnet(t)
  await rootPeer(t, net)
  const kp = roomKeyPair(ROOM_KEY)
  const roomName = signedRoomName(kp.publicKey)
  const a = await rawPeer(t, net)
  const announcementA = await a.nextOfType('root-peer-announcement')
  const challengeA = announcementA.challenge
  const accessA = signAccess(kp.secretKey, announcementA.publicKey, challengeA, roomName)
  a.send({ type: 'register-room', roomName, writerPublicKey: kp.publicKey.toString('hex'), signature: accessA, requestId: 'r' })
  assert.equal((await a.next(f => f.requestId === 'r')).type, 'room-registered')
  a.send({ type: 'message', roomName, message: 'secret', id: 's0', signature: signMessage(kp.secretKey, roomName, 's0', 'secret') })
  assert.equal((await a.next(f => f.id === 's0')).type, 'message-ack')
  // the member's own read, signed over its own challenge, works
  a.send({ type: 'sync-request', roomName, lastIndex: 0, signature: accessA, requestId: 'own' })
  assert.deepEqual((await a.next(f => f.requestId === 'own')).messages.map((m: any) => m.message), ['secret'])

  const b = await rawPeer(t, net)
  const challengeB = (await b.nextOfType('root-peer-announcement')).challenge
  assert.notEqual(challengeB, challengeA)
  b.send({ type: 'sync-request', roomName, lastIndex: 0, signature: accessA, requestId: 'replay' })
  const replayed = await b.next(f => f.requestId === 'replay')
  assert.equal(replayed.code, 'UNAUTHORIZED')
  assert.equal(replayed.messages, undefined)
  b.send({ type: 'register-room', roomName, writerPublicKey: kp.publicKey.toString('hex'), signature: accessA, requestId: 'replay-reg' })
  assert.equal((await b.next(f => f.requestId === 'replay-reg')).code, 'UNAUTHORIZED')
})

test('REQUIRE_SIGNED_ROOMS refuses unsigned rooms; a signed room stays signed across a restart, even without the state file', async t => {
  const net = await testnet(t)
  const storage = await tmpDir(t)
  const rp = await rootPeer(t, net, { storageDir: storage, requireSignedRooms: true })
  const peer = await rawPeer(t, net)
  peer.send({ type: 'register-room', roomName: 'lobby', requestId: 1 })
  assert.equal((await peer.next(f => f.requestId === 1)).code, 'UNAUTHORIZED')
  peer.send({ type: 'message', roomName: 'lobby', message: 'hi', id: 'h' })
  assert.equal((await peer.next(f => f.id === 'h')).code, 'UNAUTHORIZED')
  const member = await client(t, net)
  const { roomName } = await member.registerRoom(ROOM_KEY)
  assert.equal((await member.sendMessage(roomName, 'kept')).messageIndex, 0)
  assert.equal(rp.stats().totalRooms, 1)
  await member.close()
  await peer.close()
  await rp.close()
  await fs.rm(path.join(storage, 'root-peer-state.json'))
  await fs.rm(path.join(storage, 'root-peer-state.prev.json'), { force: true })

  // without REQUIRE_SIGNED_ROOMS now: the room is signed because the store says so
  await rootPeer(t, net, { storageDir: storage })
  const outsider = await rawPeer(t, net)
  outsider.send({ type: 'sync-request', roomName, requestId: 'peek' })
  assert.equal((await outsider.next(f => f.requestId === 'peek')).code, 'UNAUTHORIZED')
  outsider.send({ type: 'message', roomName, message: 'junk', id: 'j' })
  assert.equal((await outsider.next(f => f.id === 'j')).code, 'UNAUTHORIZED')
  const back = await client(t, net)
  await back.registerRoom(ROOM_KEY)
  const page = await back.syncPage(roomName, 0)
  assert.deepEqual(page.messages.map(m => m.message), ['kept'])
  // and an unsigned room is an ordinary room again
  assert.equal((await back.sendMessage('lobby', 'open')).messageIndex, 0)
})

test('an unsigned room registered with its writerPublicKey becomes signed: its signed history starts at signedFrom, the count of its unsigned messages, which stay stored below it; later messages need a signature; earlier ids are forgotten; all of it across a restart without the state file', async t => {
  const net = await testnet(t)
  const storage = await tmpDir(t)
  const rp = await rootPeer(t, net, { storageDir: storage })
  const roomName = signedRoomName(roomKeyPair(ROOM_KEY).publicKey)
  // a stranger who learned the name writes first, unsigned
  const stranger = await rawPeer(t, net)
  for (let i = 0; i < 3; i++) {
    stranger.send({ type: 'message', roomName, message: `stranger ${i}`, id: `msg-${i}` })
    assert.deepEqual(await stranger.next(f => f.id === `msg-${i}`), { type: 'message-ack', roomName, id: `msg-${i}`, messageIndex: i })
  }

  const member = await client(t, net)
  await member.registerRoom(ROOM_KEY)
  stranger.send({ type: 'message', roomName, message: 'stranger 3', id: 'msg-3' })
  assert.equal((await stranger.next(f => f.id === 'msg-3')).code, 'UNAUTHORIZED', 'an unsigned message after the signing')
  // the stranger's msg-1 is not the member's: stored, at the next index
  const ack = await member.sendMessage(roomName, 'member 1', { id: 'msg-1' })
  assert.equal(ack.messageIndex, 3)
  assert.equal(ack.duplicate, false)
  const page = await member.syncPage(roomName, 0)
  assert.equal(page.firstIndex, 3, 'signedFrom: the members are served from the end of the unsigned history')
  assert.deepEqual(page.messages.map(m => [m.messageIndex, m.message]), [[3, 'member 1']])
  assert.equal(page.totalMessages, 4)
  assert.equal(rp.stats().totalMessages, 4)
  await member.close()
  await stranger.close()
  await rp.close()

  // the unsigned messages are still in the store, below signedFrom: the operator's export shows them
  const exported = await runBin(['export', '--room', roomName], { STORAGE_DIR: storage })
  assert.equal(exported.code, 0, exported.stderr)
  assert.deepEqual(exported.stdout.trim().split('\n').map(l => JSON.parse(l)).map(r => [r.messageIndex, r.id, r.message, r.signature === undefined]),
    [[0, 'msg-0', 'stranger 0', true], [1, 'msg-1', 'stranger 1', true], [2, 'msg-2', 'stranger 2', true], [3, 'msg-1', 'member 1', false]])

  // signedFrom is in the room index, inside the store: the state file is not needed
  await fs.rm(path.join(storage, 'root-peer-state.json'))
  await fs.rm(path.join(storage, 'root-peer-state.prev.json'), { force: true })
  await rootPeer(t, net, { storageDir: storage })
  const back = await client(t, net)
  await back.registerRoom(ROOM_KEY)
  const after = await back.syncPage(roomName, 0)
  assert.equal(after.firstIndex, 3)
  assert.deepEqual(after.messages.map(m => m.message), ['member 1'])
  // the ids read back from the core skip those below signedFrom: the stranger's msg-0 is not a duplicate either
  assert.deepEqual(await back.sendMessage(roomName, 'member 0', { id: 'msg-0' }).then(a => [a.messageIndex, a.duplicate]), [4, false])
  assert.deepEqual(await back.sendMessage(roomName, 'member 1', { id: 'msg-1' }).then(a => [a.messageIndex, a.duplicate]), [3, true])
  const outsider = await rawPeer(t, net)
  outsider.send({ type: 'message', roomName, message: 'stranger 4', id: 'msg-4' })
  assert.equal((await outsider.next(f => f.id === 'msg-4')).code, 'UNAUTHORIZED')
})

/**
 * A peer that plays a root peer on the discovery topic: sends `announce()` as the first frame of every
 * connection, records what it receives (`frame` events) and writes back what `answer` returns.
 */
class FakeRootPeer extends EventEmitter {
  readonly swarm: Hyperswarm
  readonly received: any[] = []

  constructor (net: Testnet, announce: () => object, answer: (frame: any) => object | null = () => null) {
    super()
    this.swarm = new Hyperswarm({ dht: new HyperDHT({ bootstrap: net.bootstrap, host: '127.0.0.1' }) })
    this.swarm.on('connection', (conn: NoiseStream) => {
      conn.on('error', () => {})
      conn.on('close', () => this.emit('connection-closed'))
      conn.write(JSON.stringify(announce()))
      conn.on('data', (data: Buffer) => {
        const frame = JSON.parse(data.toString('utf8'))
        this.received.push(frame)
        this.emit('frame', frame)
        const reply = answer(frame)
        if (reply !== null) conn.write(JSON.stringify(reply))
      })
    })
  }

  get publicKey (): string {
    return this.swarm.keyPair.publicKey.toString('hex')
  }

  /** The next frame received (already or coming) that matches. */
  frame (match: (f: any) => boolean): Promise<any> {
    const seen = this.received.find(match)
    if (seen !== undefined) return Promise.resolve(seen)
    return new Promise(resolve => {
      const onframe = (f: any): void => {
        if (!match(f)) return
        this.off('frame', onframe)
        resolve(f)
      }
      this.on('frame', onframe)
    })
  }
}

async function fakeRootPeer (t: Parameters<typeof teardown>[0], net: Testnet, announce: () => object, answer?: (frame: any) => object | null): Promise<FakeRootPeer> {
  const fake = new FakeRootPeer(net, announce, answer)
  teardown(t, () => fake.swarm.destroy())
  await fake.swarm.join(DISCOVERY, { server: true, client: false }).flushed()
  return fake
}

test('a fake root peer that relays the real one\'s challenge gets nothing it can replay: access is signed for one root peer', async t => {
  const net = await testnet(t)
  // the real root peer on a topic of its own, so the member's unpinned client finds only the fake
  const rp = await rootPeer(t, net, { discoveryTopic: 'the-real-root-peer' })
  const realKey = rp.publicKey!.toString('hex')
  const owner = await client(t, net, { discoveryTopic: 'the-real-root-peer', rootPublicKey: realKey })
  const { roomName } = await owner.registerRoom(ROOM_KEY)
  for (let i = 0; i < 3; i++) await owner.sendMessage(roomName, `secret ${i}`)
  const kp = roomKeyPair(ROOM_KEY)

  // the outsider's own connection to the real root peer, whose challenge it forwards
  const relay = new RawPeer(net)
  teardown(t, () => relay.close())
  await relay.connectTo(realKey)
  const real = await relay.nextOfType('root-peer-announcement')
  let claimed = ''
  const fake = await fakeRootPeer(t, net,
    () => ({ type: 'root-peer-announcement', version: 2, publicKey: claimed, limits: real.limits, challenge: real.challenge, access: 2 }),
    f => f.type === 'register-room'
      ? { type: 'room-registered', roomName: f.roomName, messageCount: 0, requestId: f.requestId }
      : { type: 'sync-response', roomName: f.roomName, messages: [], totalMessages: 0, nextIndex: 0, hasMore: false, firstIndex: 0, requestId: f.requestId })

  // claiming the real root peer's key: the Noise key says otherwise, and the client signs nothing
  claimed = realKey
  const fooled = new RootPeerClient({ bootstrap: net.bootstrap, dhtHost: '127.0.0.1' })
  teardown(t, () => fooled.close())
  const [refusedKey] = await once(fooled, 'announcement-refused')
  assert.equal(refusedKey, fake.publicKey)
  assert.equal(fooled.connected, false)
  await fooled.close()
  assert.equal(fake.received.length, 0)
  console.log(`fake claiming the real key: refused by the client, ${fake.received.length} frames captured`)

  // announcing its own key: the member signs, but for the fake, so the signature is worth nothing at the real one
  claimed = fake.publicKey
  const member = await client(t, net)
  assert.equal(member.rootPublicKey, fake.publicKey)
  await member.registerRoom(ROOM_KEY)
  await member.syncPage(roomName, 0)
  const register = await fake.frame(f => f.type === 'register-room')
  const sync = await fake.frame(f => f.type === 'sync-request')
  // the member did sign over the real challenge: only the root peer's key in the signable stops the relay
  assert.ok(verifyAccess(kp.publicKey.toString('hex'), fake.publicKey, real.challenge, roomName, register.signature))
  const v1 = crypto.sign(signable(['root-peer/access/v1', real.challenge, roomName]), kp.secretKey).toString('hex')
  const replays: Array<[string, object]> = [
    ['the captured register-room signature in a sync-request', { type: 'sync-request', roomName, lastIndex: 0, signature: register.signature }],
    ['the captured sync-request signature', { type: 'sync-request', roomName, lastIndex: 0, signature: sync.signature }],
    ['the captured register-room', { type: 'register-room', roomName, writerPublicKey: register.writerPublicKey, signature: register.signature }],
    ['a v1 signature over the real challenge', { type: 'sync-request', roomName, lastIndex: 0, signature: v1 }]
  ]
  let read = 0
  for (const [what, frame] of replays) {
    relay.send({ ...frame, requestId: what })
    const answer = await relay.next(f => f.requestId === what)
    assert.equal(answer.code, 'UNAUTHORIZED', what)
    read += answer.messages?.length ?? 0
  }
  assert.equal(read, 0)
  const total = (await owner.syncPage(roomName, 0)).messages.length
  assert.equal(total, 3)
  console.log(`outsider read ${read} of ${total} messages (${replays.length} replays refused UNAUTHORIZED)`)
})

test('a client pinned to the real root peer registers and syncs a signed room, a fake on the topic notwithstanding', async t => {
  const net = await testnet(t)
  const rp = await rootPeer(t, net)
  const fake = await fakeRootPeer(t, net, () => ({ type: 'root-peer-announcement', version: 2, publicKey: fake.publicKey, limits: DEFAULT_LIMITS, challenge: crypto.randomBytes(32).toString('hex'), access: 2 }))
  const member = await client(t, net, { rootPublicKey: rp.publicKey! })
  assert.equal(member.rootPublicKey, rp.publicKey!.toString('hex'))
  assert.equal(member.announcement?.access, 2)
  const { roomName } = await member.registerRoom(ROOM_KEY)
  for (let i = 0; i < 3; i++) await member.sendMessage(roomName, `ciphertext ${i}`)
  const messages = []
  for await (const page of member.sync(roomName, 0, { limit: 2 })) messages.push(...page.messages)
  assert.deepEqual(messages.map(m => m.message), ['ciphertext 0', 'ciphertext 1', 'ciphertext 2'])
  assert.equal(member.counters.recordsRejected, 0)
  assert.equal(fake.received.length, 0)
  console.log(`pinned client: synced ${messages.length} of 3 messages, ${member.counters.recordsRejected} rejected; the fake on the topic got ${fake.received.length} frames`)
})

test('a lying root peer: the client returns only the records a member signed, and reports each one it drops', async t => {
  const net = await testnet(t)
  const kp = roomKeyPair(ROOM_KEY)
  const roomName = signedRoomName(kp.publicKey)
  const other = crypto.keyPair()
  const signed = (id: string, message: string, secretKey = kp.secretKey): string => signMessage(secretKey, roomName, id, message)
  const records: any[] = [
    { id: 'm0', message: 'c0', signature: signed('m0', 'c0') },
    { id: 'm1', message: 'c1 altered by the root peer', signature: signed('m1', 'c1') },
    { id: 'm2', message: 'c2 unsigned' },
    { message: 'c3 without an id', signature: signed('', 'c3 without an id') },
    { id: 'm4', message: 'c4 by an outsider', signature: signed('m4', 'c4 by an outsider', other.secretKey) },
    { id: 'm5', message: 'c5', signature: signed('m5', 'c5') },
    { id: 'm6', message: 'c6', signature: signed('m6', 'c6') },
    { id: 'm7', message: { not: 'a string' }, signature: signed('m7', '[object Object]') }
  ].map((r, messageIndex) => ({ ...r, storedAt: Date.now(), fromPeer: 'ab'.repeat(32), senderPublicKey: 'ab'.repeat(32), messageIndex }))
  const PAGE = 2
  const fake = await fakeRootPeer(t, net,
    () => ({ type: 'root-peer-announcement', version: 2, publicKey: fake.publicKey, limits: DEFAULT_LIMITS, challenge: crypto.randomBytes(32).toString('hex'), access: 2 }),
    f => {
      if (f.type === 'register-room') return { type: 'room-registered', roomName: f.roomName, messageCount: records.length, requestId: f.requestId }
      const messages = records.slice(f.lastIndex, f.lastIndex + PAGE)
      const nextIndex = f.lastIndex + messages.length
      return { type: 'sync-response', roomName: f.roomName, messages, totalMessages: records.length, nextIndex, hasMore: nextIndex < records.length, firstIndex: 0, requestId: f.requestId }
    })
  const member = await client(t, net)
  const rejected: RecordRejected[] = []
  member.on('record-rejected', (r: RecordRejected) => rejected.push(r))
  await member.registerRoom(ROOM_KEY)
  const kept = []
  let pages = 0
  for await (const page of member.sync(roomName, 0)) {
    pages++
    kept.push(...page.messages)
  }
  // the page of indices 2 and 3 held nothing valid: paging went on from the root peer's nextIndex
  assert.equal(pages, 4)
  assert.deepEqual(kept.map(m => m.message), ['c0', 'c5', 'c6'])
  assert.deepEqual(rejected, [
    { roomName, messageIndex: 1, reason: 'bad-signature' },
    { roomName, messageIndex: 2, reason: 'unsigned' },
    { roomName, messageIndex: 3, reason: 'no-id' },
    { roomName, messageIndex: 4, reason: 'bad-signature' },
    { roomName, messageIndex: 7, reason: 'not-a-string' }
  ])
  assert.equal(member.counters.recordsRejected, 5)
  const byReason = new Map<string, number>()
  for (const r of rejected) byReason.set(r.reason, (byReason.get(r.reason) ?? 0) + 1)
  const reasons = [...byReason].map(([reason, n]) => `${reason} ${n}`).join(', ')
  console.log(`lying root peer: ${records.length} records served in ${pages} pages, ${kept.length} returned, ${member.counters.recordsRejected} rejected (${reasons})`)
})
