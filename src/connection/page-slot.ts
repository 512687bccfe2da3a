/** What a slot needs of its connection. */
export interface Drainable {
  readonly needsDrain: boolean
  drained: () => Promise<void>
}

/**
 * A connection's one page in flight, shared by its follows and its sync answers: taken before a page is read,
 * given back once it is written, and the next holder first waits for the peer to have read it. However many
 * follows a peer has, the daemon holds about one page for it.
 */
export class PageSlot {
  private readonly peer: Drainable
  private tail: Promise<void> = Promise.resolve()
  private holders = 0

  constructor (peer: Drainable) {
    this.peer = peer
  }

  /** Whether another holder waits behind the one holding the slot now (the peer asked for more pages at once). */
  get queued (): boolean {
    return this.holders > 1
  }

  /** Whether a page is in flight or waiting for the slot: a new holder would wait. */
  get busy (): boolean {
    return this.holders > 0 || this.peer.needsDrain
  }

  /** Runs `fn` (which reads and writes one page) holding the slot; `onWait` brackets a wait for the peer to read. */
  async hold<T> (fn: () => Promise<T>, onWait?: (waiting: boolean) => void): Promise<T> {
    const previous = this.tail
    let release!: () => void
    this.tail = new Promise(resolve => { release = resolve })
    this.holders++
    try {
      await previous
      if (this.peer.needsDrain) {
        onWait?.(true)
        try {
          await this.peer.drained()
        } finally {
          onWait?.(false)
        }
      }
      return await fn()
    } finally {
      this.holders--
      release()
    }
  }
}
