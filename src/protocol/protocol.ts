import { isUtf8 } from 'node:buffer'
import { ACCESS_VERSION, PROTOCOL_VERSION, RootPeerError, type Frame, type FollowEndReason, type FollowFrame, type Limits, type BatchMessage, type MessageFrame, type RegisterRoomFrame, type RequestId, type StoredRecord, type SyncRequestFrame } from 'root-peer-client/protocol'

export { PROTOCOL_VERSION, type Frame, type FrameType, type FollowEndReason, type FollowFrame, type Limits, type BatchMessage, type MessageBatchFrame, type MessageFrame, type RegisterRoomFrame, type RequestId, type StoredRecord, type SyncRequestFrame, type UnfollowFrame } from 'root-peer-client/protocol'

export const DEFAULT_LIMITS: Readonly<Limits> = Object.freeze({
  maxFrameBytes: 256 * 1024,
  maxMessageBytes: 64 * 1024,
  defaultPageMessages: 500,
  maxPageMessages: 1000,
  maxPageBytes: 512 * 1024,
  messagesPerSecond: 100,
  bytesPerSecond: 1024 * 1024,
  syncsPerSecond: 50,
  registersPerMinute: 600,
  newRoomsPerMinute: 60,
  maxFollows: 64
})

// deeper JSON would make parsing and encoding recurse
export const MAX_NESTING = 32
const MAX_ROOM_NAME = 128
export const MAX_ID = 128
const ROOM_NAME = /^[A-Za-z0-9._~:@+=#-]+$/
const HEX_TOPIC = /^[0-9a-f]{64}$/i
const SIGNATURE = /^[0-9a-f]{128}$/i

type Obj = Record<string, unknown>
type Validator = (obj: Obj, limits: Limits, text: string, maxBatchMessages: number) => Frame

const validators: Record<string, Validator> = {
  'register-room' (obj) {
    const frame: RegisterRoomFrame = { type: 'register-room', roomName: roomNameOf(obj), ...requestIdOf(obj), ...signatureOf(obj) }
    if (obj.writerPublicKey !== undefined) {
      if (typeof obj.writerPublicKey !== 'string' || !HEX_TOPIC.test(obj.writerPublicKey)) throw RootPeerError.BAD_FRAME('writerPublicKey: must be 64 hex characters')
      frame.writerPublicKey = obj.writerPublicKey.toLowerCase()
    }
    return frame
  },

  message (obj, limits, text) {
    const roomName = roomNameOf(obj)
    const message = obj.message
    if (message === undefined || message === null) throw RootPeerError.BAD_FRAME('message: required')
    let messageJson: string
    try {
      messageJson = JSON.stringify(message)
    } catch {
      throw RootPeerError.BAD_FRAME('message: not serialisable')
    }
    const size = typeof message === 'string' ? Buffer.byteLength(message) : Buffer.byteLength(messageJson)
    if (size > limits.maxMessageBytes) throw RootPeerError.MESSAGE_TOO_LARGE(size, limits.maxMessageBytes)
    // a string (the ciphertext) is stored as sent; a number JSON.parse would change is refused, not altered
    if (typeof message !== 'string') checkNumbers(text)
    const frame: MessageFrame = { type: 'message', roomName, message, messageJson, size, ...signatureOf(obj) }
    if (obj.id !== undefined) frame.id = idOf(obj.id)
    return frame
  },

  'message-batch' (obj, limits, text, maxBatchMessages) {
    // not offered (MAX_BATCH_MESSAGES=0): answered as a root peer that predates it answers
    if (maxBatchMessages === 0) throw RootPeerError.UNKNOWN_TYPE('message-batch')
    const roomName = roomNameOf(obj)
    const list = obj.messages
    if (!Array.isArray(list)) throw RootPeerError.BAD_FRAME('messages: required array')
    if (list.length === 0) throw RootPeerError.BAD_FRAME('messages: must hold at least one message')
    if (list.length > maxBatchMessages) throw RootPeerError.BATCH_TOO_LARGE(list.length, maxBatchMessages)
    const messages: BatchMessage[] = []
    let size = 0
    let numbers = false
    for (let i = 0; i < list.length; i++) {
      const item: unknown = list[i]
      if (typeof item !== 'object' || item === null || Array.isArray(item)) throw RootPeerError.BAD_FRAME(`messages[${i}]: must be an object`)
      const { id, message, signature } = item as Obj
      if (message === undefined || message === null) throw RootPeerError.BAD_FRAME(`messages[${i}].message: required`)
      const entry: BatchMessage = { id: idOf(id, `messages[${i}].id`), message, messageJson: JSON.stringify(message), size: 0 }
      entry.size = typeof message === 'string' ? Buffer.byteLength(message) : Buffer.byteLength(entry.messageJson)
      if (signature !== undefined) entry.signature = signatureOf(item as Obj, `messages[${i}].signature`).signature
      // refused on its own, as a `message` frame with it would be; the others are still stored
      if (entry.size > limits.maxMessageBytes) entry.refused = RootPeerError.MESSAGE_TOO_LARGE(entry.size, limits.maxMessageBytes)
      if (typeof message !== 'string') numbers = true
      size += entry.size
      messages.push(entry)
    }
    if (numbers) {
      for (const [i, problem] of batchNumberProblems(text)) messages[i].refused ??= RootPeerError.BAD_FRAME(problem)
    }
    return { type: 'message-batch', roomName, messages, size, ...requestIdOf(obj) }
  },

  'sync-request' (obj, limits) {
    const roomName = roomNameOf(obj)
    const lastIndex = obj.lastIndex === undefined ? 0 : indexOf('lastIndex', obj.lastIndex)
    let limit = limits.defaultPageMessages
    if (obj.limit !== undefined) {
      limit = indexOf('limit', obj.limit)
      if (limit < 1) throw RootPeerError.BAD_FRAME('limit: must be at least 1')
      limit = Math.min(limit, limits.maxPageMessages)
    }
    return { type: 'sync-request', roomName, lastIndex, limit, ...requestIdOf(obj), ...signatureOf(obj) }
  },

  follow (obj) {
    const fromIndex = obj.fromIndex === undefined ? 0 : indexOf('fromIndex', obj.fromIndex)
    return { type: 'follow', roomName: roomNameOf(obj), fromIndex, ...requestIdOf(obj), ...signatureOf(obj) }
  },

  unfollow (obj) {
    return { type: 'unfollow', roomName: roomNameOf(obj), ...requestIdOf(obj) }
  }
}

/** The bytes of one incoming frame as a typed frame, or a coded RootPeerError; the size is checked first. */
export function decodeFrame (data: Buffer, limits: Limits, maxBatchMessages = 0): Frame {
  if (data.byteLength > limits.maxFrameBytes) throw RootPeerError.FRAME_TOO_LARGE(data.byteLength, limits.maxFrameBytes)
  // decoding would put U+FFFD in place of bad bytes, and the message would be stored altered
  if (!isUtf8(data)) throw RootPeerError.BAD_FRAME('not valid UTF-8')
  const text = data.toString('utf8')
  if (mayNest(text, MAX_NESTING) && tooDeep(text, MAX_NESTING)) throw RootPeerError.BAD_FRAME(`nested deeper than ${MAX_NESTING} levels`)
  let obj: unknown
  try {
    obj = JSON.parse(text)
  } catch {
    throw RootPeerError.BAD_FRAME('not a JSON object')
  }
  if (typeof obj !== 'object' || obj === null || Array.isArray(obj)) throw RootPeerError.BAD_FRAME('not a JSON object')
  const type = (obj as Obj).type
  if (typeof type !== 'string') throw RootPeerError.BAD_FRAME('type: required string')
  const validator = Object.hasOwn(validators, type) ? validators[type] : undefined
  if (validator === undefined) throw RootPeerError.UNKNOWN_TYPE(type)
  return validator(obj as Obj, limits, text, maxBatchMessages)
}

/** Throws BAD_FRAME when a number in `message` would not be stored as the same decimal number. */
function checkNumbers (text: string): void {
  const bad = numberProblems(text, false).get(0)
  if (bad !== undefined) throw RootPeerError.BAD_FRAME(bad)
}

/** The messages of a `message-batch` (by position) with a number that would not be stored as the same number. */
function batchNumberProblems (text: string): Map<number, string> {
  return numberProblems(text, true)
}

// `message` is a key at depth 1 of a `message` frame, or at depth 3 of a batch (in the objects of its `messages`)
function numberProblems (text: string, batch: boolean): Map<number, string> {
  const keyDepth = batch ? 3 : 1
  const problems = new Map<number, string>()
  let depth = 0
  let expectKey = false
  let inMessage = false
  let inList = !batch
  let element = 0
  for (let i = 0; i < text.length; i++) {
    let c = text.charCodeAt(i)
    if (c === 0x22) {
      const close = stringEnd(text, i)
      if (expectKey && (depth === keyDepth || depth === 1)) {
        expectKey = false
        const key = text.slice(i, close + 1)
        if (depth === keyDepth && inList) {
          inMessage = isKey(key, 'message')
          // a key repeated in one object keeps its last value
          if (inMessage) problems.delete(element)
        } else if (depth === 1 && isKey(key, 'messages')) {
          inList = true
          element = -1
          problems.clear()
        } else if (depth === 1) {
          inList = false
        }
      }
      i = close
    } else if (c === 0x7b || c === 0x5b) {
      if (++depth === keyDepth) {
        expectKey = true
        if (batch && inList) element++
      } else if (depth === 1) {
        expectKey = true
      }
    } else if (c === 0x7d || c === 0x5d) {
      if (depth-- === keyDepth) inMessage = false
    } else if (c === 0x2c) {
      if (depth === keyDepth || depth === 1) {
        expectKey = true
        if (depth === keyDepth) inMessage = false
      }
    } else if (inMessage && (c === 0x2d || isDigit(c)) && !problems.has(element)) {
      // the number's digits, its value while an integer, and its exponent: most need no conversion
      const from = i
      let digits = 0
      let value = 0
      let integer = true
      let exponent = 0
      if (c === 0x2d) c = text.charCodeAt(++i)
      for (; isDigit(c) || c === 0x2e; c = text.charCodeAt(++i)) {
        if (c === 0x2e) {
          integer = false
          continue
        }
        digits++
        value = value * 10 + c - 0x30
      }
      if (c === 0x65 || c === 0x45) {
        integer = false
        c = text.charCodeAt(++i)
        if (c === 0x2b || c === 0x2d) c = text.charCodeAt(++i)
        for (; isDigit(c); c = text.charCodeAt(++i)) exponent = Math.min(exponent * 10 + c - 0x30, 1e6)
      }
      const to = i--
      const negative = text.charCodeAt(from) === 0x2d
      // exact: an integer a double holds, a zero (but -0), or ≤ 15 digits in a double's normal range (DBL_DIG)
      if (value === 0 ? !negative : integer ? value <= Number.MAX_SAFE_INTEGER : digits <= 15 && exponent <= 280) continue
      const token = text.slice(from, to)
      const stored = storedAs(token)
      if (stored !== null) problems.set(element, `message: number ${token.length > 40 ? token.slice(0, 40) + '…' : token} cannot be stored exactly (it would be ${stored})`)
    }
  }
  return problems
}

function isKey (key: string, name: string): boolean {
  return key === '"' + name + '"' || (key.includes('\\') && JSON.parse(key) === name)
}

function isDigit (c: number): boolean {
  return c >= 0x30 && c <= 0x39
}

/** What a JSON number becomes through JSON.parse and JSON.stringify if that is another number, else null. */
function storedAs (token: string): string | null {
  const n = Number(token)
  if (!Number.isFinite(n)) return 'null'
  const out = JSON.stringify(n)
  if (out === token) return null
  if (Object.is(n, -0)) return out
  return decimal(token) === decimal(out) ? null : out
}

function decimal (token: string): string {
  let s = token
  const negative = s.charCodeAt(0) === 0x2d
  if (negative) s = s.slice(1)
  let exponent = 0
  const e = s.search(/[eE]/)
  if (e !== -1) {
    exponent = Number(s.slice(e + 1))
    s = s.slice(0, e)
  }
  const dot = s.indexOf('.')
  if (dot !== -1) {
    exponent -= s.length - dot - 1
    s = s.slice(0, dot) + s.slice(dot + 1)
  }
  s = s.replace(/^0+/, '')
  if (s === '') return '0'
  const digits = s.replace(/0+$/, '')
  return (negative ? '-' : '') + digits + 'e' + (exponent + s.length - digits.length)
}

function stringEnd (text: string, open: number): number {
  let at = text.indexOf('"', open + 1)
  while (at !== -1) {
    let backslashes = 0
    while (text.charCodeAt(at - 1 - backslashes) === 0x5c) backslashes++
    if (backslashes % 2 === 0) return at
    at = text.indexOf('"', at + 1)
  }
  return text.length
}

/** False when there are too few brackets to nest deeper than `max`: a native search, cheaper than tooDeep. */
function mayNest (text: string, max: number): boolean {
  let brackets = 0
  for (const open of ['{', '[']) {
    for (let at = text.indexOf(open); at !== -1; at = text.indexOf(open, at + 1)) {
      if (++brackets > max) return true
    }
  }
  return false
}

function tooDeep (text: string, max: number): boolean {
  let depth = 0
  let inString = false
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i)
    if (inString) {
      if (c === 0x5c) i++ // backslash: skip the escaped character
      else if (c === 0x22) inString = false
    } else if (c === 0x22) {
      inString = true
    } else if (c === 0x5b || c === 0x7b) {
      if (++depth > max) return true
    } else if (c === 0x5d || c === 0x7d) {
      depth--
    }
  }
  return false
}

/** The error context of a decoded frame: what it was and which request, for the refusal. */
export function contextOf (frame: Frame): Record<string, unknown> {
  const ctx: Record<string, unknown> = { requestType: frame.type, roomName: frame.roomName }
  if (frame.type === 'message' && frame.id !== undefined) ctx.id = frame.id
  if (frame.type !== 'message' && frame.requestId !== undefined) ctx.requestId = frame.requestId
  return ctx
}

/** What can be read of a frame that failed to decode, so the error can name it. */
export function frameContext (data: Buffer, limits: Limits): Obj {
  if (data.byteLength > limits.maxFrameBytes) return {}
  try {
    const text = data.toString('utf8')
    if (tooDeep(text, MAX_NESTING)) return {}
    const obj = JSON.parse(text)
    if (typeof obj !== 'object' || obj === null) return {}
    const ctx: Obj = {}
    if (typeof obj.type === 'string' && obj.type.length <= 64) ctx.requestType = obj.type
    if (typeof obj.id === 'string' && obj.id.length <= MAX_ID) ctx.id = obj.id
    if (isRequestId(obj.requestId)) ctx.requestId = obj.requestId
    return ctx
  } catch {
    return {}
  }
}

function signatureOf (obj: Obj, field = 'signature'): { signature?: string } {
  if (obj.signature === undefined) return {}
  if (typeof obj.signature !== 'string' || !SIGNATURE.test(obj.signature)) throw RootPeerError.BAD_FRAME(`${field}: must be 128 hex characters`)
  return { signature: obj.signature.toLowerCase() }
}

/** Bounded length and characters: a name reaches no prototype, path or storage name it should not. */
export function validateRoomName (name: unknown): string {
  if (typeof name !== 'string') throw RootPeerError.BAD_ROOM_NAME('required string')
  if (name.length === 0 || name.length > MAX_ROOM_NAME) throw RootPeerError.BAD_ROOM_NAME(`length must be 1 to ${MAX_ROOM_NAME}`)
  if (!ROOM_NAME.test(name)) throw RootPeerError.BAD_ROOM_NAME('allowed characters are A-Z a-z 0-9 . _ ~ : @ + = # -')
  if (/^\.+$/.test(name)) throw RootPeerError.BAD_ROOM_NAME('must not be only dots')
  return name
}

export function isHexTopic (name: string): boolean {
  return HEX_TOPIC.test(name)
}

export function encodeRecord (record: StoredRecord, messageJson: string): string {
  // messageJson as decodeFrame serialised it: spliced in, not stringified again
  let json = '{"message":' + messageJson +
    ',"storedAt":' + record.storedAt +
    ',"fromPeer":' + JSON.stringify(record.fromPeer) +
    ',"senderPublicKey":' + JSON.stringify(record.senderPublicKey)
  if (record.id !== undefined) json += ',"id":' + JSON.stringify(record.id)
  if (record.signature !== undefined) json += ',"signature":"' + record.signature + '"'
  return json + '}'
}

const SIGNED_TAIL = /^,"signature":"[0-9a-f]{128}","messageIndex":\d+}$/
const SIGNATURE_FIELD = Buffer.from(',"signature":"')

/** Whether a page entry (see pageEntry) is a signed record: the signature is a record's last field. */
export function isSignedEntry (entry: Buffer): boolean {
  const at = entry.lastIndexOf(SIGNATURE_FIELD)
  return at >= 0 && SIGNED_TAIL.test(entry.toString('latin1', at))
}

/**
 * `relay`: the blind relay's public key (hex), absent when the root peer relays nothing; `batch`: the `message-batch`
 * frame is offered, of at most `maxMessages` messages (absent with MAX_BATCH_MESSAGES=0).
 */
export function encodeAnnouncement (publicKey: string, limits: Readonly<Limits>, challenge: string, relay: string | null = null, maxBatchMessages = 0): object {
  const announcement: Record<string, unknown> = { type: 'root-peer-announcement', version: PROTOCOL_VERSION, publicKey, limits, challenge, access: ACCESS_VERSION }
  if (relay !== null) announcement.relay = relay
  if (maxBatchMessages > 0) announcement.batch = { maxMessages: maxBatchMessages }
  return announcement
}

export function errorFrame (err: RootPeerError, context: Record<string, unknown> = {}): object {
  return { type: 'error', code: err.code, message: err.message, ...err.details, ...context }
}

export function encodeSyncResponse (roomName: string, entries: readonly Buffer[], page: { totalMessages: number, nextIndex: number, firstIndex: number }, requestId?: RequestId): Buffer {
  return withEntries('{"type":"sync-response","roomName":' + JSON.stringify(roomName) + ',"messages":[', entries,
    '],"totalMessages":' + page.totalMessages + ',"nextIndex":' + page.nextIndex +
    ',"hasMore":' + (page.nextIndex < page.totalMessages) + ',"firstIndex":' + page.firstIndex +
    (requestId === undefined ? '}' : ',"requestId":' + JSON.stringify(requestId) + '}'))
}

/** Messages of a followed room, in index order from `firstIndex` of the first one; `nextIndex` follows the last. */
export function encodeFollowMessages (roomNameJson: string, entries: readonly Buffer[], nextIndex: number): Buffer {
  return withEntries('{"type":"follow-messages","roomName":' + roomNameJson + ',"messages":[', entries, '],"nextIndex":' + nextIndex + '}')
}

const COMMA = Buffer.from(',')

/** A frame around a page's entries, as bytes: the entries are copied once, never decoded or encoded as text. */
function withEntries (head: string, entries: readonly Buffer[], tail: string): Buffer {
  const parts: Buffer[] = [Buffer.from(head)]
  for (let i = 0; i < entries.length; i++) {
    if (i > 0) parts.push(COMMA)
    parts.push(entries[i])
  }
  parts.push(Buffer.from(tail))
  return Buffer.concat(parts)
}

/** History is done: what follows are messages as they are stored. */
export function encodeFollowLive (roomNameJson: string, page: { nextIndex: number, firstIndex: number }, requestId?: RequestId): string {
  return '{"type":"follow-live","roomName":' + roomNameJson + ',"nextIndex":' + page.nextIndex + ',"firstIndex":' + page.firstIndex +
    (requestId === undefined ? '}' : ',"requestId":' + JSON.stringify(requestId) + '}')
}

export function encodeFollowEnded (roomNameJson: string, reason: FollowEndReason, requestId?: RequestId): string {
  return '{"type":"follow-ended","roomName":' + roomNameJson + ',"reason":"' + reason + '"' +
    (requestId === undefined ? '}' : ',"requestId":' + JSON.stringify(requestId) + '}')
}

export function encodeAck (roomNameJson: string, id: string, messageIndex: number, duplicate: boolean): string {
  return '{"type":"message-ack","roomName":' + roomNameJson + ',"id":' + JSON.stringify(id) +
    ',"messageIndex":' + messageIndex + (duplicate ? ',"duplicate":true}' : '}')
}

/** What became of one message of a batch: stored at `index` (perhaps before: `duplicate`), or refused. */
export type BatchAck = { id: string, index: number, duplicate: boolean } | { id: string, refused: RootPeerError }

/** The one answer to a `message-batch`, its messages' acks in the batch's order. */
export function encodeBatchAck (roomNameJson: string, acks: readonly BatchAck[], requestId?: RequestId): string {
  let json = '{"type":"message-batch-ack","roomName":' + roomNameJson + ',"acks":['
  for (let i = 0; i < acks.length; i++) {
    const ack = acks[i]
    if (i > 0) json += ','
    if ('refused' in ack) {
      const { code, message, details } = ack.refused
      json += JSON.stringify({ ...details, id: ack.id, code, message })
    } else {
      json += '{"id":' + JSON.stringify(ack.id) + ',"messageIndex":' + ack.index + (ack.duplicate ? ',"duplicate":true}' : '}')
    }
  }
  return json + (requestId === undefined ? ']}' : '],"requestId":' + JSON.stringify(requestId) + '}')
}

/** A page's entry: the stored block with `messageIndex` spliced in before its closing brace, as bytes (not parsed). */
export function pageEntry (block: Buffer, messageIndex: number): Buffer {
  if (block.length >= 2 && block[0] === 0x7b && block[block.length - 1] === 0x7d) {
    if (block.length === 2) return Buffer.from(`{"messageIndex":${messageIndex}}`)
    const tail = ',"messageIndex":' + messageIndex + '}'
    const entry = Buffer.allocUnsafe(block.length - 1 + tail.length)
    block.copy(entry, 0, 0, block.length - 1)
    entry.write(tail, block.length - 1, 'latin1')
    return entry
  }
  // a block that is not a JSON object (not written by this daemon) is passed on as its text
  return Buffer.from(JSON.stringify({ message: block.toString('utf8'), messageIndex }))
}

export function parseRecord (block: Buffer): StoredRecord | null {
  try {
    const obj = JSON.parse(block.toString('utf8'))
    return typeof obj === 'object' && obj !== null ? obj as StoredRecord : null
  } catch {
    return null
  }
}

function roomNameOf (obj: Obj): string {
  return validateRoomName(obj.roomName !== undefined ? obj.roomName : obj.roomId)
}

function idOf (id: unknown, field = 'id'): string {
  if (typeof id !== 'string' || id.length === 0 || id.length > MAX_ID) throw RootPeerError.BAD_FRAME(`${field}: must be a string of 1 to ${MAX_ID} characters`)
  return id
}

function indexOf (field: string, value: unknown): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0) {
    throw RootPeerError.BAD_FRAME(`${field}: must be a non-negative integer`)
  }
  return value
}

function isRequestId (value: unknown): value is RequestId {
  return (typeof value === 'string' && value.length > 0 && value.length <= MAX_ID) ||
    (typeof value === 'number' && Number.isSafeInteger(value))
}

function requestIdOf (obj: Obj): { requestId?: RequestId } {
  if (obj.requestId === undefined) return {}
  if (!isRequestId(obj.requestId)) throw RootPeerError.BAD_FRAME(`requestId: must be a string of 1 to ${MAX_ID} characters or an integer`)
  return { requestId: obj.requestId }
}
