import type { NoiseStream } from 'hyperswarm'

/** Incoming frames queued per connection before the stream is paused. */
const MAX_QUEUED_FRAMES = 64

/**
 * One connected peer. Frames are handled strictly one after another, in arrival order;
 * reading is paused while too many wait, and `drained()` lets a handler wait for a slow reader.
 */
export class Peer {
  readonly id: string
  readonly publicKey: Buffer
  readonly conn: NoiseStream
  readonly connectedAt = Date.now()
  readonly rooms = new Set<string>()
  closed = false
  private readonly queue: Buffer[] = []
  private running = false
  private paused = false
  private needDrain = false
  private readonly handle: (peer: Peer, data: Buffer) => Promise<void>

  constructor (conn: NoiseStream, handle: (peer: Peer, data: Buffer) => Promise<void>) {
    this.conn = conn
    this.publicKey = conn.remotePublicKey
    this.id = conn.remotePublicKey.toString('hex')
    this.handle = handle
    conn.on('data', (data: Buffer) => this.push(data))
    conn.on('drain', () => { this.needDrain = false })
    conn.on('close', () => {
      this.closed = true
      this.queue.length = 0
    })
  }

  /** Writes one frame; returns false when the stream's buffer is full. */
  send (frame: object | string): boolean {
    if (this.closed || this.conn.destroyed) return false
    const ok = this.conn.write(typeof frame === 'string' ? frame : JSON.stringify(frame))
    if (!ok) this.needDrain = true
    return ok
  }

  /** Resolves when the stream can take more, or is gone. */
  drained (): Promise<void> {
    const conn = this.conn
    if (this.closed || conn.destroyed || !this.needDrain) return Promise.resolve()
    return new Promise(resolve => {
      const done = (): void => {
        conn.off('drain', done)
        conn.off('close', done)
        resolve()
      }
      conn.on('drain', done)
      conn.on('close', done)
    })
  }

  /** Frames received and not handled yet. */
  get backlog (): number {
    return this.queue.length
  }

  private push (data: Buffer): void {
    if (this.closed) return
    this.queue.push(data)
    if (this.queue.length >= MAX_QUEUED_FRAMES && !this.paused) {
      this.paused = true
      this.conn.pause()
    }
    if (!this.running) this.run().catch(err => this.conn.destroy(err))
  }

  private async run (): Promise<void> {
    this.running = true
    while (this.queue.length > 0 && !this.closed) {
      const data = this.queue.shift()!
      await this.handle(this, data)
      if (this.paused && this.queue.length < MAX_QUEUED_FRAMES / 2) {
        this.paused = false
        this.conn.resume()
      }
    }
    this.running = false
  }
}
