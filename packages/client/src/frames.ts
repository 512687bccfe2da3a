import { RootPeerError } from './protocol/errors.js'
import type { Limits } from './protocol/frame-types.js'

// What a root peer sends a client, decoded once at the edge: a frame of a known type with every field the client
// reads of the right type, or a BAD_FRAME error the client reports (`frame-rejected`) and drops. Nothing behind
// this trusts a field it did not check. The records inside a page are checked one by one later (record-filter.ts).

export type RequestId = string | number

export interface AnnouncementFrame { type: 'root-peer-announcement', version: number, publicKey: string, limits: Partial<Limits>, challenge?: string, access?: number, relay?: string, batch?: { maxMessages: number } }
export interface RoomRegisteredFrame { type: 'room-registered', roomName: string, messageCount: number, requestId?: RequestId }
export interface MessageAckFrame { type: 'message-ack', roomName?: string, id: string, messageIndex: number, duplicate: boolean }
/** One message of a batch: stored at `messageIndex`, or refused with `code`. */
export type BatchAckEntry = { id: string, messageIndex: number, duplicate: boolean } | { id: string, code: string, message: string, retryAfterMs?: number }
export interface MessageBatchAckFrame { type: 'message-batch-ack', roomName: string, acks: BatchAckEntry[], requestId?: RequestId }
export interface SyncResponseFrame { type: 'sync-response', roomName: string, messages: unknown[], totalMessages: number, nextIndex: number, hasMore: boolean, firstIndex: number, requestId?: RequestId }
export interface FollowMessagesFrame { type: 'follow-messages', roomName: string, messages: unknown[], nextIndex: number }
export interface FollowLiveFrame { type: 'follow-live', roomName: string, nextIndex: number, firstIndex: number, requestId?: RequestId }
export interface FollowEndedFrame { type: 'follow-ended', roomName: string, reason: string, requestId?: RequestId }
export interface ErrorFrame { type: 'error', code: string, message: string, requestType?: string, roomName?: string, id?: string, requestId?: RequestId, retryAfterMs?: number, [field: string]: unknown }

export type RootPeerFrame = AnnouncementFrame | RoomRegisteredFrame | MessageAckFrame | MessageBatchAckFrame | SyncResponseFrame | FollowMessagesFrame | FollowLiveFrame | FollowEndedFrame | ErrorFrame

/** A longer wait than this in `retryAfterMs` is taken as this: a root peer cannot park a message or a follow for days. */
export const MAX_RETRY_AFTER = 60_000

const MAX_NAME = 128
const MAX_TEXT = 4096
const HEX_KEY = /^[0-9a-f]{64}$/i
const CODE = /^[A-Z][A-Z_]{0,63}$/
const LIMIT_FIELDS: ReadonlyArray<keyof Limits> = ['maxFrameBytes', 'maxMessageBytes', 'defaultPageMessages', 'maxPageMessages', 'maxPageBytes', 'messagesPerSecond', 'bytesPerSecond', 'syncsPerSecond', 'registersPerMinute', 'newRoomsPerMinute', 'maxFollows']

type Obj = Record<string, unknown>

const decoders: Record<string, (obj: Obj) => RootPeerFrame> = {
  'root-peer-announcement' (obj) {
    const limits: Partial<Limits> = {}
    if (typeof obj.limits !== 'object' || obj.limits === null || Array.isArray(obj.limits)) throw bad('limits: required object')
    for (const field of LIMIT_FIELDS) {
      const value = (obj.limits as Obj)[field]
      if (value !== undefined) limits[field] = count(`limits.${field}`, value)
    }
    const frame: AnnouncementFrame = { type: 'root-peer-announcement', version: count('version', obj.version), publicKey: key('publicKey', obj.publicKey), limits }
    if (obj.challenge !== undefined) frame.challenge = key('challenge', obj.challenge)
    if (obj.access !== undefined) frame.access = count('access', obj.access)
    if (obj.relay !== undefined) frame.relay = key('relay', obj.relay)
    if (obj.batch !== undefined) {
      if (typeof obj.batch !== 'object' || obj.batch === null || Array.isArray(obj.batch)) throw bad('batch: must be an object')
      frame.batch = { maxMessages: count('batch.maxMessages', (obj.batch as Obj).maxMessages) }
    }
    return frame
  },

  'room-registered' (obj) {
    return { type: 'room-registered', roomName: name(obj.roomName), messageCount: count('messageCount', obj.messageCount), ...requestIdOf(obj) }
  },

  'message-ack' (obj) {
    if (obj.duplicate !== undefined && typeof obj.duplicate !== 'boolean') throw bad('duplicate: must be a boolean')
    const frame: MessageAckFrame = { type: 'message-ack', id: text('id', obj.id, MAX_NAME), messageIndex: count('messageIndex', obj.messageIndex), duplicate: obj.duplicate === true }
    if (obj.roomName !== undefined) frame.roomName = name(obj.roomName)
    return frame
  },

  'message-batch-ack' (obj) {
    if (!Array.isArray(obj.acks) || obj.acks.length === 0) throw bad('acks: required non-empty array')
    const acks = obj.acks.map((entry: unknown, i: number): BatchAckEntry => {
      if (typeof entry !== 'object' || entry === null || Array.isArray(entry)) throw bad(`acks[${i}]: must be an object`)
      const e = entry as Obj
      const id = text(`acks[${i}].id`, e.id, MAX_NAME)
      if (e.messageIndex !== undefined) {
        if (e.duplicate !== undefined && typeof e.duplicate !== 'boolean') throw bad(`acks[${i}].duplicate: must be a boolean`)
        return { id, messageIndex: count(`acks[${i}].messageIndex`, e.messageIndex), duplicate: e.duplicate === true }
      }
      if (typeof e.code !== 'string' || !CODE.test(e.code)) throw bad(`acks[${i}]: messageIndex or code required`)
      const refused: BatchAckEntry = { id, code: e.code, message: typeof e.message === 'string' ? e.message.slice(0, MAX_TEXT) : '' }
      if (e.retryAfterMs !== undefined) refused.retryAfterMs = Math.min(count(`acks[${i}].retryAfterMs`, e.retryAfterMs), MAX_RETRY_AFTER)
      return refused
    })
    return { type: 'message-batch-ack', roomName: name(obj.roomName), acks, ...requestIdOf(obj) }
  },

  'sync-response' (obj) {
    if (typeof obj.hasMore !== 'boolean') throw bad('hasMore: required boolean')
    return {
      type: 'sync-response',
      roomName: name(obj.roomName),
      messages: list(obj.messages),
      totalMessages: count('totalMessages', obj.totalMessages),
      nextIndex: count('nextIndex', obj.nextIndex),
      hasMore: obj.hasMore,
      firstIndex: obj.firstIndex === undefined ? 0 : count('firstIndex', obj.firstIndex),
      ...requestIdOf(obj)
    }
  },

  'follow-messages' (obj) {
    return { type: 'follow-messages', roomName: name(obj.roomName), messages: list(obj.messages), nextIndex: count('nextIndex', obj.nextIndex) }
  },

  'follow-live' (obj) {
    return { type: 'follow-live', roomName: name(obj.roomName), nextIndex: count('nextIndex', obj.nextIndex), firstIndex: obj.firstIndex === undefined ? 0 : count('firstIndex', obj.firstIndex), ...requestIdOf(obj) }
  },

  'follow-ended' (obj) {
    return { type: 'follow-ended', roomName: name(obj.roomName), reason: text('reason', obj.reason, 64), ...requestIdOf(obj) }
  },

  error (obj) {
    if (typeof obj.code !== 'string' || !CODE.test(obj.code)) throw bad('code: required, upper-case letters and _')
    const frame: ErrorFrame = { ...obj, type: 'error', code: obj.code, message: typeof obj.message === 'string' ? obj.message.slice(0, MAX_TEXT) : '' }
    for (const field of ['requestType', 'id'] as const) {
      if (obj[field] !== undefined) frame[field] = text(field, obj[field], MAX_NAME)
    }
    if (obj.roomName !== undefined) frame.roomName = name(obj.roomName)
    if (obj.requestId !== undefined) frame.requestId = requestIdOf(obj).requestId
    if (obj.retryAfterMs !== undefined) frame.retryAfterMs = Math.min(count('retryAfterMs', obj.retryAfterMs), MAX_RETRY_AFTER)
    return frame
  }
}

/** One frame from the root peer: parsed and checked for its type, or a BAD_FRAME RootPeerError. */
export function decodeRootPeerFrame (data: Buffer): RootPeerFrame {
  let obj: unknown
  try {
    obj = JSON.parse(data.toString('utf8'))
  } catch {
    throw bad('not JSON')
  }
  if (typeof obj !== 'object' || obj === null || Array.isArray(obj)) throw bad('not a JSON object')
  const type = (obj as Obj).type
  if (typeof type !== 'string') throw bad('type: required string')
  if (!Object.hasOwn(decoders, type)) throw bad(`unknown type ${JSON.stringify(type.slice(0, 64))}`)
  try {
    return decoders[type](obj as Obj)
  } catch (err) {
    if (err instanceof RootPeerError) throw new RootPeerError('BAD_FRAME', `${type}: ${err.message}`)
    throw err
  }
}

/** The type a frame that failed to decode claimed, when it claimed one (for `frame-rejected`). */
export function claimedType (data: Buffer): string | null {
  try {
    const type = JSON.parse(data.toString('utf8'))?.type
    return typeof type === 'string' ? type.slice(0, 64) : null
  } catch {
    return null
  }
}

function bad (message: string): RootPeerError {
  return new RootPeerError('BAD_FRAME', message)
}

/** A non-negative safe integer: an index, a count, a limit. */
function count (field: string, value: unknown): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0) throw bad(`${field}: must be a non-negative integer`)
  return value
}

function text (field: string, value: unknown, max: number): string {
  if (typeof value !== 'string' || value.length === 0 || value.length > max) throw bad(`${field}: must be a string of 1 to ${max} characters`)
  return value
}

function name (value: unknown): string {
  return text('roomName', value, MAX_NAME)
}

function key (field: string, value: unknown): string {
  if (typeof value !== 'string' || !HEX_KEY.test(value)) throw bad(`${field}: must be 64 hex characters`)
  return value.toLowerCase()
}

function list (value: unknown): unknown[] {
  if (!Array.isArray(value)) throw bad('messages: required array')
  return value
}

function requestIdOf (obj: Obj): { requestId?: RequestId } {
  const id = obj.requestId
  if (id === undefined) return {}
  if ((typeof id === 'string' && id.length > 0 && id.length <= MAX_NAME) || (typeof id === 'number' && Number.isSafeInteger(id))) return { requestId: id }
  throw bad('requestId: must be a short string or an integer')
}
