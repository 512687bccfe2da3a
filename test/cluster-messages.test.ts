import assert from 'node:assert/strict'
import { Duplex } from 'node:stream'
import { test } from 'node:test'
import c from 'compact-encoding'
import fc from 'fast-check'
import ProtomuxRPC from 'protomux-rpc'
import { RootPeerError } from 'root-peer-client/protocol'
import { createRequest, forwardedWrite, readPage, readRequest, requests, roomAd, roomList, writeResult, type RoomAd } from '../src/cluster/messages.js'

// Fast tests of the cluster channel's encodings, and of protomux-rpc carrying them over an in-memory stream.

const hex = (bytes: number): fc.Arbitrary<string> => fc.uint8Array({ minLength: bytes, maxLength: bytes }).map(b => Buffer.from(b).toString('hex'))
const count = fc.nat({ max: Number.MAX_SAFE_INTEGER })

const ad: fc.Arbitrary<RoomAd> = fc.record({
  name: fc.string(),
  key: hex(32),
  primary: hex(32),
  writerPublicKey: hex(32),
  promotedFrom: hex(32),
  length: count,
  signedFrom: count
}, { requiredKeys: ['name', 'key'] })

function roundTrip<T> (enc: c.Encoder<T>, value: T): T {
  return c.decode(enc, c.encode(enc, value))
}

test('every message decodes to what was encoded, optional fields absent or present', () => {
  fc.assert(fc.property(ad, a => assert.deepEqual(roundTrip(roomAd, a), { ...a })))
  fc.assert(fc.property(fc.array(ad, { maxLength: 4 }), fc.boolean(), (rooms, more) => assert.deepEqual(roundTrip(roomList, { rooms, more }), { rooms: rooms.map(r => ({ ...r })), more })))
  const write = fc.record({ roomName: fc.string(), fromPeer: hex(32), message: fc.jsonValue(), id: fc.string({ minLength: 1, maxLength: 128 }), signature: hex(64) }, { requiredKeys: ['roomName', 'fromPeer', 'message'] })
  fc.assert(fc.property(write, w => assert.deepEqual(roundTrip(forwardedWrite, w), JSON.parse(JSON.stringify(w)))))
  fc.assert(fc.property(count, fc.boolean(), (messageIndex, duplicate) => assert.deepEqual(roundTrip(writeResult, { messageIndex, duplicate }), { messageIndex, duplicate })))
  assert.deepEqual(roundTrip(createRequest, { roomName: 'lobby' }), { roomName: 'lobby' })
  assert.deepEqual(roundTrip(createRequest, { roomName: 'lobby', writerPublicKey: 'AB'.repeat(32) }), { roomName: 'lobby', writerPublicKey: 'ab'.repeat(32) })
  const read = fc.record({ roomName: fc.string(), lastIndex: count, limit: count, maxBytes: count, provenKey: hex(32) }, { requiredKeys: ['roomName', 'lastIndex', 'limit', 'maxBytes'] })
  fc.assert(fc.property(read, r => assert.deepEqual(roundTrip(readRequest, r), { ...r })))
  const page = fc.record({ entries: fc.array(fc.uint8Array({ maxLength: 64 }).map(b => Buffer.from(b)), { maxLength: 4 }), totalMessages: count, nextIndex: count, firstIndex: count })
  fc.assert(fc.property(page, p => assert.deepEqual(roundTrip(readPage, p), { ...p })))
})

test('a key is 32 bytes on the wire, and a key that is not 64 hex characters is not sent', () => {
  assert.equal(c.encode(roomAd, { name: '', key: '00'.repeat(32) }).byteLength, 1 + 32 + 1)
  for (const key of ['ab'.repeat(31), 'ab'.repeat(33), 'zz'.repeat(32)]) {
    assert.throws(() => c.encode(roomAd, { name: 'r', key }), err => !(err instanceof TypeError) && /32 bytes/.test((err as Error).message))
  }
})

test('a refusal travels with its code, message and details', () => {
  const { responseEncoding } = requests.write
  const back = c.decode(responseEncoding, c.encode(responseEncoding, RootPeerError.NOT_REPLICATED(0, 1, 5000)))
  assert.ok(back instanceof RootPeerError)
  assert.equal(back.code, 'NOT_REPLICATED')
  assert.equal(back.message, RootPeerError.NOT_REPLICATED(0, 1, 5000).message)
  assert.deepEqual(back.details, RootPeerError.NOT_REPLICATED(0, 1, 5000).details)
  assert.deepEqual(c.decode(responseEncoding, c.encode(responseEncoding, { messageIndex: 7, duplicate: true })), { messageIndex: 7, duplicate: true })
})

test('arbitrary bytes decode to a message or throw a plain Error, never one safety-catch rethrows', () => {
  const encodings = [roomAd, roomList, forwardedWrite, writeResult, createRequest, readRequest, readPage, requests.write.responseEncoding, requests.create.responseEncoding, requests.read.responseEncoding]
  fc.assert(fc.property(fc.uint8Array({ maxLength: 200 }), bytes => {
    for (const enc of encodings) {
      try {
        c.decode(enc as c.Encoder<unknown>, Buffer.from(bytes))
      } catch (err) {
        assert.equal((err as Error).constructor, Error, String(err))
      }
    }
  }), { numRuns: 2000 })
  const badJson = Buffer.concat([c.encode(c.string, 'r'), Buffer.alloc(32), c.encode(c.string, '{"a":'), Buffer.from([0])])
  assert.throws(() => c.decode(forwardedWrite, badJson), err => (err as Error).constructor === Error && /malformed JSON/.test((err as Error).message))
})

test('over protomux-rpc: a result, a coded refusal, and a malformed request that fails only itself', async () => {
  const [a, b] = pair()
  const server = new ProtomuxRPC(a, { protocol: 'test' })
  const client = new ProtomuxRPC(b, { protocol: 'test' })
  server.respond('write', requests.write, async write => {
    if (write.roomName === 'full') return RootPeerError.STORAGE_CAP(100)
    return { messageIndex: 3, duplicate: false }
  })
  await new Promise(resolve => client.once('open', resolve))
  const write = { roomName: 'lobby', fromPeer: 'ab'.repeat(32), message: { text: 'hi' } }
  assert.deepEqual(await client.request('write', write, requests.write), { messageIndex: 3, duplicate: false })
  const refused = await client.request('write', { ...write, roomName: 'full' }, requests.write)
  assert.ok(refused instanceof RootPeerError)
  assert.equal(refused.code, 'STORAGE_FULL')
  assert.deepEqual(refused.details, { maxStorageBytes: 100 })
  const garbage = Buffer.concat([c.encode(c.string, 'r'), Buffer.alloc(32), c.encode(c.string, 'not json')])
  await assert.rejects(client.request('write', garbage, { requestEncoding: c.raw, responseEncoding: requests.write.responseEncoding }), { code: 'DECODE_ERROR' })
  assert.deepEqual(await client.request('write', write, requests.write), { messageIndex: 3, duplicate: false })
  a.destroy()
  await assert.rejects(client.request('write', write, requests.write), { code: 'CHANNEL_CLOSED' })
})

/** Two framed streams, each reading what the other writes. */
function pair (): [Duplex, Duplex] {
  const ends: Duplex[] = []
  for (let i = 0; i < 2; i++) {
    ends.push(new Duplex({
      objectMode: true,
      read () {},
      write (chunk, _enc, cb) {
        // as on a socket, never in the writer's own tick (protomux-rpc registers a request after sending it)
        setImmediate(() => ends[1 - i].push(chunk))
        cb()
      },
      destroy (err, cb) {
        ends[1 - i].destroy()
        cb(err)
      }
    }))
  }
  return [ends[0], ends[1]]
}
