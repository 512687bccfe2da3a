import { EventEmitter } from 'node:events'
import type { ClusterRooms, RemoteRoom } from '../cluster/cluster-rooms.js'
import type { ForwardedWrite } from '../cluster/cluster.js'
import type { ReadPage, ReadRequest } from '../cluster/messages.js'
import type { Connections } from './connections.js'
import { RootPeerError } from 'root-peer-client/protocol'
import type { Peer } from './peer.js'
import { contextOf, encodeAck, encodeBatchAck, encodeFollowEnded, encodeSyncResponse, isSignedEntry, type BatchAck, type FollowFrame, type MessageBatchFrame, type UnfollowFrame, type Frame, type Limits, type MessageFrame, type RegisterRoomFrame, type SyncRequestFrame } from '../protocol/protocol.js'
import { keyMatchesName, verifyAccess } from 'root-peer-client/protocol'
import type { RoomTopics } from './room-topics.js'
import { Followers, firstReadable } from './followers.js'
import { ReadAhead, READ_AHEAD_PAGES } from './read-ahead.js'
import { checkSigned, type RoomWriter, type WriteResult } from '../storage/room-writer.js'
import type { Rooms } from '../storage/rooms.js'
import type { RoomState } from '../storage/state-file.js'
import type { Counters } from '../monitor/stats.js'
import type { StorageHealth } from '../storage/storage-health.js'

// a forwarded write waits this much longer than the REPLICATION_TIMEOUT its primary may wait for mirrors
const FORWARD_GRACE = 2000

/** What the daemon gives the handlers; Connections adds what it shares with them. */
export interface FrameHandlersOptions {
  rooms: () => Rooms
  cluster: () => ClusterRooms | null
  writer: RoomWriter
  topics: RoomTopics
  maxRooms: number
  maxStorageBytes: number
  requireSignedRooms: boolean
  replicationTimeout: number
  onLatency: ((kind: 'append' | 'sync', seconds: number) => void) | null
  removeEmptyRoom: () => Promise<boolean>
}

export interface FrameHandlersContext extends FrameHandlersOptions {
  connections: Connections
  limits: Readonly<Limits>
  counters: Counters
  storage: StorageHealth
  publicKey: () => string
  closing: () => boolean
  track: (promise: Promise<unknown>) => void
}

type Handler<F extends Frame> = (peer: Peer, frame: F) => Promise<void>

/** What each frame a client sends does; a coded error a handler throws is the peer's answer. */
export class FrameHandlers extends EventEmitter {
  readonly followers: Followers
  readonly readAhead: ReadAhead
  private readonly ctx: FrameHandlersContext
  private readonly handlers: { [T in Frame['type']]: Handler<Extract<Frame, { type: T }>> }

  constructor (ctx: FrameHandlersContext) {
    super()
    this.ctx = ctx
    this.readAhead = new ReadAhead(READ_AHEAD_PAGES, ctx.counters)
    const { maxFollows, defaultPageMessages, maxPageBytes } = ctx.limits
    this.followers = new Followers({
      rooms: ctx.rooms,
      send: (peer, type, frame) => ctx.connections.send(peer, type, frame),
      verify: (peer, roomName, key, signature) => verifyAccess(key, ctx.publicKey(), peer.challenge, roomName, signature),
      chargePage: peer => ctx.connections.guard.chargePage(peer.record),
      maxFollows,
      maxPageMessages: defaultPageMessages,
      maxPageBytes
    })
    this.handlers = {
      'register-room': this.onRegisterRoom.bind(this),
      message: this.onMessage.bind(this),
      'message-batch': this.onMessageBatch.bind(this),
      'sync-request': this.onSyncRequest.bind(this),
      follow: this.onFollow.bind(this),
      unfollow: this.onUnfollow.bind(this)
    }
  }

  async dispatch (peer: Peer, frame: Frame): Promise<void> {
    await (this.handlers[frame.type] as Handler<Frame>)(peer, frame)
  }

  async onRegisterRoom (peer: Peer, frame: RegisterRoomFrame): Promise<void> {
    const { roomName, writerPublicKey, signature } = frame
    // the name commits to the key: nobody can claim a signed room's name with another key
    if (writerPublicKey !== undefined && !keyMatchesName(writerPublicKey, roomName)) throw RootPeerError.BAD_ROOM_KEY()
    const rooms = this.ctx.rooms()
    let known = await rooms.lookup(roomName)
    // a removed signed room's name stays signed: its key is kept (docs/security.md)
    const key = writerPublicKey ?? (known === undefined ? this.remoteRoom(roomName)?.writerPublicKey ?? await rooms.writerKey(roomName) : known.writerPublicKey)
    if (key === undefined) {
      if (this.ctx.requireSignedRooms) throw RootPeerError.UNAUTHORIZED('this root peer keeps signed rooms only: register-room needs writerPublicKey and signature')
    } else if (!verifyAccess(key, this.ctx.publicKey(), peer.challenge, roomName, signature)) {
      throw RootPeerError.UNAUTHORIZED('a signed room: register-room needs a signature over (challenge, roomName) by the room\'s key')
    }
    if (this.ctx.cluster() !== null && known === undefined && this.remoteRoom(roomName) === undefined) {
      await this.placeRoom(peer, roomName, writerPublicKey)
      known = await rooms.lookup(roomName)
    }
    // a mirrored room signed here: its primary signs it, and says where its signed history starts
    const cluster = this.ctx.cluster()
    const remote = known === undefined ? this.remoteRoom(roomName) : undefined
    if (cluster !== null && remote !== undefined) {
      // held by other members only (REPLICAS): registered at its primary, nothing stored here
      if (writerPublicKey !== undefined && remote.writerPublicKey === undefined) await cluster.sign(remote.primary, roomName, writerPublicKey)
      // the count now, from a holder (an empty page past the end); what the members last told, if none answers
      const proven = writerPublicKey ?? key
      const count: ReadRequest = { roomName, lastIndex: Number.MAX_SAFE_INTEGER, limit: 1, maxBytes: this.ctx.limits.maxPageBytes, ...(proven === undefined ? {} : { provenKey: proven }) }
      const messageCount = await cluster.read(count).then(page => page.totalMessages, () => this.remoteRoom(roomName)?.length ?? remote.length)
      this.emit('room-registered', { roomId: roomName, roomName, peerId: peer.id, messageCount })
      if (frame.requestId !== undefined) this.ctx.connections.answerOnce(peer, Promise.resolve(), 'room-registered', { type: 'room-registered', roomName, messageCount, requestId: frame.requestId }, contextOf(frame))
      return
    }
    if (cluster !== null && writerPublicKey !== undefined && known?.primary !== undefined && known.writerPublicKey === undefined) {
      await cluster.sign(known.primary, roomName, writerPublicKey)
    }
    const { info, stored } = await this.joinRoom(peer, roomName, { explicit: true, writerPublicKey })
    const { requestId } = frame
    if (requestId === undefined) return
    const { messageCount } = info
    // answered once the room is in the index; the next frame is handled meanwhile
    this.ctx.connections.answerOnce(peer, stored, 'room-registered', { type: 'room-registered', roomName, messageCount, requestId }, contextOf(frame))
  }

  async onMessage (peer: Peer, frame: MessageFrame): Promise<void> {
    const { known, writerPublicKey } = await this.writerOf(frame.roomName)
    this.checkWriter(frame, writerPublicKey)
    const room = await this.openForWrite(peer, frame.roomName, known)
    // returns once the message is queued, so the next frame is handled while it is appended
    const { result, roomNameJson } = await this.store(peer, frame, room, writerPublicKey)
    const { id } = frame
    this.ctx.track(result.then(({ index, duplicate }) => {
      // acked only once the promise is kept (appended; with SYNC_WRITES synced; with MIN_MIRRORS mirrored)
      if (id !== undefined) this.ctx.connections.send(peer, 'message-ack', encodeAck(roomNameJson, id, index, duplicate))
    }, err => this.ctx.connections.refuse(peer, err, contextOf(frame))))
  }

  /**
   * Several messages for one room, each taken as a `message` frame with it would be, in order (Kafka's producer
   * batch: one request, a result per record); answered once, when every one is stored or refused.
   */
  async onMessageBatch (peer: Peer, frame: MessageBatchFrame): Promise<void> {
    const { roomName, messages } = frame
    // what refuses every message refuses the frame, with nothing stored: the room's state, its place, the caps
    const { known, writerPublicKey } = await this.writerOf(roomName)
    const outcomes = new Array<Promise<BatchAck>>(messages.length)
    const accepted: Array<{ at: number, message: MessageFrame }> = []
    for (let at = 0; at < messages.length; at++) {
      const { id, message, messageJson, size, signature, refused } = messages[at]
      const one: MessageFrame = { type: 'message', roomName, message, messageJson, size, id }
      if (signature !== undefined) one.signature = signature
      try {
        if (refused !== undefined) throw refused
        this.checkWriter(one, writerPublicKey)
        accepted.push({ at, message: one })
      } catch (err) {
        outcomes[at] = Promise.resolve({ id, refused: err as RootPeerError })
      }
    }
    if (accepted.length > 0) {
      const room = await this.openForWrite(peer, roomName, known)
      for (const { at, message } of accepted) {
        const id = message.id!
        try {
          const { result } = await this.store(peer, message, room, writerPublicKey)
          outcomes[at] = result.then(({ index, duplicate }) => ({ id, index, duplicate }), err => ({ id, refused: err }))
        } catch (err) {
          outcomes[at] = Promise.resolve({ id, refused: err as RootPeerError })
        }
      }
    }
    this.ctx.track(Promise.all(outcomes).then(acks => {
      const connections = this.ctx.connections
      let ban = false
      for (const ack of acks) {
        if (!('refused' in ack)) continue
        const { coded, ban: earned } = connections.tally(peer, ack.refused)
        ack.refused = coded
        ban ||= earned
      }
      // sent once every message is stored or refused: an ack in it means stored, as a message-ack does
      connections.send(peer, 'message-batch-ack', encodeBatchAck(JSON.stringify(roomName), acks, frame.requestId))
      if (ban) connections.banPeer(peer)
    }))
  }

  /** The room's state a message is checked against; refused when no message may be stored now. */
  private async writerOf (roomName: string): Promise<{ known: RoomState | undefined, writerPublicKey: string | undefined }> {
    if (this.ctx.storage.failure !== null) throw this.ctx.storage.failure
    const rooms = this.ctx.rooms()
    const known = await rooms.lookup(roomName)
    // a removed signed room's name stays signed: its key is kept (docs/security.md)
    const writerPublicKey = known === undefined ? this.remoteRoom(roomName)?.writerPublicKey ?? await rooms.writerKey(roomName) : known.writerPublicKey
    if (writerPublicKey === undefined && this.ctx.requireSignedRooms) throw RootPeerError.UNAUTHORIZED('this root peer keeps signed rooms only: register the room with its key first')
    return { known, writerPublicKey }
  }

  /** A message's own right to its room: a signed room's signature, checked before the room is touched. */
  private checkWriter (frame: MessageFrame, writerPublicKey: string | undefined): void {
    if (writerPublicKey !== undefined) checkSigned(writerPublicKey, frame)
    // a member's message stored unsigned would be hidden below the signedFrom of the room's later signing
    // (in a cluster the primary's writer decides, with its own view of the key)
    else if (frame.signature !== undefined && this.ctx.cluster() === null) throw RootPeerError.UNSIGNED_ROOM()
  }

  /** The room placed (in a cluster), created within the caps and joined by the peer; its state after. */
  private async openForWrite (peer: Peer, roomName: string, known: RoomState | undefined): Promise<RoomState | undefined> {
    const rooms = this.ctx.rooms()
    if (this.ctx.maxStorageBytes > 0 && rooms.totalBytes >= this.ctx.maxStorageBytes) throw RootPeerError.STORAGE_CAP(this.ctx.maxStorageBytes)
    const cluster = this.ctx.cluster()
    if (cluster !== null) {
      if (known === undefined && cluster.remoteRoom(roomName) === undefined) await this.placeRoom(peer, roomName)
      // the primary is known once another member was heard from (it may have taken our rooms over)
      await cluster.waitWritable()
      known = await rooms.lookup(roomName)
      // held by other members only (REPLICAS): the message is forwarded, nothing here to join
      if (known === undefined && cluster.remoteRoom(roomName) !== undefined) return undefined
    }
    // the connection's cache of its rooms does not outlive a room's removal
    if (known !== undefined && peer.rooms.has(roomName)) this.ctx.topics.touch(roomName)
    else await this.joinRoom(peer, roomName)
    return known
  }

  /** Resolves once the message is queued (here, or forwarded to its room's primary), with its result. */
  private async store (peer: Peer, frame: MessageFrame, room: RoomState | undefined, writerPublicKey: string | undefined): Promise<{ result: Promise<WriteResult>, roomNameJson: string }> {
    const primary = room === undefined ? this.remoteRoom(frame.roomName)?.primary : room.primary
    if (primary !== undefined) return this.forward(peer, frame, primary)
    const { roomName, message, messageJson, id, signature } = frame
    const req = { roomName, message, messageJson, fromPeer: peer.id, id, signature, checkedKey: writerPublicKey }
    return await this.ctx.writer.queue(req).catch(async err => {
      // removed (an empty room expired or evicted) between the lookup and the writer's pin: joined again, once
      if ((err as RootPeerError).code !== 'UNKNOWN_ROOM') throw err
      await this.joinRoom(peer, roomName)
      return await this.ctx.writer.queue(req)
    })
  }

  /** A message another member forwarded to this root peer, its room's primary: stored like a client's. */
  async onForwardedWrite (write: ForwardedWrite): Promise<{ messageIndex: number, duplicate: boolean }> {
    if (this.ctx.closing()) throw RootPeerError.SHUTTING_DOWN()
    if (this.ctx.storage.failure !== null) throw this.ctx.storage.failure
    const cluster = this.ctx.cluster()!
    await cluster.waitWritable()
    const rooms = this.ctx.rooms()
    const info = await rooms.lookup(write.roomName)
    if (info === undefined || info.primary !== undefined) throw RootPeerError.PRIMARY_UNAVAILABLE(info?.primary ?? cluster.self)
    if (this.ctx.maxStorageBytes > 0 && rooms.totalBytes >= this.ctx.maxStorageBytes) throw RootPeerError.STORAGE_CAP(this.ctx.maxStorageBytes)
    // the primary checks a signed room's signature too, with its own view: the forwarding member's may be behind
    const { index, duplicate } = await this.ctx.writer.write({ ...write, messageJson: JSON.stringify(write.message) })
    return { messageIndex: index, duplicate }
  }

  /**
   * A page another member read here for its client (it holds no copy of the room): bounded by this root peer's own
   * page limits, and served only under this member's view of the room's key (the forwarder proved `provenKey`).
   */
  async onForwardedRead (req: ReadRequest): Promise<ReadPage> {
    if (this.ctx.closing()) throw RootPeerError.SHUTTING_DOWN()
    const rooms = this.ctx.rooms()
    const room = await rooms.get(req.roomName)
    if (room === null) {
      // a removed signed room is refused the same: no empty page tells a stranger it is gone
      const kept = await rooms.writerKey(req.roomName)
      if (kept !== undefined && kept !== req.provenKey) throw RootPeerError.UNAUTHORIZED('a signed room: sync-request needs a signature over (challenge, roomName) by the room\'s key')
      throw RootPeerError.UNKNOWN_ROOM(req.roomName)
    }
    let page
    let firstIndex = 0
    try {
      await room.barrier()
      firstIndex = firstReadable(room.info)
      const { maxPageMessages, maxPageBytes } = this.ctx.limits
      page = await room.readPage(Math.max(req.lastIndex, firstIndex), Math.max(1, Math.min(req.limit, maxPageMessages)), Math.min(req.maxBytes, maxPageBytes))
    } finally {
      rooms.release(room)
    }
    const now = await rooms.lookup(req.roomName)
    const key = now?.writerPublicKey
    if (key !== undefined && key !== req.provenKey) throw RootPeerError.UNAUTHORIZED('a signed room: sync-request needs a signature over (challenge, roomName) by the room\'s key')
    if (key === undefined && now?.primary !== undefined && page.entries.some(isSignedEntry)) {
      throw RootPeerError.UNAUTHORIZED('a room being signed: retry, with a signature over (challenge, roomName) by the room\'s key')
    }
    return { entries: page.entries, totalMessages: page.totalMessages, nextIndex: page.nextIndex, firstIndex }
  }

  async onSyncRequest (peer: Peer, frame: SyncRequestFrame): Promise<void> {
    const { roomName, lastIndex, limit, requestId } = frame
    const started = this.ctx.onLatency === null ? 0 : performance.now()
    const rooms = this.ctx.rooms()
    const { provenKey } = await this.admitReader(peer, frame)
    const cluster = this.ctx.cluster()
    if (cluster !== null && !cluster.holds(roomName) && await rooms.lookup(roomName) === undefined) {
      // held by other members only (REPLICAS): read at one that holds it, in the connection's one page slot
      await peer.pages.hold(async () => {
        const req: ReadRequest = { roomName, lastIndex, limit, maxBytes: this.ctx.limits.maxPageBytes }
        if (provenKey !== undefined) req.provenKey = provenKey
        const page = await cluster.read(req).catch(err => {
          // no such room at its holders: the empty page a root peer without it gives
          if ((err as RootPeerError).code !== 'UNKNOWN_ROOM') throw err
          return { entries: [], totalMessages: 0, nextIndex: lastIndex, firstIndex: 0 }
        })
        this.ctx.connections.send(peer, 'sync-response', encodeSyncResponse(roomName, page.entries, page, requestId))
      })
      if (this.ctx.onLatency !== null) this.ctx.onLatency('sync', (performance.now() - started) / 1000)
      return
    }
    // the connection's one page in flight, shared with its follows
    await peer.pages.hold(async () => {
      const room = await rooms.get(roomName)
      if (room === null) {
        this.ctx.connections.send(peer, 'sync-response', encodeSyncResponse(roomName, [], { totalMessages: 0, nextIndex: lastIndex, firstIndex: 0 }, requestId))
        return
      }
      this.ctx.topics.touch(roomName)
      let page
      let firstIndex = 0
      try {
        await room.barrier()
        // a signed room's members are served its signed history only, from signedFrom
        firstIndex = firstReadable(room.info)
        const from = Math.max(lastIndex, firstIndex)
        const { maxPageBytes } = this.ctx.limits
        page = await this.readAhead.take(peer, room, from, limit, maxPageBytes) ?? await room.readPage(from, limit, maxPageBytes)
      } finally {
        rooms.release(room)
      }
      // signed since the reader was admitted (while it waited): the page is for the key's holders only
      const now = await rooms.lookup(roomName)
      const key = now?.writerPublicKey
      if (key !== undefined && key !== provenKey && !verifyAccess(key, this.ctx.publicKey(), peer.challenge, roomName, frame.signature)) {
        throw RootPeerError.UNAUTHORIZED('a signed room: sync-request needs a signature over (challenge, roomName) by the room\'s key')
      }
      // a mirror can hold a signed record before its primary's word that the room is signed: the record says so
      // (a room of this root peer's own is signed in its index before any signed record is stored)
      if (key === undefined && now?.primary !== undefined && page.entries.some(isSignedEntry)) {
        throw RootPeerError.UNAUTHORIZED('a room being signed: retry, with a signature over (challenge, roomName) by the room\'s key')
      }
      // the next page is read while this one is on the wire, unless the peer has asked for others already
      if (page.nextIndex < page.totalMessages && !peer.pages.queued) this.readAhead.start(peer, rooms, roomName, page.nextIndex, limit, this.ctx.limits.maxPageBytes)
      this.ctx.connections.send(peer, 'sync-response', encodeSyncResponse(roomName, page.entries, { ...page, firstIndex }, requestId))
    })
    if (this.ctx.onLatency !== null) this.ctx.onLatency('sync', (performance.now() - started) / 1000)
  }

  async onFollow (peer: Peer, frame: FollowFrame): Promise<void> {
    const cluster = this.ctx.cluster()
    // not forwarded yet: a follow here of a room held elsewhere would never see its messages
    if (cluster !== null && !cluster.holds(frame.roomName) && await this.ctx.rooms().lookup(frame.roomName) === undefined) {
      const primary = cluster.remoteRoom(frame.roomName)?.primary ?? cluster.holders(frame.roomName)[0]
      throw RootPeerError.PRIMARY_UNAVAILABLE(primary, 'this root peer holds no copy of the room (REPLICAS); follow it at one of its holders, or read it with sync-request here')
    }
    const { exists, provenKey } = await this.admitReader(peer, frame)
    if (exists) this.ctx.topics.touch(frame.roomName)
    // what the follow proved is kept: each of its pages is admitted again under the room's state then
    const { fromIndex, requestId, signature } = frame
    this.followers.follow(peer, frame.roomName, { fromIndex, requestId, signature, provenKey })
  }

  async onUnfollow (peer: Peer, frame: UnfollowFrame): Promise<void> {
    if (!(await this.followers.unfollow(peer, frame.roomName, frame.requestId))) {
      this.ctx.connections.send(peer, 'follow-ended', encodeFollowEnded(JSON.stringify(frame.roomName), 'unfollowed', frame.requestId))
    }
  }

  /**
   * A signed room is read only with the access proof; a read after this connection's own message sees it.
   * Resolves with whether the room exists and the key the reader proved access for (none: the room was unsigned).
   */
  private async admitReader (peer: Peer, frame: SyncRequestFrame | FollowFrame): Promise<{ exists: boolean, provenKey: string | undefined }> {
    const rooms = this.ctx.rooms()
    const known = await rooms.lookup(frame.roomName)
    const remote = known === undefined ? this.remoteRoom(frame.roomName) : undefined
    // a removed signed room is refused the same: no empty page tells a stranger it is gone
    const writerPublicKey = known === undefined ? remote?.writerPublicKey ?? await rooms.writerKey(frame.roomName) : known.writerPublicKey
    if (writerPublicKey !== undefined && !verifyAccess(writerPublicKey, this.ctx.publicKey(), peer.challenge, frame.roomName, frame.signature)) {
      throw RootPeerError.UNAUTHORIZED(`a signed room: ${frame.type} needs a signature over (challenge, roomName) by the room's key`)
    }
    const forwarded = peer.forwards.get(frame.roomName)
    if (forwarded !== undefined) await forwarded
    return { exists: known !== undefined || remote !== undefined, provenKey: writerPublicKey }
  }

  /** A room this member holds no copy of (REPLICAS below the members), as its holders told of it. */
  private remoteRoom (roomName: string): RemoteRoom | undefined {
    return this.ctx.cluster()?.remoteRoom(roomName)
  }

  /** Registers the room unless it exists (within the caps); an `explicit` register-room is reported every time. */
  private async joinRoom (peer: Peer, roomName: string, { explicit = false, writerPublicKey }: { explicit?: boolean, writerPublicKey?: string } = {}): Promise<{ info: RoomState, stored: Promise<void> }> {
    const rooms = this.ctx.rooms()
    if (await rooms.lookup(roomName) === undefined) {
      this.ctx.connections.guard.admitNewRoom(peer.record)
      // full: an empty room (a stranger's, most likely) gives its place up; rooms with history never do
      if (rooms.size >= this.ctx.maxRooms && !(this.ctx.cluster() === null && await this.ctx.removeEmptyRoom())) throw RootPeerError.TOO_MANY_ROOMS(this.ctx.maxRooms)
    }
    const registered = await rooms.register(roomName, writerPublicKey)
    const { info } = registered
    this.ctx.topics.touch(roomName)
    const fresh = !peer.rooms.has(roomName)
    if (fresh) peer.rooms.add(roomName)
    if (explicit || fresh) {
      this.emit('room-registered', { roomId: roomName, roomName, peerId: peer.id, messageCount: info.messageCount })
    }
    return registered
  }

  private async placeRoom (peer: Peer, roomName: string, writerPublicKey?: string): Promise<void> {
    await this.ctx.cluster()!.place(roomName, writerPublicKey, held => {
      if (held && this.ctx.rooms().size >= this.ctx.maxRooms) throw RootPeerError.TOO_MANY_ROOMS(this.ctx.maxRooms)
      this.ctx.connections.guard.admitNewRoom(peer.record)
    })
  }

  /** The primary's index, once this member has the block too. */
  private forward (peer: Peer, frame: MessageFrame, primary: string): { result: Promise<WriteResult>, roomNameJson: string } {
    const write: ForwardedWrite = { roomName: frame.roomName, message: frame.message, fromPeer: peer.id }
    if (frame.id !== undefined) write.id = frame.id
    if (frame.signature !== undefined) write.signature = frame.signature
    const result = this.ctx.cluster()!.forward(primary, write, this.ctx.replicationTimeout + FORWARD_GRACE).then(async ({ messageIndex, duplicate }) => {
      await this.waitForBlock(frame.roomName, messageIndex)
      this.ctx.counters.forwardedWrites++
      return { index: messageIndex, duplicate: duplicate === true }
    })
    // a read after this message waits for it (admitReader)
    const forwarded = result.then(() => {}, () => {}).finally(() => {
      if (peer.forwards.get(frame.roomName) === forwarded) peer.forwards.delete(frame.roomName)
    })
    peer.forwards.set(frame.roomName, forwarded)
    this.ctx.track(forwarded)
    return { result, roomNameJson: JSON.stringify(frame.roomName) }
  }

  private async waitForBlock (roomName: string, index: number): Promise<void> {
    // a room held by other members only: its primary's ack is the ack (no copy here to wait for)
    if (this.remoteRoom(roomName) !== undefined && await this.ctx.rooms().lookup(roomName) === undefined) return
    const room = await this.ctx.rooms().get(roomName)
    if (room === null) throw RootPeerError.INTERNAL_ERROR(new Error(`mirrored room ${roomName} is gone`))
    try {
      await room.core.get(index, { timeout: this.ctx.replicationTimeout })
    } catch (err) {
      throw RootPeerError.NOT_HELD(index, this.ctx.replicationTimeout, err)
    } finally {
      this.ctx.rooms().release(room)
    }
   }
}
