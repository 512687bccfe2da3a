import c, { type Encoder, type State } from 'compact-encoding'
import { RootPeerError, type ErrorCode } from 'root-peer-client/protocol'

/** A room as members tell each other of it; keys are hex here, 32 bytes on the wire. */
export interface RoomAd {
  name: string
  key: string
  /** absent: the sender */
  primary?: string
  writerPublicKey?: string
  promotedFrom?: string
  length?: number
  signedFrom?: number
}

/** A client's `message` forwarded by a member that is not the room's primary. */
export interface ForwardedWrite {
  roomName: string
  message: unknown
  id?: string
  fromPeer: string
  signature?: string
}

export interface WriteResult { messageIndex: number, duplicate: boolean }
export interface CreateRequest { roomName: string, writerPublicKey?: string }
export interface RoomList { rooms: RoomAd[], more: boolean }
/**
 * A client's `sync-request` forwarded by a member that holds no copy of the room (REPLICAS below the members) to one
 * that does. `provenKey`: the room's key the client proved access for at the forwarding member (none: unsigned there).
 */
export interface ReadRequest { roomName: string, lastIndex: number, limit: number, maxBytes: number, provenKey?: string }
/** A page as the holder read it: its entries as bytes (protocol.ts pageEntry), bounded by the request's maxBytes. */
export interface ReadPage { entries: Buffer[], totalMessages: number, nextIndex: number, firstIndex: number }

type Fields<T> = ReadonlyArray<readonly [keyof T & string, Encoder<any> | null]>

/** Hyperschema's layout: required fields, uint flags, then the optional ones (no encoding: a boolean). */
function struct<T extends object> (required: Fields<T>, optional: Fields<T> = []): Encoder<T> {
  const flagsOf = (m: any): number => optional.reduce((flags, [name, enc], i) =>
    (enc === null ? m[name] === true : m[name] !== undefined) ? flags | (1 << i) : flags, 0)
  const walk = (op: 'preencode' | 'encode') => (state: State, m: any): void => {
    for (const [name, enc] of required) enc![op](state, m[name])
    const flags = flagsOf(m)
    c.uint[op](state, flags)
    optional.forEach(([name, enc], i) => { if (enc !== null && (flags & (1 << i)) !== 0) enc[op](state, m[name]) })
  }
  return {
    preencode: walk('preencode'),
    encode: walk('encode'),
    decode (state) {
      const m: any = {}
      for (const [name, enc] of required) m[name] = enc!.decode(state)
      const flags = c.uint.decode(state)
      optional.forEach(([name, enc], i) => {
        const set = (flags & (1 << i)) !== 0
        if (enc === null) m[name] = set
        else if (set) m[name] = enc.decode(state)
      })
      return m
    }
  }
}

function hex (bytes: number): Encoder<string> {
  const fixed = c.fixed(bytes)
  const pattern = new RegExp(`^[0-9a-f]{${bytes * 2}}$`, 'i')
  return {
    preencode (state, s) {
      if (!pattern.test(s)) throw new Error(`not ${bytes} bytes in hex`)
      state.end += bytes
    },
    encode (state, s) { fixed.encode(state, Buffer.from(s, 'hex')) },
    decode (state) { return Buffer.from(fixed.decode(state)).toString('hex') }
  }
}

const key = hex(32)

/** Malformed JSON is a plain Error: safety-catch in protomux-rpc would rethrow a SyntaxError and crash. */
const json: Encoder<unknown> = {
  preencode (state, v) { c.string.preencode(state, stringify(v)) },
  encode (state, v) { c.string.encode(state, stringify(v)) },
  decode (state) {
    const text = c.string.decode(state)
    try {
      return JSON.parse(text)
    } catch (err) {
      throw new Error('malformed JSON', { cause: err })
    }
  }
}

function stringify (v: unknown): string {
  const text = JSON.stringify(v)
  if (typeof text !== 'string') throw new Error('not serialisable as JSON')
  return text
}

export const roomAd = struct<RoomAd>(
  [['name', c.string], ['key', key]],
  [['primary', key], ['writerPublicKey', key], ['promotedFrom', key], ['length', c.uint], ['signedFrom', c.uint]]
)
export const forwardedWrite = struct<ForwardedWrite>(
  [['roomName', c.string], ['fromPeer', key], ['message', json]],
  [['id', c.string], ['signature', hex(64)]]
)
export const writeResult = struct<WriteResult>([['messageIndex', c.uint]], [['duplicate', null]])
export const createRequest = struct<CreateRequest>([['roomName', c.string]], [['writerPublicKey', key]])
export const readRequest = struct<ReadRequest>([['roomName', c.string], ['lastIndex', c.uint], ['limit', c.uint], ['maxBytes', c.uint]], [['provenKey', key]])
export const readPage = struct<ReadPage>([['entries', c.array(c.buffer)], ['totalMessages', c.uint], ['nextIndex', c.uint], ['firstIndex', c.uint]])
export const roomList = struct<RoomList>([['rooms', c.array(roomAd)]], [['more', null]])

const refusal = struct<{ code: string, message: string, details: unknown }>([['code', c.string], ['message', c.string], ['details', json]])

/** `enc`'s value, or the coded refusal the handler gave (flag bit 0), for the requester to throw. */
export function orRefusal<T> (enc: Encoder<T>): Encoder<T | RootPeerError> {
  const walk = (op: 'preencode' | 'encode') => (state: State, m: T | RootPeerError): void => {
    const refused = m instanceof RootPeerError
    c.uint[op](state, refused ? 1 : 0)
    if (refused) refusal[op](state, m)
    else enc[op](state, m)
  }
  return {
    preencode: walk('preencode'),
    encode: walk('encode'),
    decode (state) {
      if ((c.uint.decode(state) & 1) === 0) return enc.decode(state)
      const { code, message, details } = refusal.decode(state)
      const fields = typeof details === 'object' && details !== null && !Array.isArray(details) ? details as Record<string, unknown> : {}
      return new RootPeerError(code as ErrorCode, message, fields)
    }
  }
}

export interface Requests {
  write: [ForwardedWrite, WriteResult]
  create: [CreateRequest, RoomAd]
  read: [ReadRequest, ReadPage]
}

export const requests: { [M in keyof Requests]: { requestEncoding: Encoder<Requests[M][0]>, responseEncoding: Encoder<Requests[M][1] | RootPeerError> } } = {
  write: { requestEncoding: forwardedWrite, responseEncoding: orRefusal(writeResult) },
  create: { requestEncoding: createRequest, responseEncoding: orRefusal(roomAd) },
  read: { requestEncoding: readRequest, responseEncoding: orRefusal(readPage) }
}

export const roomsEvent = { requestEncoding: roomList }
