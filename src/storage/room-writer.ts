import { EventEmitter } from 'node:events'
import type { ClusterRooms } from '../cluster/cluster-rooms.js'
import { RootPeerError } from 'root-peer-client/protocol'
import { encodeRecord } from '../protocol/protocol.js'
import type { Pruner } from './pruner.js'
import type { Room } from './room.js'
import { verifyMessage } from 'root-peer-client/protocol'
import type { Rooms } from './rooms.js'
import type { Counters } from '../monitor/stats.js'
import type { StorageHealth } from './storage-health.js'
import type { WalSync } from './wal-sync.js'

export interface WriteRequest {
  roomName: string
  message: unknown
  messageJson: string
  fromPeer: string
  id?: string
  signature?: string
  // the key the caller checked the signature against; checked again only if the room's differs
  checkedKey?: string
}

export interface WriteResult { index: number, duplicate: boolean }

export interface RoomWriterOptions {
  rooms: () => Rooms
  storage: StorageHealth
  walSync: WalSync | null
  cluster: () => ClusterRooms | null
  pruner: Pruner | null
  counters: Counters
  closing: () => boolean
  onLatency: ((kind: 'append' | 'sync', seconds: number) => void) | null
}

/** The one way a record is stored (docs/durability.md). Events: `message-stored`, `append-error`. */
export class RoomWriter extends EventEmitter {
  private readonly opts: RoomWriterOptions

  constructor (opts: RoomWriterOptions) {
    super()
    this.opts = opts
  }

  /** Resolves once queued, with the result wrapped: the caller takes its next frame meanwhile. */
  async queue (req: WriteRequest): Promise<{ result: Promise<WriteResult>, roomNameJson: string }> {
    const rooms = this.opts.rooms()
    const room = rooms.getIfOpen(req.roomName) ?? await rooms.get(req.roomName)
    // removed (an empty room can expire, or give its place to another at MAX_ROOMS) before it was pinned
    if (room === null) throw RootPeerError.UNKNOWN_ROOM(req.roomName)
    let queued = false
    try {
      if (req.id !== undefined) await room.idsReady(req.id)?.catch(err => this.reportAppendError(room, err))
      // no await from here to the append: a room signed meanwhile takes nothing unsigned
      const signer = room.info.writerPublicKey
      if (signer !== undefined && signer !== req.checkedKey) checkSigned(signer, req)
      // a member's message stored unsigned would be hidden below the signedFrom of the room's later signing
      else if (signer === undefined && req.signature !== undefined) throw RootPeerError.UNSIGNED_ROOM()
      const block = Buffer.from(encodeRecord({ message: req.message, storedAt: Date.now(), fromPeer: req.fromPeer, senderPublicKey: req.fromPeer, id: req.id, signature: signer === undefined ? undefined : req.signature }, req.messageJson))
      const started = this.opts.onLatency === null ? 0 : performance.now()
      const appended = req.id === undefined ? room.append(block, null).then(index => ({ index, duplicate: false })) : room.storeOnce(req.id, block)
      queued = true
      return { result: this.settle(rooms, room, req, block.byteLength, appended, started), roomNameJson: room.nameJson }
    } finally {
      if (!queued) rooms.release(room)
    }
  }

  async write (req: WriteRequest): Promise<WriteResult> {
    return await (await this.queue(req)).result
  }

  private async settle (rooms: Rooms, room: Room, req: WriteRequest, bytes: number, appended: Promise<WriteResult>, started: number): Promise<WriteResult> {
    try {
      const result = await appended.catch(err => this.reportAppendError(room, err))
      if (result.duplicate) this.opts.counters.duplicates++
      else this.noteStored(rooms, room, req, result.index, bytes, started)
      await this.keep(rooms, room, result.index)
      return result
    } finally {
      rooms.release(room)
    }
  }

  private noteStored (rooms: Rooms, room: Room, req: WriteRequest, index: number, bytes: number, started: number): void {
    rooms.recordAppend(room, bytes)
    this.opts.pruner?.noteAppend(room)
    if (this.opts.onLatency !== null) this.opts.onLatency('append', (performance.now() - started) / 1000)
    this.opts.counters.messagesStored++
    this.emit('message-stored', { roomName: room.name, messageCount: room.length, totalMessages: rooms.totalMessages, messageIndex: index, peerId: req.fromPeer, id: req.id })
  }

  /** Resolves once the block may be acked: with SYNC_WRITES on disk, with MIN_MIRRORS on that many mirrors. */
  private async keep (rooms: Rooms, room: Room, index: number): Promise<void> {
    if (room.info.writerPublicKey !== undefined) await rooms.waitForSigning(room.name)
    if (this.opts.walSync !== null) await this.opts.walSync.sync()
    const cluster = this.opts.cluster()
    if (cluster !== null) await cluster.waitForMirrors(room.core, index + 1)
  }

  private async reportAppendError (room: Room, err: unknown): Promise<never> {
    this.emit('append-error', { roomName: room.name, err })
    if (this.opts.closing()) throw RootPeerError.STORAGE_ERROR(err)
    // the room's core was closed under the append: it moved (a failover took it over, docs/cluster.md), which is no
    // fault of the disk; the resend goes to the room's primary now
    if (room.core.closed && this.opts.cluster() !== null) {
      throw RootPeerError.PRIMARY_UNAVAILABLE(this.opts.cluster()!.self, 'the room moved to another core while the message was being stored (a failover)')
    }
    throw await this.opts.storage.recordFailure(err)
  }
}

export function checkSigned (writerPublicKey: string, req: Pick<WriteRequest, 'roomName' | 'message' | 'id' | 'signature'>): void {
  if (typeof req.message !== 'string' || req.id === undefined) throw RootPeerError.UNAUTHORIZED('a signed room takes string messages with an id and a signature')
  if (!verifyMessage(writerPublicKey, req.roomName, req.id, req.message, req.signature)) {
    throw RootPeerError.UNAUTHORIZED('a signed room: the message\'s signature over (roomName, id, message) is missing or wrong')
  }
}
