import type { RecordFilter, SyncedMessage } from './record-filter.js'

interface Queued { message: SyncedMessage, bytes: number }

/**
 * A followed room's messages not yet taken by the app, the filter that decides which records it gets (and so the
 * index to resume from), and where its follow stands on the current connection.
 */
export class FollowQueue {
  /** bytes of the frames the queued messages came in, shared out among them */
  bytes = 0
  /** the app's backlog passed the mark: no follow runs until it has taken it down to half */
  parked = false
  /** a `follow` runs on this connection */
  following = false
  /** `unfollow` sent and its `follow-ended` not come: the pages still on their way are dropped */
  ending = false
  private readonly items: Queued[] = []
  private waiter: { resolve: (m: SyncedMessage | null) => void, reject: (err: Error) => void } | null = null
  private ended = false
  private error: Error | null = null

  constructor (readonly filter: RecordFilter, private readonly onTaken: () => void) {}

  get length (): number {
    return this.items.length
  }

  /** Whether the pages that come now belong to the follow that runs. */
  get streaming (): boolean {
    return this.following && !this.ending
  }

  push (messages: readonly SyncedMessage[], bytes: number): void {
    for (const message of messages) {
      this.items.push({ message, bytes })
      this.bytes += bytes
    }
    this.wake()
  }

  end (): void {
    this.ended = true
    this.wake()
  }

  fail (err: Error): void {
    this.error = err
    this.wake()
  }

  next (): Promise<SyncedMessage | null> {
    const item = this.items.shift()
    if (item !== undefined) {
      this.bytes -= item.bytes
      this.onTaken()
      return Promise.resolve(item.message)
    }
    if (this.error !== null) return Promise.reject(this.error)
    if (this.ended) return Promise.resolve(null)
    return new Promise((resolve, reject) => { this.waiter = { resolve, reject } })
  }

  private wake (): void {
    const waiter = this.waiter
    if (waiter === null) return
    this.waiter = null
    this.next().then(waiter.resolve, waiter.reject)
  }
}
