import { RootPeerError } from 'root-peer-client/protocol'
import { encodeFollowEnded, encodeFollowLive, encodeFollowMessages, isSignedEntry, type FollowEndReason, type RequestId } from '../protocol/protocol.js'
import type { RoomState } from '../storage/state-file.js'
import type { Rooms } from '../storage/rooms.js'
import type { Peer } from './peer.js'
import safetyCatch from 'safety-catch'

export interface FollowersOptions {
  rooms: () => Rooms
  send: (peer: Peer, type: string, frame: string | Buffer) => void
  /** whether `signature` proves access to the signed room for this peer's connection */
  verify: (peer: Peer, roomName: string, writerPublicKey: string, signature: string | undefined) => boolean
  /** charges one page to the peer's sync budget: 0, or the ms until it could be charged (nothing charged) */
  chargePage: (peer: Peer) => number
  maxFollows: number
  maxPageMessages: number
  maxPageBytes: number
}

export interface FollowRequest {
  fromIndex: number
  requestId?: RequestId
  signature?: string
  /** the room's key the follow was admitted under (checked by the caller); undefined: the room was unsigned */
  provenKey?: string
}

interface Follow {
  peer: Peer
  roomName: string
  roomNameJson: string
  next: number
  requestId: RequestId | undefined
  signature: string | undefined
  provenKey: string | undefined
  live: boolean
  // the follow frame paid for its first page; later catch-up pages are charged one sync token each
  paid: boolean
  pumping: boolean
  // the room grew while a page was being read or sent: read again before resting
  again: boolean
  ended: boolean
  wake: (() => void) | null
  // resolves `firstAnswer` once its first page or `follow-live` is sent (or it waits behind the slot, or ended)
  started: (() => void) | null
  firstAnswer: Promise<void>
}

/** The first index a room serves: retention's horizon, and for a signed room where its signed history starts. */
export function firstReadable (info: RoomState | undefined): number {
  if (info === undefined) return 0
  return Math.max(info.firstIndex ?? 0, info.writerPublicKey === undefined ? 0 : info.signedFrom ?? 0)
}

/**
 * Rooms followed live: each follow sends the room's messages from its index in pages, `follow-live`, then each
 * message as it is stored. A connection's follows share its one page in flight (`peer.pages`), so nothing more is
 * buffered for a peer that does not read, and each catch-up page is charged like a sync page. Before each page the
 * room's state is looked up again: a follow admitted to an unsigned room ends once the room is signed, unless its
 * frame carried the proof for that key.
 */
export class Followers {
  private readonly opts: FollowersOptions
  private readonly byRoom = new Map<string, Set<Follow>>()
  private readonly byPeer = new Map<Peer, Map<string, Follow>>()
  private closed = false
  // follows waiting for their peer to read (for the metrics)
  waiting = 0
  // follows waiting for their peer's sync budget to refill
  throttled = 0

  constructor (opts: FollowersOptions) {
    this.opts = opts
  }

  get size (): number {
    let n = 0
    for (const follows of this.byPeer.values()) n += follows.size
    return n
  }

  /** True while some connection follows the room: a live follow is use of it. */
  isFollowed (roomName: string): boolean {
    return this.byRoom.has(roomName)
  }

  follow (peer: Peer, roomName: string, req: FollowRequest): void {
    let follows = this.byPeer.get(peer)
    const previous = follows?.get(roomName)
    if (previous !== undefined) this.end(previous, 'replaced')
    else if ((follows?.size ?? 0) >= this.opts.maxFollows) throw RootPeerError.TOO_MANY_FOLLOWS(this.opts.maxFollows)
    if (follows === undefined) {
      follows = new Map()
      this.byPeer.set(peer, follows)
    }
    const f: Follow = {
      peer,
      roomName,
      roomNameJson: JSON.stringify(roomName),
      next: req.fromIndex,
      requestId: req.requestId,
      signature: req.signature,
      provenKey: req.provenKey,
      live: false,
      paid: true,
      pumping: false,
      again: false,
      ended: false,
      wake: null,
      started: null,
      firstAnswer: Promise.resolve()
    }
    follows.set(roomName, f)
    let room = this.byRoom.get(roomName)
    if (room === undefined) {
      room = new Set()
      this.byRoom.set(roomName, room)
    }
    room.add(f)
    f.firstAnswer = new Promise<void>(resolve => { f.started = resolve })
    this.pump(f).catch(safetyCatch).finally(() => f.started?.())
  }

  /** False when the peer did not follow the room. The follow's first page or `follow-live` goes out first. */
  async unfollow (peer: Peer, roomName: string, requestId?: RequestId): Promise<boolean> {
    const f = this.byPeer.get(peer)?.get(roomName)
    if (f === undefined) return false
    await f.firstAnswer
    if (f.ended) return false
    this.end(f, 'unfollowed', requestId)
    return true
  }

  /** The room has new messages (stored here, or replicated to this mirror). */
  grown (roomName: string): void {
    const follows = this.byRoom.get(roomName)
    if (follows === undefined) return
    for (const f of follows) this.pump(f).catch(safetyCatch)
  }

  removed (roomName: string): void {
    for (const f of this.byRoom.get(roomName) ?? []) this.end(f, 'removed')
  }

  /** The peer's connection is gone: its follows end without a word. */
  dropPeer (peer: Peer): void {
    for (const f of this.byPeer.get(peer)?.values() ?? []) this.forget(f)
  }

  close (): void {
    this.closed = true
    for (const follows of [...this.byPeer.values()]) for (const f of follows.values()) this.forget(f)
  }

  private end (f: Follow, reason: FollowEndReason, requestId?: RequestId): void {
    if (f.ended) return
    this.forget(f)
    this.opts.send(f.peer, 'follow-ended', encodeFollowEnded(f.roomNameJson, reason, requestId))
  }

  private forget (f: Follow): void {
    f.ended = true
    f.wake?.()
    f.started?.()
    const follows = this.byPeer.get(f.peer)
    if (follows?.get(f.roomName) === f) follows.delete(f.roomName)
    if (follows?.size === 0) this.byPeer.delete(f.peer)
    const room = this.byRoom.get(f.roomName)
    room?.delete(f)
    if (room?.size === 0) this.byRoom.delete(f.roomName)
  }

  private active (f: Follow): boolean {
    return !f.ended && !this.closed && !f.peer.closed && !f.peer.conn.destroyed
  }

  /** Whether the follow may read the room as it is now: unsigned, or signed with a key the follow proved. */
  private admitted (f: Follow, info: RoomState | undefined): boolean {
    const key = info?.writerPublicKey
    if (key === undefined || key === f.provenKey) return true
    if (!this.opts.verify(f.peer, f.roomName, key, f.signature)) return false
    f.provenKey = key
    return true
  }

  private async pump (f: Follow): Promise<void> {
    if (f.pumping) {
      f.again = true
      return
    }
    f.pumping = true
    try {
      do {
        f.again = false
        while (this.active(f)) {
          // behind the peer's page in flight: the frame's handling goes on, the page comes when the slot is free
          if (f.peer.pages.busy) f.started?.()
          const sent = await f.peer.pages.hold(async () => await this.sendPage(f), waiting => { this.waiting += waiting ? 1 : -1 })
          if (sent === false) break
          if (sent !== true) await this.sleep(f, sent)
        }
        if (!f.live && this.active(f)) await this.goLive(f)
      } while (f.again && this.active(f))
    } finally {
      f.pumping = false
    }
  }

  private async goLive (f: Follow): Promise<void> {
    const info = await this.opts.rooms().lookup(f.roomName)
    if (!this.active(f) || f.live) return
    if (!this.admitted(f, info)) {
      this.end(f, 'unauthorized')
      return
    }
    f.live = true
    this.opts.send(f.peer, 'follow-live', encodeFollowLive(f.roomNameJson, { nextIndex: f.next, firstIndex: firstReadable(info) }, f.requestId))
    f.started?.()
  }

  /**
   * Reads and sends the next page, holding the peer's page slot: true when sent, false when there was nothing to
   * send (or the follow ended), else the ms until the peer's budget pays for the next catch-up page.
   */
  private async sendPage (f: Follow): Promise<boolean | number> {
    if (!this.active(f)) return false
    const rooms = this.opts.rooms()
    const known = await rooms.lookup(f.roomName)
    if (!this.active(f)) return false
    if (!this.admitted(f, known)) {
      this.end(f, 'unauthorized')
      return false
    }
    if (known === undefined || known.messageCount <= f.next) return false
    if (!f.live) {
      if (!f.paid) {
        const wait = this.opts.chargePage(f.peer)
        if (wait > 0) return wait
      }
      f.paid = false
    }
    const room = await rooms.get(f.roomName)
    if (room === null) return false
    let page
    try {
      page = await room.readPage(Math.max(f.next, firstReadable(room.info)), this.opts.maxPageMessages, this.opts.maxPageBytes)
    } finally {
      rooms.release(room)
    }
    if (page.entries.length === 0 || !this.active(f)) return false
    // signed while the page was read: what it holds is sent only to a follow proven for the key. A mirror may
    // hold a signed record before its primary's word that the room is signed: a signed record says so itself
    const now = await rooms.lookup(f.roomName)
    if (!this.admitted(f, now) || (f.provenKey === undefined && now?.primary !== undefined && page.entries.some(isSignedEntry))) {
      this.end(f, 'unauthorized')
      return false
    }
    if (!this.active(f)) return false
    f.next = page.nextIndex
    this.opts.send(f.peer, 'follow-messages', encodeFollowMessages(f.roomNameJson, page.entries, page.nextIndex))
    f.started?.()
    return true
  }

  /** Waits `ms` (the peer's budget refilling), or less if the follow ends meanwhile. */
  private async sleep (f: Follow, ms: number): Promise<void> {
    f.started?.()
    this.throttled++
    try {
      await new Promise<void>(resolve => {
        const timer = setTimeout(done, ms)
        function done (): void {
          clearTimeout(timer)
          f.wake = null
          resolve()
        }
        f.wake = done
      })
    } finally {
      this.throttled--
    }
  }
}
