import { RootPeerError, type ErrorCode } from './protocol/errors.js'
import { FollowQueue } from './follow-queue.js'
import type { ErrorFrame, FollowEndedFrame, FollowLiveFrame, FollowMessagesFrame } from './frames.js'
import type { RecordFilter } from './record-filter.js'

// what the app's follows may hold that it has not taken; past it a follow is stopped until half is taken
export const MAX_QUEUED_BYTES = 8 * 1024 * 1024
export const MAX_QUEUED_MESSAGES = 4096
// a wait a root peer asks for is at least this long, so a refusal cannot make the client resend in a loop
const MIN_RETRY = 100

/** What the follows need of the client: its connection, its frames out, its events and counters. */
export interface FollowsHost {
  /** the current connection (compared, never used), or null */
  connection: () => object | null
  write: (frame: object) => void
  /** a follow frame with the signed room's access proof */
  followFrame: (roomName: string, fromIndex: number) => object
  emit: (event: string, ...args: unknown[]) => boolean
  counters: { pagesDropped: number }
}

/**
 * The client's followed rooms: each one's queue, and its follow on the current connection. A follow whose app is
 * behind is stopped with `unfollow` (the connection goes on carrying acks and answers) and followed again from the
 * message after the last one the app was given, once it has taken half.
 */
export class Follows {
  private readonly queues = new Map<string, FollowQueue>()

  constructor (private readonly host: FollowsHost) {}

  open (roomName: string, filter: RecordFilter): FollowQueue {
    if (this.queues.has(roomName)) throw new RootPeerError('BAD_FRAME', `room ${roomName} is followed already`)
    const queue = new FollowQueue(filter, () => this.unpark())
    this.queues.set(roomName, queue)
    this.start(roomName, queue)
    return queue
  }

  close (roomName: string, queue: FollowQueue): void {
    if (this.queues.get(roomName) !== queue) return
    this.queues.delete(roomName)
    if (queue.following) this.host.write({ type: 'unfollow', roomName })
    this.unpark()
  }

  connected (): void {
    for (const [roomName, queue] of this.queues) this.start(roomName, queue)
  }

  disconnected (): void {
    for (const queue of this.queues.values()) {
      queue.following = false
      queue.ending = false
    }
  }

  endAll (): void {
    for (const queue of this.queues.values()) queue.end()
  }

  messages (frame: FollowMessagesFrame, bytes: number): void {
    const queue = this.queues.get(frame.roomName)
    // pages of a follow this client stopped, still on their way: what it resumes from comes again
    if (queue === undefined || !queue.streaming) {
      this.host.counters.pagesDropped++
      return
    }
    queue.push(queue.filter.accept(frame.messages), Math.ceil(bytes / Math.max(1, frame.messages.length)))
    if (queue.length > MAX_QUEUED_MESSAGES || this.queuedBytes() > MAX_QUEUED_BYTES) this.park(frame.roomName, queue)
  }

  /** Whether it was the live mark of a follow that runs (an answer: the root peer proved useful). */
  live (frame: FollowLiveFrame): boolean {
    const queue = this.queues.get(frame.roomName)
    if (queue?.streaming !== true) return false
    // where the follow would resume, not the root peer's word for it
    this.host.emit('follow-live', frame.roomName, queue.filter.nextIndex)
    return true
  }

  ended (frame: FollowEndedFrame): void {
    const queue = this.queues.get(frame.roomName)
    if (queue === undefined) return
    if (queue.ending) {
      // the follow this client stopped is over: what comes next is a new follow's
      queue.ending = false
      this.start(frame.roomName, queue)
      return
    }
    if (!queue.following) return
    if (frame.reason === 'removed') {
      queue.following = false
      queue.end()
    } else if (frame.reason === 'unauthorized') {
      queue.following = false
      queue.fail(new RootPeerError('UNAUTHORIZED', 'the root peer ended the follow: the room is signed, and this client did not prove its key'))
    }
  }

  /** A `follow` refused: a rate limit is waited out; any other refusal ends the follow with it. */
  refused (frame: ErrorFrame): void {
    const roomName = frame.roomName
    const queue = roomName === undefined ? undefined : this.queues.get(roomName)
    if (roomName === undefined || queue === undefined || !queue.following) return
    queue.following = false
    if (frame.code !== 'RATE_LIMITED') {
      queue.fail(new RootPeerError(frame.code as ErrorCode, frame.message, frame))
      return
    }
    const conn = this.host.connection()
    setTimeout(() => { if (this.queues.get(roomName) === queue && this.host.connection() === conn) this.start(roomName, queue) }, retryDelay(frame))
  }

  /** An `unfollow` refused (a rate limit): the follow runs on, so it is asked again, its pages dropped meanwhile. */
  unfollowRefused (frame: ErrorFrame): void {
    const roomName = frame.roomName
    if (roomName === undefined || this.queues.get(roomName)?.ending !== true) return
    const conn = this.host.connection()
    setTimeout(() => { if (this.queues.get(roomName)?.ending === true && this.host.connection() === conn) this.host.write({ type: 'unfollow', roomName }) }, retryDelay(frame))
  }

  private start (roomName: string, queue: FollowQueue): void {
    if (this.host.connection() === null || queue.parked || queue.following || queue.ending) return
    queue.following = true
    queue.filter.restart()
    this.host.write(this.host.followFrame(roomName, queue.filter.nextIndex))
  }

  /** The app is behind: the follow stops (the root peer holds only its index) until the app has taken half. */
  private park (roomName: string, queue: FollowQueue): void {
    queue.parked = true
    if (!queue.following) return
    queue.following = false
    queue.ending = true
    this.host.write({ type: 'unfollow', roomName })
    this.host.emit('follow-paused', roomName, queue.length)
  }

  private unpark (): void {
    if (this.queuedBytes() > MAX_QUEUED_BYTES / 2) return
    for (const [roomName, queue] of this.queues) {
      if (!queue.parked || queue.length > MAX_QUEUED_MESSAGES / 2) continue
      queue.parked = false
      this.host.emit('follow-resumed', roomName, queue.filter.nextIndex)
      this.start(roomName, queue)
    }
  }

  private queuedBytes (): number {
    let bytes = 0
    for (const queue of this.queues.values()) bytes += queue.bytes
    return bytes
  }
}

/** The wait an `error` frame asks for (already at most MAX_RETRY_AFTER), or 1 s; never less than MIN_RETRY. */
export function retryDelay (frame: { retryAfterMs?: number }): number {
  return Math.max(frame.retryAfterMs ?? 1000, MIN_RETRY)
}
