import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import fs from 'node:fs/promises'
import path from 'node:path'
import { test } from 'node:test'
import fc from 'fast-check'
import HyperDHT from 'hyperdht'
import crypto from 'hypercore-crypto'
import { RootPeerError } from 'root-peer-client/protocol'
// only for the test that compares the decoder with the oracle below, which uses nothing of src/protocol
import { DEFAULT_LIMITS, decodeFrame, type Frame } from '../src/protocol/protocol.js'
import { ROOT, bootstrapEnv, daemon, rawPeer, rootPeer, teardown, testnet, tmpDir, type RawPeer } from './helpers.js'

const NO_RATES = { messagesPerSecond: 0, bytesPerSecond: 0, syncsPerSecond: 0, registersPerMinute: 0, newRoomsPerMinute: 0, banThreshold: 0 }

// ---------- the oracle: docs/protocol.md's frame table, written again here (nothing of src/protocol) ----------

// the announcement's default `limits` (docs/protocol.md) and the nesting limit (docs/configuration.md#limits)
const DOC_LIMITS = { maxFrameBytes: 262_144, maxMessageBytes: 65_536, defaultPageMessages: 500, maxPageMessages: 1000 }
const MAX_DEPTH = 32
const ROOM_NAME = /^[A-Za-z0-9._~:@+=#-]{1,128}$/
const HEX64 = /^[0-9a-f]{64}$/i
const HEX128 = /^[0-9a-f]{128}$/i
// each frame a client sends, and its fields besides `type` and `roomName` (or `roomId`); other fields are ignored.
// Read as JavaScript reads the docs: "characters" are a string's length, an "integer" is a number a double holds
// exactly as one (up to 2^53 - 1, as the message rules say), and `roomId` counts only when `roomName` is absent.
const FIELDS: Record<string, string[]> = {
  'register-room': ['requestId', 'writerPublicKey', 'signature'],
  message: ['message', 'id', 'signature'],
  'sync-request': ['lastIndex', 'limit', 'requestId', 'signature'],
  follow: ['fromIndex', 'requestId', 'signature'],
  unfollow: ['requestId']
}

interface Accepted { type: string, roomName: string, message?: unknown, id?: string, requestId?: string | number, lastIndex?: number, limit?: number, writerPublicKey?: string, signed?: boolean }
/** A refused frame may break several rules: the docs do not say which is named first, so any of them is right. */
type Verdict = { codes: Set<string> } | { frame: Accepted }

/** What the frame table says of one incoming frame: refused (with which codes) or accepted (as what). */
function judge (data: Uint8Array): Verdict {
  const refused = (code: string): Verdict => ({ codes: new Set([code]) })
  if (data.byteLength > DOC_LIMITS.maxFrameBytes) return refused('FRAME_TOO_LARGE')
  let text: string
  let obj: unknown
  try {
    text = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(data)
    obj = JSON.parse(text)
  } catch {
    return refused('BAD_FRAME')
  }
  const toks = jsonTokens(text)
  if (depth(toks) > MAX_DEPTH || typeof obj !== 'object' || obj === null || Array.isArray(obj)) return refused('BAD_FRAME')
  const fields = obj as Record<string, unknown>
  const get = (key: string): unknown => Object.hasOwn(fields, key) ? fields[key] : undefined
  const type = get('type')
  if (typeof type !== 'string') return refused('BAD_FRAME')
  if (!Object.hasOwn(FIELDS, type)) return refused('UNKNOWN_TYPE')

  const codes = new Set<string>()
  const frame: Accepted = { type, roomName: '' }
  const roomName = Object.hasOwn(fields, 'roomName') ? fields.roomName : get('roomId')
  if (typeof roomName === 'string' && ROOM_NAME.test(roomName) && !/^\.+$/.test(roomName)) frame.roomName = roomName
  else codes.add('BAD_ROOM_NAME')
  // lastIndex (fromIndex of a follow) defaults to 0, limit to defaultPageMessages
  if (type === 'sync-request' || type === 'follow') frame.lastIndex = 0
  if (type === 'sync-request') frame.limit = DOC_LIMITS.defaultPageMessages
  for (const field of FIELDS[type]) {
    const value = get(field)
    if (value === undefined && field !== 'message') continue
    if (field === 'requestId') {
      if ((typeof value === 'string' && value.length >= 1 && value.length <= 128) || Number.isSafeInteger(value)) frame.requestId = value as string | number
      else codes.add('BAD_FRAME')
    } else if (field === 'id') {
      if (typeof value === 'string' && value.length >= 1 && value.length <= 128) frame.id = value
      else codes.add('BAD_FRAME')
    } else if (field === 'writerPublicKey') {
      if (typeof value === 'string' && HEX64.test(value)) frame.writerPublicKey = value.toLowerCase()
      else codes.add('BAD_FRAME')
    } else if (field === 'signature') {
      if (typeof value !== 'string' || !HEX128.test(value)) codes.add('BAD_FRAME')
      else frame.signed = true
    } else if (field === 'lastIndex' || field === 'fromIndex') {
      if (Number.isSafeInteger(value) && (value as number) >= 0) frame.lastIndex = value as number
      else codes.add('BAD_FRAME')
    } else if (field === 'limit') {
      if (Number.isSafeInteger(value) && (value as number) >= 1) frame.limit = Math.min(value as number, DOC_LIMITS.maxPageMessages)
      else codes.add('BAD_FRAME')
    } else if (value === undefined || value === null) {
      codes.add('BAD_FRAME')
    } else {
      // a string is sized by its UTF-8 bytes, any other value by the JSON it is stored as
      const size = new TextEncoder().encode(typeof value === 'string' ? value : JSON.stringify(value)).byteLength
      if (size > DOC_LIMITS.maxMessageBytes) codes.add('MESSAGE_TOO_LARGE')
      // every number in a message that is not a string must be stored as the same decimal number
      const numbers = (topLevelMembers(toks).get('message') ?? []).filter(tok => /^-?[0-9]/.test(tok))
      if (typeof value !== 'string' && !numbers.every(storedExactly)) codes.add('BAD_FRAME')
      frame.message = value
    }
  }
  return codes.size > 0 ? { codes } : { frame }
}

/** The tokens of a JSON text JSON.parse accepted: strings, numbers, literals and punctuation. */
function jsonTokens (text: string): string[] {
  const token = /[ \t\n\r]*("[^"\\]*(?:\\.[^"\\]*)*"|-?[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?|[{}[\]:,]|true|false|null)/y
  const out: string[] = []
  let end = 0
  for (let m = token.exec(text); m !== null; m = token.exec(text)) {
    out.push(m[1])
    end = token.lastIndex
  }
  if (!/^[ \t\n\r]*$/.test(text.slice(end))) throw new Error(`the oracle cannot read ${JSON.stringify(text.slice(end, end + 40))}`)
  return out
}

function depth (toks: string[]): number {
  let level = 0
  let most = 0
  for (const tok of toks) {
    if (tok === '{' || tok === '[') most = Math.max(most, ++level)
    else if (tok === '}' || tok === ']') level--
  }
  return most
}

/** The tokens of each member's value in the outer object; a key repeated keeps its last value, as in JSON.parse. */
function topLevelMembers (toks: string[]): Map<string, string[]> {
  const members = new Map<string, string[]>()
  for (let i = 1; i < toks.length - 1;) {
    const key = JSON.parse(toks[i]) as string
    let end = i + 2
    for (let level = 0; level > 0 || (toks[end] !== ',' && end < toks.length - 1); end++) {
      if (toks[end] === '{' || toks[end] === '[') level++
      else if (toks[end] === '}' || toks[end] === ']') level--
    }
    members.set(key, toks.slice(i + 2, end))
    i = end + 1
  }
  return members
}

/** True when JSON.stringify writes the number JSON.parse reads from `token` as the same decimal number. */
function storedExactly (token: string): boolean {
  const stored = JSON.stringify(Number(token))
  return stored !== 'null' && decimal(token) === decimal(stored)
}

/** A decimal number token as its sign, its significant digits and the exponent of the last one. */
function decimal (token: string): string {
  const [, sign, whole, fraction = '', exponent = '0'] = /^(-?)([0-9]+)(?:\.([0-9]+))?(?:[eE]([+-]?[0-9]+))?$/.exec(token)!
  const digits = (whole + fraction).replace(/^0+/, '')
  const significant = digits.replace(/0+$/, '')
  if (significant === '') return sign + '0'
  return `${sign}${significant}e${BigInt(exponent) - BigInt(fraction.length) + BigInt(digits.length - significant.length)}`
}

interface StoredMessage { message: unknown, id?: string }
type Answer =
  | { kind: 'error', codes: Set<string> }
  | { kind: 'ack', roomName: string, id: string, messageIndex: number, duplicate: boolean }
  | { kind: 'registered', roomName: string, requestId: string | number, most: number }
  | { kind: 'sync', roomName: string, requestId?: string | number, lastIndex: number, limit: number, stored: StoredMessage[] }

/** What accepted frames do (docs/protocol.md): the rooms they create and store into, and each frame's answer. */
class RoomsModel {
  readonly rooms = new Map<string, StoredMessage[]>()

  answer (frame: Accepted): Answer | null {
    const { roomName, requestId } = frame
    if (frame.type === 'register-room') {
      if (frame.writerPublicKey !== undefined) {
        // no signature made here is valid, so a key that matches the name gets UNAUTHORIZED
        const matches = crypto.discoveryKey(Buffer.from(frame.writerPublicKey, 'hex')).toString('hex') === roomName
        return { kind: 'error', codes: new Set([matches ? 'UNAUTHORIZED' : 'BAD_ROOM_KEY']) }
      }
      if (!this.rooms.has(roomName)) this.rooms.set(roomName, [])
      return requestId === undefined ? null : { kind: 'registered', roomName, requestId, most: this.rooms.get(roomName)!.length }
    }
    if (frame.type === 'message') {
      // no room is signed here: a message with a signature is refused, so no member's message is stored unsigned
      if (frame.signed === true) return { kind: 'error', codes: new Set(['UNAUTHORIZED']) }
      const room = this.rooms.get(roomName) ?? []
      this.rooms.set(roomName, room)
      const { id } = frame
      const earlier = id === undefined ? -1 : room.findIndex(m => m.id === id)
      if (earlier !== -1) return { kind: 'ack', roomName, id: id!, messageIndex: earlier, duplicate: true }
      room.push({ message: frame.message, ...(id === undefined ? {} : { id }) })
      return id === undefined ? null : { kind: 'ack', roomName, id, messageIndex: room.length - 1, duplicate: false }
    }
    // a sync-request: a room that does not exist answers an empty page, and is not created
    return { kind: 'sync', roomName, requestId, lastIndex: frame.lastIndex!, limit: frame.limit!, stored: [...(this.rooms.get(roomName) ?? [])] }
  }
}

/** Throws unless `got` is the answer the model expects (`text`: the frame, for the report). */
function checkAnswer (got: any, want: Answer | undefined, text: string): void {
  const about = `answer to ${text}: ${JSON.stringify(got)?.slice(0, 300)}`
  assert.ok(want !== undefined && want.kind !== 'ack', `no answer expected, got ${about}`)
  if (want.kind === 'error') {
    assert.equal(got.type, 'error', about)
    assert.ok(want.codes.has(got.code), `${[...want.codes].join(' or ')} expected, got ${about}`)
    assert.equal(typeof got.message, 'string', about)
  } else if (want.kind === 'registered') {
    assert.deepEqual([got.type, got.roomName, got.requestId], ['room-registered', want.roomName, want.requestId], about)
    assert.ok(Number.isInteger(got.messageCount) && got.messageCount >= 0 && got.messageCount <= want.most, about)
  } else {
    const { roomName, requestId, lastIndex, limit, stored } = want
    assert.deepEqual([got.type, got.roomName, got.requestId, got.totalMessages, got.firstIndex], ['sync-response', roomName, requestId, stored.length, 0], about)
    const n = got.messages.length
    // at most `limit` messages, and at least one when one is there
    assert.ok(lastIndex < stored.length ? n >= 1 && n <= limit : n === 0, about)
    got.messages.forEach((m: any, i: number) => {
      assert.equal(m.messageIndex, lastIndex + i, about)
      assert.deepEqual({ message: m.message, ...(m.id === undefined ? {} : { id: m.id }) }, stored[lastIndex + i], about)
    })
    if (n > 0) assert.equal(got.nextIndex, lastIndex + n, about)
    assert.equal(got.hasMore, got.nextIndex < got.totalMessages, about)
  }
}

// ---------- the fuzz test ----------

const ROOMS = ['alpha', 'beta', '__proto__', 'constructor', 'toString', 'a'.repeat(64), '../x', '', 'x\u0000y', 'hasOwnProperty']
const roomArb = fc.oneof(fc.constantFrom(...ROOMS), fc.string({ maxLength: 20 }))
// a few ids used again and again, so duplicates happen
const idArb = fc.oneof(fc.constantFrom('a', 'b', 'c'), fc.string({ minLength: 1, maxLength: 12 }))
const requestIdArb = fc.oneof(fc.string({ minLength: 1, maxLength: 12 }), fc.integer())
const validFrameArb = fc.oneof(
  fc.record({ type: fc.constant('register-room'), roomName: roomArb, requestId: requestIdArb }, { requiredKeys: ['type', 'roomName'] }),
  fc.record({ type: fc.constant('register-room'), roomId: roomArb }),
  fc.record({ type: fc.constant('message'), roomName: roomArb, message: fc.oneof(fc.string({ maxLength: 300 }), fc.string({ unit: 'binary', maxLength: 30 }), fc.jsonValue({ maxDepth: 3 })), id: idArb }, { requiredKeys: ['type', 'roomName', 'message'] }),
  fc.record({ type: fc.constant('sync-request'), roomName: roomArb, lastIndex: fc.nat(50), limit: fc.integer({ min: 1, max: 20 }), requestId: requestIdArb }, { requiredKeys: ['type', 'roomName'] })
)
const KEYS = ['type', 'roomName', 'roomId', 'message', 'id', 'requestId', 'lastIndex', 'limit', 'fromIndex', 'writerPublicKey', 'signature', '__proto__', 'constructor']
const ODD_VALUES = ['x'.repeat(70_000), 'ab'.repeat(32), 'AB'.repeat(32), 'cd'.repeat(64), 'follow', -1, 1.5, 2 ** 53, 1e300, 0, '', null]
const mutatedArb = fc.tuple(validFrameArb, fc.constantFrom(...KEYS), fc.oneof(fc.jsonValue({ maxDepth: 2 }), fc.constant(undefined), fc.constantFrom(...ODD_VALUES)))
  .map(([frame, key, value]) => {
    const copy: Record<string, unknown> = { ...frame }
    if (value === undefined) delete copy[key]
    else Object.defineProperty(copy, key, { value, enumerable: true, writable: true, configurable: true })
    return JSON.stringify(copy) ?? '{}'
  })
// numbers as a client may write them, which JSON.stringify never does
const numberTokenArb = fc.oneof(
  fc.constantFrom('1e999', '-1e999', '-0', '-0.0', '0.0', '0e5', '1.5e3', '15000e-1', '1E+2', '12345678901234567890', '9007199254740993', '9007199254740992', '1e-400', '5e-324', '0.30000000000000004', '0.1234567890123456789', '1e21', '01', '1.', '.5'),
  fc.tuple(fc.constantFrom('', '-'), fc.stringMatching(/^[1-9][0-9]{0,24}$/), fc.constantFrom('', '.5', '.000', 'e-7', 'e+300', 'E2')).map(([sign, digits, tail]) => sign + digits + tail)
)
const numbersArb = fc.tuple(fc.array(numberTokenArb, { minLength: 1, maxLength: 3 }), fc.constantFrom('message', 'other')).map(([tokens, key]) =>
  `{"type":"message","roomName":"alpha","${key}":[${tokens.join(',')}],"message":${key === 'other' ? '"s"' : `{"n":${tokens[0]}}`},"id":"${tokens.join()}"}`)
const deepArb = (min: number, max: number): fc.Arbitrary<string> => fc.tuple(fc.integer({ min, max }), fc.boolean()).map(([n, bare]) => bare
  ? '['.repeat(n) + ']'.repeat(n)
  : '{"type":"message","roomName":"alpha","message":' + '['.repeat(n) + ']'.repeat(n) + '}')
const nearDepthArb = fc.integer({ min: MAX_DEPTH - 2, max: MAX_DEPTH + 1 }).map(n => `{"type":"message","roomName":"alpha","message":${'['.repeat(n - 1)}${']'.repeat(n - 1)}}`)
// no frame over MAX_FRAME_BYTES: one that arrives in pieces ends the connection, and a run uses one
const framesWith = (deep: fc.Arbitrary<string>): fc.Arbitrary<string | Uint8Array> => fc.oneof(
  { arbitrary: fc.uint8Array({ maxLength: 512 }), weight: 2 },
  { arbitrary: fc.json({ maxDepth: 4 }), weight: 2 },
  { arbitrary: validFrameArb.map(f => JSON.stringify(f)), weight: 6 },
  { arbitrary: mutatedArb, weight: 6 },
  { arbitrary: numbersArb, weight: 1 },
  { arbitrary: nearDepthArb, weight: 1 },
  { arbitrary: deep, weight: 1 }
)
// frames 100,000 deep for the daemon (a parser that recursed would overflow its stack); cheaper ones for the decoder alone
const frameArb = framesWith(deepArb(1000, 100_000))

test('the oracle and the daemon\'s decoder agree on 20,000 generated frames (a disagreement shrinks to one minimal frame)', () => {
  fc.assert(fc.property(framesWith(deepArb(MAX_DEPTH, 2000)), f => {
    const data = Buffer.from(f)
    const verdict = judge(data)
    let decoded: Frame | undefined
    let refusal: unknown
    try {
      decoded = decodeFrame(data, DEFAULT_LIMITS)
    } catch (err) {
      refusal = err
    }
    if ('codes' in verdict) {
      assert.ok(refusal instanceof RootPeerError, `refused with ${[...verdict.codes].join(' or ')} by the docs, decoded as ${JSON.stringify(decoded)?.slice(0, 200)}; or not a coded error: ${String(refusal)}`)
      assert.ok(verdict.codes.has(refusal.code), `${[...verdict.codes].join(' or ')} by the docs, ${refusal.code} (${refusal.message}) by the decoder`)
      return
    }
    assert.equal(refusal, undefined, `accepted by the docs, refused by the decoder: ${String(refusal)}`)
    const { type, roomName, message, id, requestId, lastIndex, limit, writerPublicKey } = verdict.frame
    const got = decoded as any
    assert.deepEqual([got.type, got.roomName, got.id, got.requestId, got.writerPublicKey], [type, roomName, id, requestId, writerPublicKey])
    if (type === 'message') assert.deepEqual(got.message, message)
    if (type === 'sync-request') assert.deepEqual([got.lastIndex, got.limit], [lastIndex, limit])
    if (type === 'follow') assert.equal(got.fromIndex, lastIndex)
  }), { numRuns: 20_000, seed: Number(process.env.FUZZ_SEED ?? Date.now() % 2 ** 31), includeErrorInReport: true })
})

test('fuzz: 10,000 generated frames over real connections; every answer and everything stored is what the frame table says', async t => {
  const net = await testnet(t)
  let handled = 0
  const run = async (frames: Array<string | Uint8Array>): Promise<void> => {
    const rp = await rootPeer(t, net, NO_RATES)
    const peer = await rawPeer(t, net)
    try {
      const { limits } = await peer.nextOfType('root-peer-announcement')
      assert.deepEqual({ ...limits, ...DOC_LIMITS }, limits, 'the daemon announces the limits the oracle was written from')
      const before = Object.getOwnPropertyNames(Object.prototype).join()
      const model = new RoomsModel()
      const answers: Array<{ text: string, answer: Answer }> = []
      let sent = 0
      for (const f of frames) {
        const data = Buffer.from(f)
        const verdict = judge(data)
        // not sent: an empty write (the stream carries none), and a follow (its pages are not modelled here)
        if (data.byteLength === 0 || ('frame' in verdict && ['follow', 'unfollow'].includes(verdict.frame.type))) continue
        peer.send(data)
        sent++
        const answer = 'codes' in verdict ? { kind: 'error' as const, codes: verdict.codes } : model.answer(verdict.frame)
        if (answer !== null) answers.push({ text: JSON.stringify(data.toString('utf8').slice(0, 200)), answer })
      }
      // frames are handled in order: once this is answered, every frame before it was
      const done = `done-${Math.random()}`
      peer.send({ type: 'sync-request', roomName: 'alpha', requestId: done })
      await peer.next(f => f.requestId === done, 60_000)
      assert.equal(Object.values(rp.counters.framesReceived).reduce((a, b) => a + b, 0), sent + 1, 'the daemon received every frame sent')

      // an ack is sent once its message is stored, so acks may come after later frames' answers; all else in order
      const wantAcks = answers.flatMap(({ answer: a }) => a.kind === 'ack' ? [`${a.roomName} ${a.id} ${a.messageIndex}${a.duplicate ? ' duplicate' : ''}`] : [])
      const acks: string[] = []
      while (acks.length < wantAcks.length) {
        const a = await peer.next(f => f.type === 'message-ack', 30_000)
        acks.push(`${a.roomName} ${a.id} ${a.messageIndex}${a.duplicate === true ? ' duplicate' : ''}`)
      }
      assert.deepEqual(acks.sort(), wantAcks.sort())
      const rest = peer.frames.splice(0)
      const others = answers.filter(a => a.answer.kind !== 'ack')
      for (let i = 0; i < Math.max(rest.length, others.length); i++) checkAnswer(rest[i], others[i]?.answer, others[i]?.text ?? '(no frame)')

      assert.equal(rp.stats().totalRooms, model.rooms.size)
      const key = peer.swarm.keyPair.publicKey.toString('hex')
      for (const [roomName, want] of model.rooms) {
        const { messages } = await peer.syncAll(roomName)
        assert.deepEqual(messages.map(m => ({ message: m.message, ...(m.id !== undefined ? { id: m.id } : {}) })), want, roomName)
        assert.deepEqual(messages.map(m => m.messageIndex), want.map((_, i) => i))
        // a signed message is refused by an unsigned room: no record of one carries a signature
        assert.ok(messages.every(m => m.fromPeer === key && m.senderPublicKey === key && !('signature' in m)), roomName)
      }
      assert.equal(peer.frames.length, 0, `nothing more was sent: ${JSON.stringify(peer.frames).slice(0, 300)}`)
      assert.equal(Object.getOwnPropertyNames(Object.prototype).join(), before, 'no prototype was touched')
      assert.equal(peer.closed, false)
      handled += sent
    } finally {
      await peer.close()
      await rp.close()
    }
  }
  // rounds of 10 runs until 10,000 frames were handled; a failing run is shrunk to its fewest and smallest frames
  const seed = Number(process.env.FUZZ_SEED ?? Date.now() % 2 ** 31)
  const framesArb = fc.array(frameArb, { minLength: 1, maxLength: 600, size: 'max' })
  for (let round = 0; handled < 10_000; round++) {
    await fc.assert(fc.asyncProperty(framesArb, run), { numRuns: 10, seed: seed + round, interruptAfterTimeLimit: 150_000, includeErrorInReport: true })
  }
  console.log(`fuzz: ${handled} frames handled (seed ${seed})`)
})

// ---------- floods, slow readers, caps ----------

function closed (peer: RawPeer): Promise<void> {
  // not events.once: a reset before the close is an 'error', which once() would reject with
  return peer.closed ? Promise.resolve() : new Promise(resolve => peer.conn!.once('close', () => resolve()))
}

test('a flood over RATE_MESSAGES gets RATE_LIMITED; the BAN_THRESHOLD-th refusal gets BANNED, the connection closed and the key refused at the handshake; of the flood, the burst and what the rate allows were stored', async t => {
  const net = await testnet(t)
  const rp = await rootPeer(t, net, { messagesPerSecond: 50, banThreshold: 100, banDuration: 60_000 })
  // the key's budget (a burst of 500, then 50 a second) is made when it connects, after this
  const started = Date.now()
  const flooder = await rawPeer(t, net)
  await flooder.nextOfType('root-peer-announcement')
  const banned = once(rp, 'peer-banned')
  for (let i = 0; i < 5000; i++) flooder.send({ type: 'message', roomName: 'flood', message: `f${i}`, id: `f${i}` })
  const [bannedId] = await banned
  const seconds = (Date.now() - started) / 1000
  await closed(flooder)
  assert.equal(bannedId, flooder.swarm.keyPair.publicKey.toString('hex'))
  assert.equal(rp.counters.bans, 1)

  const limited = flooder.frames.filter(f => f.code === 'RATE_LIMITED')
  assert.equal(limited.length, 100, 'refused frames until the 100th within a minute')
  assert.ok(limited.every(f => f.retryAfterMs > 0 && f.id !== undefined))
  assert.deepEqual([flooder.frames.at(-1).code, flooder.frames.at(-1).retryAfterMs], ['BANNED', 60_000], 'the last frame')
  // the messages accepted before the ban are stored (their acks went to a closed connection)
  const reader = await rawPeer(t, net)
  const stored = (await reader.syncAll('flood')).messages.length
  console.log(`flood: ${stored} stored, ${limited.length} RATE_LIMITED, banned after ${seconds.toFixed(2)} s`)
  assert.ok(stored >= 500 && stored <= 500 + 50 * seconds, `${stored} flood messages stored in ${seconds.toFixed(2)} s: a burst of 500, then 50 a second`)

  // the banned key is refused at the handshake while the ban lasts
  const node = new HyperDHT({ bootstrap: net.bootstrap, host: '127.0.0.1' })
  teardown(t, () => node.destroy())
  const retry = (node as any).connect(rp.publicKey, { keyPair: flooder.swarm.keyPair })
  const outcome = await new Promise(resolve => {
    retry.on('error', () => resolve('refused'))
    retry.on('data', () => resolve('served'))
  })
  assert.equal(outcome, 'refused')
})

test('while a peer floods messages far over RATE_MESSAGES (refused all along), a well-behaved peer gets every ack and sync answer it asks for', async t => {
  const net = await testnet(t)
  const rp = await rootPeer(t, net, { messagesPerSecond: 50, banThreshold: 0 })
  const flooder = await rawPeer(t, net)
  const calm = await rawPeer(t, net)
  await flooder.nextOfType('root-peer-announcement')
  await calm.nextOfType('root-peer-announcement')

  // the flood: frames as fast as the connection takes them, until the calm peer is done
  let stop: () => void = () => {}
  const stopped = new Promise<void>(resolve => { stop = resolve })
  const flood = (async () => {
    const conn = flooder.conn!
    for (let i = 0; ; i++) {
      if (conn.write(JSON.stringify({ type: 'message', roomName: 'flood', message: `f${i}` }))) continue
      if (await Promise.race([once(conn, 'drain').then(() => false), stopped.then(() => true)])) return
    }
  })()
  teardown(t, stop)
  await flooder.next(f => f.code === 'RATE_LIMITED', 30_000)
  const refusedBefore = rp.counters.errors.RATE_LIMITED

  // meanwhile the calm peer writes and reads its own room, one frame at a time
  for (let i = 0; i < 20; i++) {
    calm.send({ type: 'message', roomName: 'calm', message: `c${i}`, id: `c${i}` })
    assert.equal((await calm.next(f => f.type === 'message-ack' && f.id === `c${i}`, 60_000)).messageIndex, i)
    calm.send({ type: 'sync-request', roomName: 'calm', lastIndex: i, requestId: i })
    assert.equal((await calm.next(f => f.requestId === i, 60_000)).messages[0].message, `c${i}`)
  }
  const refusedMeanwhile = rp.counters.errors.RATE_LIMITED - refusedBefore
  stop()
  await flood
  console.log(`calm peer: 20 acks and 20 pages while the flooder got ${refusedMeanwhile} RATE_LIMITED`)
  assert.ok(refusedMeanwhile > 0, 'the flood went on, refused, while the calm peer was served')
  assert.deepEqual(calm.frames.filter(f => f.type === 'error'), [])
})

test('a peer that stops reading holds up only itself: of its 400 page requests (some 200 MiB) fewer than 10 are answered, the daemon\'s peak memory grows by less than 100 MiB meanwhile, and the peer is dropped after STALL_TIMEOUT', async t => {
  const net = await testnet(t)
  // the daemon as a child process: a peer in another process can then be stopped for real (SIGSTOP)
  const d = daemon(t, [], {
    STORAGE_DIR: await tmpDir(t), DHT_BOOTSTRAP: bootstrapEnv(net), DHT_HOST: '127.0.0.1', STATS_INTERVAL: '0',
    RATE_MESSAGES: '0', RATE_BYTES: '0', RATE_SYNCS: '0', STALL_TIMEOUT: '2s'
  })
  const key = await d.ready()
  const stats = async (): Promise<any> => await (await fetch(new URL('/stats', (await d.line(l => l.url !== undefined)).url))).json()
  const writer = await rawPeer(t, net)
  const block = 'b'.repeat(4000)
  for (let i = 0; i < 2000; i++) writer.send({ type: 'message', roomName: 'big', message: block, id: `b${i}` })
  await writer.next(f => f.type === 'message-ack' && f.id === 'b1999', 30_000)
  await writer.close()

  const sentBefore = (await stats()).counters.framesSent['sync-response'] ?? 0
  // from here the peak resident memory (VmHWM) counts again from what is resident now
  await fs.writeFile(`/proc/${d.child.pid!}/clear_refs`, '5')
  const before = await memoryMiB(d.child.pid!)
  // 400 requests for the whole 8 MB room (pages of 512 KiB), then the process stops before reading the answers
  const child = spawn(process.execPath, ['--conditions=source', '--import', 'tsx', path.join(ROOT, 'test/fixtures/stopping-client.ts'), bootstrapEnv(net), key, 'big', '400'], { cwd: ROOT, stdio: ['ignore', 'pipe', 'inherit'] })
  teardown(t, () => { child.kill('SIGKILL') })
  const stalled = await d.line(l => typeof l.msg === 'string' && l.msg.startsWith('peer stalled'), 30_000)
  assert.match(stalled.peerId, /^[0-9a-f]{64}$/)
  const peak = (await memoryMiB(d.child.pid!)).peak

  // meanwhile, and after, another peer is served in full
  const reader = await rawPeer(t, net)
  const { messages, pages } = await reader.syncAll('big')
  assert.equal(messages.length, 2000)
  const after = await stats()
  const toStopped = after.counters.framesSent['sync-response'] - sentBefore - pages.length
  console.log(`slow reader: ${toStopped} of 400 requested pages were written to the stopped peer before it was dropped; daemon RSS ${before.resident.toFixed(0)} MiB, peak meanwhile ${peak.toFixed(0)} MiB`)
  assert.ok(toStopped < 10, `${toStopped} of 400 pages were written to the stopped peer`)
  assert.ok(peak - before.resident < 100, `the daemon's peak memory grew by ${(peak - before.resident).toFixed(0)} MiB`)
  assert.equal(after.counters.stalledPeers, 1)
})

/** A process's resident memory now and its peak (VmHWM), in MiB. */
async function memoryMiB (pid: number): Promise<{ resident: number, peak: number }> {
  const status = await fs.readFile(`/proc/${pid}/status`, 'utf8')
  const kB = (field: string): number => Number(new RegExp(`${field}:\\s+(\\d+) kB`).exec(status)![1])
  return { resident: kB('VmRSS') / 1024, peak: kB('VmHWM') / 1024 }
}

test('1,000 concurrent peers are served; the 1,001st over MAX_PEERS is refused with TOO_MANY_PEERS', async t => {
  const net = await testnet(t)
  // every peer here comes from 127.0.0.1 and stays silent: no per-address cap, no idle timeouts
  const rp = await rootPeer(t, net, { maxPeers: 1000, maxPeersPerHost: 0, firstFrameTimeout: 0, idleEvictAfter: 0 })
  const nodes = Array.from({ length: 4 }, () => new HyperDHT({ bootstrap: net.bootstrap, host: '127.0.0.1' }))
  const conns: any[] = []
  teardown(t, async () => {
    for (const c of conns) c.destroy()
    await Promise.all(nodes.map(n => n.destroy()))
  })
  const first = await Promise.all(Array.from({ length: 1000 }, (_, i) => new Promise<string>(resolve => {
    const conn = (nodes[i % 4] as any).connect(rp.publicKey, { keyPair: HyperDHT.keyPair() })
    conns.push(conn)
    conn.on('error', () => resolve('error'))
    conn.once('data', (d: Buffer) => resolve(JSON.parse(d.toString()).type))
  })))
  assert.equal(first.filter(x => x === 'root-peer-announcement').length, 1000)
  assert.equal(rp.peers.size, 1000)
  const extra = (nodes[0] as any).connect(rp.publicKey, { keyPair: HyperDHT.keyPair() })
  conns.push(extra)
  extra.on('error', () => {})
  const [data] = await once(extra, 'data')
  const refusal = JSON.parse(data.toString())
  assert.equal(refusal.code, 'TOO_MANY_PEERS')
  // the daemon ends its side, and destroys the stream if this peer does not end its own
  await new Promise(resolve => extra.once('close', resolve))
  // the peers already in are still served
  conns[0].write(JSON.stringify({ type: 'message', roomName: 'busy', message: 'still here', id: 'm' }))
  const [ack] = await once(conns[0], 'data')
  assert.equal(JSON.parse(ack.toString()).type, 'message-ack')
})

test('room caps: MAX_ROOMS answers TOO_MANY_ROOMS once every room has history, and new rooms per peer are rate-limited', async t => {
  const net = await testnet(t)
  await rootPeer(t, net, { maxRooms: 3, newRoomsPerMinute: 2 })
  const peer = await rawPeer(t, net)
  for (const r of ['r1', 'r2', 'r3']) peer.send({ type: 'register-room', roomName: r, requestId: r })
  assert.equal((await peer.next(f => f.requestId === 'r1')).type, 'room-registered')
  assert.equal((await peer.next(f => f.requestId === 'r2')).type, 'room-registered')
  const limited = await peer.next(f => f.requestId === 'r3')
  assert.equal(limited.code, 'RATE_LIMITED')
  assert.ok(limited.retryAfterMs > 0)
  // an existing room costs no new-room budget
  peer.send({ type: 'message', roomName: 'r1', message: 'x', id: 'x1' })
  assert.equal((await peer.nextOfType('message-ack')).messageIndex, 0)

  const other = await rawPeer(t, net)
  other.send({ type: 'register-room', roomName: 'r3', requestId: 1 })
  assert.equal((await other.next(f => f.requestId === 1)).type, 'room-registered')
  // an empty room would give its place up to a new one: these have history
  peer.send({ type: 'message', roomName: 'r2', message: 'x', id: 'x2' })
  assert.equal((await peer.next(f => f.id === 'x2')).type, 'message-ack')
  other.send({ type: 'message', roomName: 'r3', message: 'x', id: 'x3' })
  assert.equal((await other.next(f => f.id === 'x3')).type, 'message-ack')
  other.send({ type: 'message', roomName: 'r4', message: 'x', id: 'y' })
  const full = await other.nextOfType('error')
  assert.equal(full.code, 'TOO_MANY_ROOMS')
  assert.equal(full.id, 'y')
})

test('exactly once: a resent id is acked with its original index and duplicate: true, also after a restart', async t => {
  const net = await testnet(t)
  const storage = await tmpDir(t)
  const env = { STORAGE_DIR: storage, DHT_BOOTSTRAP: bootstrapEnv(net), DHT_HOST: '127.0.0.1', STATS_INTERVAL: '0' }
  const first = daemon(t, [], env)
  await first.ready()
  const a = await rawPeer(t, net)
  a.send({ type: 'message', roomName: 'once', message: 'm0', id: 'id-0' })
  a.send({ type: 'message', roomName: 'once', message: 'm1', id: 'id-1' })
  a.send({ type: 'message', roomName: 'once', message: 'm1 again', id: 'id-1' })
  assert.deepEqual(await a.next(f => f.id === 'id-0'), { type: 'message-ack', roomName: 'once', id: 'id-0', messageIndex: 0 })
  assert.deepEqual(await a.next(f => f.id === 'id-1'), { type: 'message-ack', roomName: 'once', id: 'id-1', messageIndex: 1 })
  assert.deepEqual(await a.next(f => f.id === 'id-1'), { type: 'message-ack', roomName: 'once', id: 'id-1', messageIndex: 1, duplicate: true })
  await a.close()
  assert.equal((await first.stop('SIGTERM')).code, 0)

  const second = daemon(t, [], env)
  await second.ready()
  const b = await rawPeer(t, net)
  b.send({ type: 'message', roomName: 'once', message: 'm0 resent', id: 'id-0' })
  assert.deepEqual(await b.next(f => f.id === 'id-0'), { type: 'message-ack', roomName: 'once', id: 'id-0', messageIndex: 0, duplicate: true })
  b.send({ type: 'message', roomName: 'once', message: 'm2', id: 'id-2' })
  assert.equal((await b.next(f => f.id === 'id-2')).messageIndex, 2)
  const { messages } = await b.syncAll('once')
  assert.deepEqual(messages.map(m => m.message), ['m0', 'm1', 'm2'])
})

test('room names that look like prototype keys are ordinary rooms, and survive a restart', async t => {
  const net = await testnet(t)
  const storage = await tmpDir(t)
  const rp = await rootPeer(t, net, { storageDir: storage })
  const peer = await rawPeer(t, net)
  for (const name of ['__proto__', 'constructor', 'hasOwnProperty']) {
    peer.send({ type: 'message', roomName: name, message: `in ${name}`, id: name })
    assert.equal((await peer.next(f => f.id === name)).messageIndex, 0)
  }
  await peer.close()
  await rp.close()
  const again = await rootPeer(t, net, { storageDir: storage })
  assert.equal(again.stats().totalRooms, 3)
  const reader = await rawPeer(t, net)
  const { messages } = await reader.syncAll('__proto__')
  assert.deepEqual(messages.map(m => m.message), ['in __proto__'])
  assert.equal(({} as any).messageCount, undefined)
})

