import assert from 'node:assert/strict'
import fs from 'node:fs/promises'
import path from 'node:path'
import { test } from 'node:test'
import crypto from 'hypercore-crypto'
import { roomKeyPair, signAccess, signMessage, signedRoomName } from '../src/room-auth.js'
import { client, rawPeer, rootPeer, testnet, tmpDir } from './helpers.js'

const ROOM_KEY = Buffer.from('the room key every member holds, and the root peer never sees')

test('a signed room: members write and read with the room key alone; an outsider who knows the name can do neither, nor learn its size', async t => {
  const net = await testnet(t)
  const rp = await rootPeer(t, net)
  const member = await client(t, net)
  const { roomName } = await member.registerRoom(ROOM_KEY)
  const kp = roomKeyPair(ROOM_KEY)
  // the derivation the README documents
  assert.equal(roomName, crypto.discoveryKey(crypto.keyPair(crypto.hash(ROOM_KEY)).publicKey).toString('hex'))
  for (let i = 0; i < 3; i++) assert.equal((await member.sendMessage(roomName, `ciphertext ${i}`, { id: `m${i}` })).messageIndex, i)
  const page = await member.syncPage(roomName, 0)
  assert.deepEqual(page.messages.map(m => m.message), ['ciphertext 0', 'ciphertext 1', 'ciphertext 2'])
  // each record keeps its signature, so members can check it themselves
  assert.equal(page.messages[1].signature, signMessage(kp.secretKey, roomName, 'm1', 'ciphertext 1'))

  const outsider = await rawPeer(t, net)
  const announcement = await outsider.nextOfType('root-peer-announcement')
  assert.match(announcement.challenge, /^[0-9a-f]{64}$/)
  const other = crypto.keyPair()
  const forged = signMessage(other.secretKey, roomName, 'x1', 'junk')
  const refusals: Array<[string, object, string]> = [
    ['a message without a signature', { type: 'message', roomName, message: 'junk', id: 'x0' }, 'UNAUTHORIZED'],
    ['a message signed by another key', { type: 'message', roomName, message: 'junk', id: 'x1', signature: forged }, 'UNAUTHORIZED'],
    ['a signed message altered', { type: 'message', roomName, message: 'ciphertext 1 altered', id: 'm1', signature: page.messages[1].signature }, 'UNAUTHORIZED'],
    ['a message without an id', { type: 'message', roomName, message: 'junk' }, 'UNAUTHORIZED'],
    ['a sync-request without a signature', { type: 'sync-request', roomName, lastIndex: 0, requestId: 'sync' }, 'UNAUTHORIZED'],
    ['a sync-request signed by another key', { type: 'sync-request', roomName, lastIndex: 0, requestId: 'sync2', signature: signAccess(other.secretKey, announcement.challenge, roomName) }, 'UNAUTHORIZED'],
    ['register-room without the key', { type: 'register-room', roomName, requestId: 'reg' }, 'UNAUTHORIZED'],
    ['register-room claiming the name with another key', { type: 'register-room', roomName, writerPublicKey: other.publicKey.toString('hex'), signature: signAccess(other.secretKey, announcement.challenge, roomName), requestId: 'reg2' }, 'BAD_ROOM_KEY']
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
  const challengeA = (await a.nextOfType('root-peer-announcement')).challenge
  const accessA = signAccess(kp.secretKey, challengeA, roomName)
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
