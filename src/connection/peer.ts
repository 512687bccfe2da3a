import type { NoiseStream } from 'hyperswarm'
import type { PeerRecord } from './guard.js'
import type { InboundAccount } from './inbound.js'
import { newChallenge } from 'root-peer-client/protocol'
import { PageSlot } from './page-slot.js'
import safetyCatch from 'safety-catch'

// a connection's stream is paused at this many frames, or bytes of them, waiting to be handled
const MAX_QUEUED_FRAMES = 64
const MAX_QUEUED_BYTES = 1024 * 1024
export const MAX_PEER_ROOMS = 64
export const CLOSE_GRACE = 2000

export interface PeerOptions {
  stallTimeout: number
  inbound: InboundAccount
  handle: (peer: Peer, data: Buffer) => Promise<void>
  onStall: (peer: Peer) => void
}

/** One peer: frames handled one at a time, in order; a peer that does not read holds up only itself. */
export class Peer {
  readonly id: string
  readonly publicKey: Buffer
  readonly conn: NoiseStream
  readonly record: PeerRecord
  readonly connectedAt = Date.now()
  lastActive = this.connectedAt
  accepted = 0
  readonly rooms = new RoomSet(MAX_PEER_ROOMS)
  // per room, this peer's last message forwarded to another cluster member, until it is acked or refused
  readonly forwards = new Map<string, Promise<unknown>>()
  // answers waiting for one before them (a room-registered waits for its room's index write): in frame order
  answersWaiting = 0
  answers: Promise<void> = Promise.resolve()
  readonly challenge = newChallenge()
  // its follows' pages and sync answers, one in flight at a time
  readonly pages: PageSlot = new PageSlot(this)
  closed = false
  private readonly queue: Buffer[] = []
  private queuedBytes = 0
  private running = false
  private paused = false
  private needDrain = false
  private draining: Promise<void> | null = null
  private readonly opts: PeerOptions

  constructor (conn: NoiseStream, record: PeerRecord, opts: PeerOptions) {
    this.conn = conn
    this.publicKey = conn.remotePublicKey
    this.id = conn.remotePublicKey.toString('hex')
    this.record = record
    this.opts = opts
    conn.on('data', (data: Buffer) => this.push(data))
    conn.on('drain', () => { this.needDrain = false })
    conn.on('close', () => {
      this.closed = true
      this.clearQueue()
    })
  }

  send (frame: object | string | Buffer): boolean {
    if (this.closed || this.conn.destroyed) return false
    const ok = this.conn.write(typeof frame === 'string' || Buffer.isBuffer(frame) ? frame : JSON.stringify(frame))
    if (!ok) this.needDrain = true
    return ok
  }

  get needsDrain (): boolean {
    return this.needDrain
  }

  /** Resolves once the peer has read what was written; past STALL_TIMEOUT it is disconnected instead. */
  drained (): Promise<void> {
    const conn = this.conn
    if (this.closed || conn.destroyed || !this.needDrain) return Promise.resolve()
    // one wait (and one stall timer) however many callers wait
    if (this.draining === null) this.draining = this.waitForDrain(conn).finally(() => { this.draining = null })
    return this.draining
  }

  private waitForDrain (conn: NoiseStream): Promise<void> {
    return new Promise(resolve => {
      const timer = this.opts.stallTimeout > 0
        ? setTimeout(() => {
          this.opts.onStall(this)
          conn.destroy()
        }, this.opts.stallTimeout)
        : null
      const done = (): void => {
        if (timer !== null) clearTimeout(timer)
        conn.off('drain', done)
        conn.off('close', done)
        resolve()
      }
      conn.on('drain', done)
      conn.on('close', done)
    })
  }

  close (): void {
    if (this.closed) return
    this.closed = true
    this.clearQueue()
    endConnection(this.conn, CLOSE_GRACE).catch(safetyCatch)
  }

  private push (data: Buffer): void {
    if (this.closed) return
    this.queue.push(data)
    this.queuedBytes += data.byteLength
    this.opts.inbound.queued(data.byteLength)
    if ((this.queue.length >= MAX_QUEUED_FRAMES || this.queuedBytes >= MAX_QUEUED_BYTES) && !this.paused) {
      this.paused = true
      this.conn.pause()
    }
    if (!this.running) this.run().catch(err => this.conn.destroy(err))
  }

  private async run (): Promise<void> {
    this.running = true
    while (this.queue.length > 0 && !this.closed) {
      // a peer that does not read what we write gets nothing more handled until it does
      if (this.needDrain) await this.drained()
      if (this.closed) break
      const data = this.queue.shift()!
      this.queuedBytes -= data.byteLength
      this.opts.inbound.queued(-data.byteLength)
      await this.opts.handle(this, data)
      if (this.paused && this.queue.length < MAX_QUEUED_FRAMES / 2 && this.queuedBytes < MAX_QUEUED_BYTES / 2) {
        this.paused = false
        this.conn.resume()
      }
    }
    this.running = false
  }

  private clearQueue (): void {
    this.queue.length = 0
    this.opts.inbound.queued(-this.queuedBytes)
    this.queuedBytes = 0
  }
}

/** Room names, keeping the `max` most recently added or looked up. */
export class RoomSet {
  private readonly max: number
  private readonly names = new Set<string>()

  constructor (max: number) {
    this.max = max
  }

  get size (): number {
    return this.names.size
  }

  has (name: string): boolean {
    if (!this.names.delete(name)) return false
    this.names.add(name)
    return true
  }

  add (name: string): void {
    this.names.delete(name)
    this.names.add(name)
    if (this.names.size > this.max) this.names.delete(this.names.values().next().value as string)
  }
}

/** Ends a connection, destroying it if the peer has not ended its side within `timeout` ms. */
export function endConnection (conn: NoiseStream, timeout: number, lastFrame?: string): Promise<void> {
  if (conn.destroyed) return Promise.resolve()
  return new Promise(resolve => {
    const timer = setTimeout(() => {
      conn.destroy()
      resolve()
    }, timeout)
    conn.once('close', () => {
      clearTimeout(timer)
      resolve()
    })
    if (lastFrame === undefined) conn.end()
    else conn.end(lastFrame)
  })
}

/**
 * Ends a connection and resolves once the peer's stream has acked all that was written to it: a peer that keeps
 * its side open is not waited for. Past `timeout` (or when it closes) it resolves too.
 */
export function delivered (conn: NoiseStream, timeout: number): Promise<void> {
  const ended = endConnection(conn, timeout)
  return conn.destroyed ? ended : Promise.race([ended, conn.flush().then(() => {}, safetyCatch)])
}
