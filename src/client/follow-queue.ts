import type { SyncedMessage } from './signed-records.js'

/** A followed room's messages not yet taken by the reader, and the index to resume from. */
export class FollowQueue {
  nextIndex: number
  private readonly items: SyncedMessage[] = []
  private waiter: { resolve: (m: SyncedMessage | null) => void, reject: (err: Error) => void } | null = null
  private ended = false
  private error: Error | null = null

  constructor (fromIndex: number) {
    this.nextIndex = fromIndex
  }

  /** A page of the room from the root peer; what this reader had already is skipped. */
  push (messages: readonly SyncedMessage[], nextIndex: number): void {
    for (const m of messages) if (m.messageIndex >= this.nextIndex) this.items.push(m)
    if (Number.isSafeInteger(nextIndex)) this.nextIndex = Math.max(this.nextIndex, nextIndex)
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
    if (this.items.length > 0) return Promise.resolve(this.items.shift()!)
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
