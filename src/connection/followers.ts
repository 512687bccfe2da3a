import { RootPeerError } from '../protocol/errors.js'
import { encodeFollowEnded, encodeFollowLive, encodeFollowMessages, type FollowEndReason, type RequestId } from '../protocol/protocol.js'
import type { RoomState } from '../storage/state-file.js'
import type { Rooms } from '../storage/rooms.js'
import type { Peer } from './peer.js'
import safetyCatch from 'safety-catch'

export interface FollowersOptions {
  rooms: () => Rooms
  send: (peer: Peer, type: string, frame: string) => void
  maxFollows: number
  maxPageMessages: number
  maxPageBytes: number
}

interface Follow {
  peer: Peer
  roomName: string
  roomNameJson: string
  next: number
  requestId: RequestId | undefined
  live: boolean
  pumping: boolean
  // the room grew while a page was being read or sent: read again before resting
  again: boolean
  ended: boolean
}

/** The first index a room serves: retention's horizon, and for a signed room where its signed history starts. */
export function firstReadable (info: RoomState | undefined): number {
  if (info === undefined) return 0
  return Math.max(info.firstIndex ?? 0, info.writerPublicKey === undefined ? 0 : info.signedFrom ?? 0)
}

/**
 * Rooms followed live: each follow sends the room's messages from its index in pages, `follow-live`, then each
 * message as it is stored. One page is read and written at a time, and none while the peer has not read the last
 * (so nothing is buffered for it); it resumes from its index when the peer reads again.
 */
export class Followers {
  private readonly opts: FollowersOptions
  private readonly byRoom = new Map<string, Set<Follow>>()
  private readonly byPeer = new Map<Peer, Map<string, Follow>>()
  private closed = false
  // follows waiting for their peer to read (for the metrics)
  waiting = 0

  constructor (opts: FollowersOptions) {
    this.opts = opts
  }

  get size (): number {
    let n = 0
    for (const follows of this.byPeer.values()) n += follows.size
    return n
  }

  follow (peer: Peer, roomName: string, fromIndex: number, requestId?: RequestId): void {
    let follows = this.byPeer.get(peer)
    const previous = follows?.get(roomName)
    if (previous !== undefined) this.end(previous, 'replaced')
    else if ((follows?.size ?? 0) >= this.opts.maxFollows) throw RootPeerError.TOO_MANY_FOLLOWS(this.opts.maxFollows)
    if (follows === undefined) {
      follows = new Map()
      this.byPeer.set(peer, follows)
    }
    const f: Follow = { peer, roomName, roomNameJson: JSON.stringify(roomName), next: fromIndex, requestId, live: false, pumping: false, again: false, ended: false }
    follows.set(roomName, f)
    let room = this.byRoom.get(roomName)
    if (room === undefined) {
      room = new Set()
      this.byRoom.set(roomName, room)
    }
    room.add(f)
    this.pump(f).catch(safetyCatch)
  }

  /** False when the peer did not follow the room. */
  unfollow (peer: Peer, roomName: string, requestId?: RequestId): boolean {
    const f = this.byPeer.get(peer)?.get(roomName)
    if (f === undefined) return false
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
    this.forget(f)
    this.opts.send(f.peer, 'follow-ended', encodeFollowEnded(f.roomNameJson, reason, requestId))
  }

  private forget (f: Follow): void {
    f.ended = true
    const follows = this.byPeer.get(f.peer)
    if (follows?.get(f.roomName) === f) follows.delete(f.roomName)
    if (follows?.size === 0) this.byPeer.delete(f.peer)
    const room = this.byRoom.get(f.roomName)
    room?.delete(f)
    if (room?.size === 0) this.byRoom.delete(f.roomName)
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
        while (!f.ended && !this.closed && !f.peer.closed) {
          if (f.peer.needsDrain) {
            this.waiting++
            await f.peer.drained().finally(() => { this.waiting-- })
            continue
          }
          if (!(await this.sendPage(f))) break
        }
        if (!f.live && !f.ended && !this.closed) {
          f.live = true
          const firstIndex = firstReadable(await this.opts.rooms().lookup(f.roomName))
          this.opts.send(f.peer, 'follow-live', encodeFollowLive(f.roomNameJson, { nextIndex: f.next, firstIndex }, f.requestId))
        }
      } while (f.again && !f.ended)
    } finally {
      f.pumping = false
    }
  }

  /** Sends the next page; false when there was nothing to send. */
  private async sendPage (f: Follow): Promise<boolean> {
    const rooms = this.opts.rooms()
    const known = await rooms.lookup(f.roomName)
    if (known === undefined || known.messageCount <= f.next) return false
    const room = await rooms.get(f.roomName)
    if (room === null) return false
    let page
    try {
      page = await room.readPage(Math.max(f.next, firstReadable(room.info)), this.opts.maxPageMessages, this.opts.maxPageBytes)
    } finally {
      rooms.release(room)
    }
    if (page.entries.length === 0 || f.ended) return false
    f.next = page.nextIndex
    this.opts.send(f.peer, 'follow-messages', encodeFollowMessages(f.roomNameJson, page.entries, page.nextIndex))
    return true
  }
}
