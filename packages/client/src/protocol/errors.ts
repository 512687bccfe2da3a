/** Every refusal the daemon gives a peer, and every failure it reports, carries one of these codes. */
export type ErrorCode =
  | 'BAD_FRAME'
  | 'UNKNOWN_TYPE'
  | 'FRAME_TOO_LARGE'
  | 'MESSAGE_TOO_LARGE'
  | 'BATCH_TOO_LARGE'
  | 'BAD_ROOM_NAME'
  | 'SHUTTING_DOWN'
  | 'STORAGE_ERROR'
  | 'STORAGE_FULL'
  | 'BAD_ROOM_KEY'
  | 'UNAUTHORIZED'
  | 'TOO_MANY_PEERS'
  | 'TOO_MANY_ROOMS'
  | 'TOO_MANY_FOLLOWS'
  | 'RATE_LIMITED'
  | 'BANNED'
  | 'INTERNAL_ERROR'
  | 'PRIMARY_UNAVAILABLE'
  | 'NOT_REPLICATED'
  | 'IDLE'
  | 'FRAME_INCOMPLETE'
  | 'OVERLOADED'
  // raised by the client library, never sent by the daemon
  | 'DISCONNECTED'
  | 'TIMEOUT'
  // raised by the data-dir lock and the admin commands, never sent by the daemon
  | 'DATA_DIR_LOCKED'
  | 'DATA_DIR_COPIED'
  | 'NO_DATA_DIR'
  | 'UNKNOWN_ROOM'
  | 'BAD_IMPORT'
  | 'NOT_EMPTY'
  | 'BAD_ARCHIVE'

export class RootPeerError extends Error {
  readonly code: ErrorCode
  /** Extra fields that go out in the `error` frame next to `code` and `message`. */
  readonly details: Record<string, unknown>

  constructor (code: ErrorCode, message: string, details: Record<string, unknown> = {}) {
    super(message)
    this.name = 'RootPeerError'
    this.code = code
    this.details = details
  }

  static BAD_FRAME (message: string): RootPeerError {
    return new RootPeerError('BAD_FRAME', message)
  }

  static UNKNOWN_TYPE (type: string): RootPeerError {
    return new RootPeerError('UNKNOWN_TYPE', `unknown frame type ${JSON.stringify(type.slice(0, 64))}`)
  }

  static FRAME_TOO_LARGE (size: number, max: number): RootPeerError {
    return new RootPeerError('FRAME_TOO_LARGE', `frame of ${size} bytes is over the ${max}-byte limit`, { maxFrameBytes: max })
  }

  static MESSAGE_TOO_LARGE (size: number, max: number): RootPeerError {
    return new RootPeerError('MESSAGE_TOO_LARGE', `message of ${size} bytes is over the ${max}-byte limit`, { maxMessageBytes: max })
  }

  static BATCH_TOO_LARGE (count: number, max: number): RootPeerError {
    return new RootPeerError('BATCH_TOO_LARGE', `message-batch of ${count} messages is over the ${max}-message limit`, { maxBatchMessages: max })
  }

  static BAD_ROOM_NAME (reason: string): RootPeerError {
    return new RootPeerError('BAD_ROOM_NAME', `bad roomName: ${reason}`)
  }

  static SHUTTING_DOWN (): RootPeerError {
    return new RootPeerError('SHUTTING_DOWN', 'the root peer is shutting down; retry on reconnect')
  }

  static TOO_MANY_PEERS (max: number): RootPeerError {
    return new RootPeerError('TOO_MANY_PEERS', `the root peer serves at most ${max} peers at once; retry later`, { maxPeers: max })
  }

  static TOO_MANY_PEERS_FROM_HOST (max: number): RootPeerError {
    return new RootPeerError('TOO_MANY_PEERS', `the root peer serves at most ${max} connections from one address at once; retry later`, { maxPeersPerHost: max })
  }

  static IDLE (idleMs: number): RootPeerError {
    return new RootPeerError('IDLE', `disconnected after ${idleMs} ms without a valid frame`, { idleMs })
  }

  static FRAME_INCOMPLETE (timeoutMs: number): RootPeerError {
    return new RootPeerError('FRAME_INCOMPLETE', `a frame was not finished within ${timeoutMs} ms`, { frameTimeoutMs: timeoutMs })
  }

  static OVERLOADED (maxBufferedBytes: number): RootPeerError {
    return new RootPeerError('OVERLOADED', `incoming frames of all peers reached ${maxBufferedBytes} bytes; this connection held the most`, { maxBufferedBytes })
  }

  static TOO_MANY_ROOMS (max: number): RootPeerError {
    return new RootPeerError('TOO_MANY_ROOMS', `the root peer holds at most ${max} rooms; no new room can be created`, { maxRooms: max })
  }

  static TOO_MANY_FOLLOWS (max: number): RootPeerError {
    return new RootPeerError('TOO_MANY_FOLLOWS', `a connection follows at most ${max} rooms; unfollow one first`, { maxFollows: max })
  }

  static RATE_LIMITED (what: string, retryAfterMs: number): RootPeerError {
    return new RootPeerError('RATE_LIMITED', `too many ${what}; retry after ${retryAfterMs} ms`, { retryAfterMs })
  }

  static BANNED (retryAfterMs: number): RootPeerError {
    return new RootPeerError('BANNED', `too many refused frames: disconnected, and refused for ${Math.round(retryAfterMs / 1000)} s`, { retryAfterMs })
  }

  static INTERNAL_ERROR (cause: unknown): RootPeerError {
    const err = new RootPeerError('INTERNAL_ERROR', 'the frame could not be handled')
    err.cause = cause
    return err
  }

  static STORAGE_FULL (freeBytes: number | null, cause?: unknown): RootPeerError {
    const err = new RootPeerError('STORAGE_FULL', 'the root peer\'s disk is full; the message was not stored; retry later', freeBytes === null ? {} : { freeBytes })
    err.cause = cause
    return err
  }

  static STORAGE_CAP (maxStorageBytes: number): RootPeerError {
    return new RootPeerError('STORAGE_FULL', `the root peer holds its most message bytes (MAX_STORAGE_BYTES ${maxStorageBytes}); the message was not stored; retry later`, { maxStorageBytes })
  }

  static BAD_ROOM_KEY (): RootPeerError {
    return new RootPeerError('BAD_ROOM_KEY', 'roomName is not the discovery key of writerPublicKey: a signed room\'s name must be hex(discoveryKey(writerPublicKey))')
  }

  static UNAUTHORIZED (reason: string): RootPeerError {
    return new RootPeerError('UNAUTHORIZED', reason)
  }

  /** A signed message for a room not signed here: stored unsigned, a later signing would hide it from members. */
  static UNSIGNED_ROOM (): RootPeerError {
    return new RootPeerError('UNAUTHORIZED', 'a message with a signature: its room is not signed here; register it with its key first')
  }

  static STORAGE_ERROR (cause: unknown): RootPeerError {
    const err = new RootPeerError('STORAGE_ERROR', 'the message could not be stored; retry later')
    err.cause = cause
    return err
  }

  static DATA_DIR_LOCKED (dir: string): RootPeerError {
    return new RootPeerError('DATA_DIR_LOCKED', `data dir ${dir} is in use by another process (a running root peer?); stop it first`, { storageDir: dir })
  }

  static DATA_DIR_COPIED (dir: string, cause: unknown): RootPeerError {
    const err = new RootPeerError('DATA_DIR_COPIED', `data dir ${dir} is a file-by-file copy (its CORESTORE device file belongs to the original); make copies with \`root-peer backup\` and \`restore\`, or, if the original will never run again, delete ${dir}/CORESTORE to adopt this one`, { storageDir: dir })
    err.cause = cause
    return err
  }

  static PRIMARY_UNAVAILABLE (primary: string, why?: string): RootPeerError {
    return new RootPeerError('PRIMARY_UNAVAILABLE', `${why ?? `the room's primary root peer ${primary.slice(0, 16)}… is not reachable from this one`}; the message was not stored; retry later or at another root peer`, { primary })
  }

  static NOT_HELD (messageIndex: number, timeoutMs: number, cause: unknown): RootPeerError {
    const err = new RootPeerError('NOT_REPLICATED', `the primary stored the message at index ${messageIndex}, but this root peer did not get it within ${timeoutMs} ms; it is not acked here; resend it (same id)`, { messageIndex })
    err.cause = cause
    return err
  }

  static NO_DATA_DIR (dir: string): RootPeerError {
    return new RootPeerError('NO_DATA_DIR', `no root peer data dir at ${dir} (set STORAGE_DIR or --storage)`, { storageDir: dir })
  }

  static UNKNOWN_ROOM (roomName: string): RootPeerError {
    return new RootPeerError('UNKNOWN_ROOM', `no room ${JSON.stringify(roomName)} in this data dir`, { roomName })
  }

  static BAD_IMPORT (line: number, reason: string): RootPeerError {
    return new RootPeerError('BAD_IMPORT', `line ${line}: ${reason}; nothing was imported`, { line })
  }

  static NOT_EMPTY (dir: string, reason = '; restore --force replaces what is in it'): RootPeerError {
    return new RootPeerError('NOT_EMPTY', `data dir ${dir} is not empty${reason}`, { storageDir: dir })
  }

  static BAD_ARCHIVE (file: string, reason: string): RootPeerError {
    return new RootPeerError('BAD_ARCHIVE', `${file} is not a root peer backup: ${reason}`, { file })
  }

  static NOT_REPLICATED (stored: number, wanted: number, timeoutMs: number): RootPeerError {
    return new RootPeerError('NOT_REPLICATED', `only ${stored} of the ${wanted} mirrors required (MIN_MIRRORS) stored the message within ${timeoutMs} ms; it is not acked; resend it (same id)`, { mirrors: stored, minMirrors: wanted })
  }
}
