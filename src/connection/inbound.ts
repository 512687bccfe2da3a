import type { NoiseStream } from 'hyperswarm'

// what secret-stream adds to each frame's announced length: a header byte and the 16-byte MAC
const FRAME_OVERHEAD = 17

export type DropReason = 'frame-too-large' | 'frame-timeout' | 'buffer-full'

export interface InboundOptions {
  maxFrameBytes: number
  frameTimeout: number
  maxBufferedBytes: number
}

// what secret-stream keeps of the frame it is reading (@hyperswarm/secret-stream 6.x, `_onrawdata`)
interface FrameReader {
  // 0: reading the 3-byte length prefix, 1: reading the body
  _state: number
  _len: number
  // state 0: the multiplier of the next prefix byte (1 before any); state 1: body bytes received
  _tmp: number
  rawStream: NodeJS.EventEmitter
}

interface Held {
  conn: NoiseStream
  partial: number
  queued: number
  timer: NodeJS.Timeout | null
  drop: (reason: DropReason) => void
}

export type Drop = (reason: DropReason, announced: number) => void

export interface InboundAccount {
  queued: (delta: number) => void
}

/** Bounds the incoming bytes strangers can make the daemon hold, below secret-stream (docs/security.md). */
export class Inbound {
  total = 0
  readonly frameTimeout: number
  readonly maxBufferedBytes: number
  private readonly opts: InboundOptions
  private readonly held = new Map<NoiseStream, Held>()

  constructor (opts: InboundOptions) {
    this.opts = opts
    this.frameTimeout = opts.frameTimeout
    this.maxBufferedBytes = opts.maxBufferedBytes
  }

  get connections (): number {
    return this.held.size
  }

  watch (conn: NoiseStream, drop: Drop): InboundAccount {
    const reader = conn as unknown as FrameReader
    let dropped = false
    const h: Held = {
      conn,
      partial: 0,
      queued: 0,
      timer: null,
      drop: reason => {
        if (dropped) return
        dropped = true
        this.forget(h)
        drop(reason, Math.max(0, reader._len - FRAME_OVERHEAD))
      }
    }
    this.held.set(conn, h)
    const check = (): void => {
      if (dropped) return
      const midFrame = !(reader._state === 0 && reader._tmp === 1)
      if (reader._state === 1 && reader._len > this.opts.maxFrameBytes + FRAME_OVERHEAD) {
        h.drop('frame-too-large')
        return
      }
      if (midFrame && h.timer === null) {
        h.timer = setTimeout(() => h.drop('frame-timeout'), this.opts.frameTimeout)
        h.timer.unref()
      } else if (!midFrame && h.timer !== null) {
        clearTimeout(h.timer)
        h.timer = null
      }
      // counted at the announced length: secret-stream allocates the whole frame when its body starts
      this.charge(h, (reader._state === 1 ? reader._len : 0) - h.partial, 0)
    }
    // secret-stream may add its own listener after this one: read the frame's state once it has taken the chunk
    const onData = (): void => queueMicrotask(check)
    reader.rawStream.on('data', onData)
    conn.once('close', () => {
      reader.rawStream.off('data', onData)
      dropped = true
      this.forget(h)
    })
    check()
    return { queued: delta => { if (!dropped) this.charge(h, 0, delta) } }
  }

  private charge (h: Held, partial: number, queued: number): void {
    h.partial += partial
    h.queued += queued
    this.total += partial + queued
    while (this.total > this.opts.maxBufferedBytes && this.held.size > 0) {
      let most: Held = h
      for (const other of this.held.values()) if (other.partial + other.queued > most.partial + most.queued) most = other
      most.drop('buffer-full')
      if (most === h) return
    }
  }

  private forget (h: Held): void {
    if (!this.held.delete(h.conn)) return
    if (h.timer !== null) clearTimeout(h.timer)
    this.total -= h.partial + h.queued
    h.partial = 0
    h.queued = 0
  }
}
