import { RootPeerError, type ErrorCode } from './protocol/errors.js'
import type { Limits } from './protocol/frame-types.js'
import { TokenBucket } from './protocol/token-bucket.js'
import type { BatchAckEntry } from './frames.js'

export interface MessageAck { id: string, messageIndex: number, duplicate: boolean }

interface Outgoing {
  frame: { type: 'message', roomName: string, message: unknown, id: string, signature?: string }
  size: number
  resolve: (ack: MessageAck) => void
  reject: (err: RootPeerError) => void
  retries: number
  timer: ReturnType<typeof setTimeout> | null
}

// refusals after which a message is resent; any other is final
const TRANSIENT: ReadonlySet<string> = new Set(['SHUTTING_DOWN', 'STORAGE_ERROR', 'INTERNAL_ERROR', 'RATE_LIMITED', 'TOO_MANY_PEERS', 'STORAGE_FULL', 'PRIMARY_UNAVAILABLE', 'NOT_REPLICATED'])
const RESEND_BACKOFF = [1000, 5000, 15000, 60000]
const MIN_RESEND = 100
// what a message-batch frame holds besides its messages (type, roomName, requestId), counted generously
const BATCH_OVERHEAD = 512
// the client's own bounds on a batch, whatever a root peer announces: a frame of a few MiB can reset the connection
const MAX_BATCH = 1000
const MAX_BATCH_FRAME_BYTES = 1024 * 1024

/** A sent batch, until its ack: the ids it carried, in order. */
interface SentBatch { roomName: string, ids: string[] }

/** Each message until its ack: paced to the root peer's budgets, resent on reconnect or a passing refusal. */
export class Outbox {
  private readonly messages = new Map<string, Outgoing>()
  private queue: Outgoing[] = []
  private timer: ReturnType<typeof setTimeout> | null = null
  private send: ((frame: object) => void) | null = null
  private messageBudget = new TokenBucket(0, 1)
  private byteBudget = new TokenBucket(0, 1)
  // the root peer's offer: messages a batch may carry (0: it takes message frames only), and the frame cap
  private maxBatch = 0
  private maxFrameBytes = 0
  private readonly batches = new Map<string, SentBatch>()
  private nextBatch = 1
  private pumpQueued = false
  private resendTimer: ReturnType<typeof setTimeout> | null = null

  get size (): number {
    return this.messages.size
  }

  add (roomName: string, message: unknown, id: string, signature?: string): Promise<MessageAck> {
    return new Promise((resolve, reject) => {
      const size = Buffer.byteLength(typeof message === 'string' ? message : JSON.stringify(message) ?? '')
      const frame = { type: 'message' as const, roomName, message, id, ...(signature === undefined ? {} : { signature }) }
      const out: Outgoing = { frame, size, resolve, reject, retries: 0, timer: null }
      this.messages.set(id, out)
      this.enqueue(out)
    })
  }

  /**
   * On each connection: everything unacked goes out again, within the new root peer's budgets; in batches of at most
   * `maxBatch` messages of one room when it offers them (the announcement's `batch.maxMessages`).
   */
  connected (send: (frame: object) => void, limits: Partial<Limits> | undefined, maxBatch = 0): void {
    this.send = send
    this.maxBatch = Math.min(maxBatch, MAX_BATCH)
    const announced = limits?.maxFrameBytes ?? 0
    this.maxFrameBytes = announced > 0 ? Math.min(announced, MAX_BATCH_FRAME_BYTES) : MAX_BATCH_FRAME_BYTES
    this.batches.clear()
    // 90% of the advertised budgets, so a resent outbox is never refused
    this.messageBudget = new TokenBucket((limits?.messagesPerSecond ?? 0) * 0.9, (limits?.messagesPerSecond ?? 0) * 9)
    this.byteBudget = new TokenBucket((limits?.bytesPerSecond ?? 0) * 0.9, (limits?.bytesPerSecond ?? 0) * 9)
    this.queue = []
    for (const out of this.messages.values()) {
      if (out.timer !== null) clearTimeout(out.timer)
      out.timer = null
      this.queue.push(out)
    }
    this.pump()
  }

  disconnected (): void {
    this.send = null
    this.batches.clear()
    if (this.resendTimer !== null) clearTimeout(this.resendTimer)
    this.resendTimer = null
    if (this.timer !== null) clearTimeout(this.timer)
    this.timer = null
    this.queue = []
  }

  /** Whether the ack (a checked `message-ack`) was of a message in the outbox, of its room. */
  acked (frame: { id: string, roomName?: string, messageIndex: number, duplicate: boolean }): boolean {
    const out = this.messages.get(frame.id)
    if (out === undefined || (frame.roomName !== undefined && frame.roomName !== out.frame.roomName)) return false
    this.messages.delete(out.frame.id)
    if (out.timer !== null) clearTimeout(out.timer)
    out.resolve({ id: out.frame.id, messageIndex: frame.messageIndex, duplicate: frame.duplicate })
    return true
  }

  /**
   * Whether the ack (a checked `message-batch-ack`) answers a batch we sent, with its ids in its order; each message
   * is then acked or refused on its own. One that does not is left alone, for the caller to reject.
   */
  batchAcked (frame: { roomName: string, acks: BatchAckEntry[], requestId?: string | number }): boolean {
    const key = frame.requestId === undefined ? undefined : String(frame.requestId)
    const sent = key === undefined ? undefined : this.batches.get(key)
    if (sent === undefined || sent.roomName !== frame.roomName || sent.ids.length !== frame.acks.length) return false
    if (frame.acks.some((ack, i) => ack.id !== sent.ids[i])) return false
    this.batches.delete(key!)
    for (const ack of frame.acks) {
      if ('messageIndex' in ack) this.acked({ ...ack, roomName: frame.roomName })
      else this.refused({ ...ack, roomName: frame.roomName })
    }
    return true
  }

  /** An `error` frame naming one of our messages (or a batch of them: each of them): final, or resent later. */
  refused (frame: { id?: string, roomName?: string, code: string, message: string, retryAfterMs?: number, requestType?: string, requestId?: string | number }): void {
    if (frame.requestType === 'message-batch' && frame.requestId !== undefined) {
      const sent = this.batches.get(String(frame.requestId))
      if (sent === undefined || (frame.roomName !== undefined && frame.roomName !== sent.roomName)) return
      this.batches.delete(String(frame.requestId))
      for (const id of sent.ids) this.refused({ ...frame, id, requestType: 'message' })
      return
    }
    const out = frame.id === undefined ? undefined : this.messages.get(frame.id)
    if (out === undefined || (frame.roomName !== undefined && frame.roomName !== out.frame.roomName)) return
    if (!TRANSIENT.has(frame.code)) {
      this.messages.delete(out.frame.id)
      if (out.timer !== null) clearTimeout(out.timer)
      out.reject(new RootPeerError(frame.code as ErrorCode, frame.message, frame))
      return
    }
    // SHUTTING_DOWN: the reconnect resends it; others after a backoff
    if (frame.code === 'SHUTTING_DOWN' || out.timer !== null) return
    // at least MIN_RESEND: a root peer that refuses with retryAfterMs 0 cannot make the client resend in a loop
    const delay = frame.retryAfterMs !== undefined ? Math.max(frame.retryAfterMs, MIN_RESEND) : RESEND_BACKOFF[Math.min(out.retries++, RESEND_BACKOFF.length - 1)]
    out.timer = setTimeout(() => {
      out.timer = null
      if (this.messages.has(out.frame.id)) this.enqueue(out, true)
    }, delay)
    out.timer.unref()
  }

  close (): void {
    this.disconnected()
    for (const out of this.messages.values()) {
      if (out.timer !== null) clearTimeout(out.timer)
      out.reject(new RootPeerError('DISCONNECTED', 'client closed before the message was acked'))
    }
    this.messages.clear()
  }

  /** `resent`: after a refusal's delay, whose timers (one a message) fire one by one: they go out together next turn. */
  private enqueue (out: Outgoing, resent = false): void {
    this.queue.push(out)
    if (this.maxBatch === 0) {
      this.pump()
      return
    }
    if (resent) {
      if (this.resendTimer === null) {
        this.resendTimer = setTimeout(() => {
          this.resendTimer = null
          this.pump()
        }, 0)
        this.resendTimer.unref()
      }
      return
    }
    // the messages added in this tick go out together
    if (this.pumpQueued) return
    this.pumpQueued = true
    Promise.resolve().then(() => {
      this.pumpQueued = false
      this.pump()
    }, () => {})
  }

  private pump (): void {
    if (this.timer !== null || this.send === null) return
    while (this.queue.length > 0) {
      const out = this.queue[0]
      const wait = Math.max(this.messageBudget.wait(1), this.byteBudget.wait(out.size))
      if (wait > 0) {
        this.timer = setTimeout(() => {
          this.timer = null
          this.pump()
        }, wait)
        this.timer.unref()
        return
      }
      this.queue.shift()
      if (!this.messages.has(out.frame.id)) continue
      this.messageBudget.consume(1)
      this.byteBudget.consume(out.size)
      const batch = this.maxBatch > 1 ? this.gather(out) : [out]
      if (batch.length === 1) {
        this.send(out.frame)
        continue
      }
      const requestId = `batch-${this.nextBatch++}`
      const { roomName } = out.frame
      this.batches.set(requestId, { roomName, ids: batch.map(o => o.frame.id) })
      this.send({ type: 'message-batch', roomName, messages: batch.map(o => batchItem(o.frame)), requestId })
    }
  }

  /** `first` and the queued messages of its room after it, while the budgets, the batch and the frame hold them. */
  private gather (first: Outgoing): Outgoing[] {
    const batch = [first]
    const ids = new Set([first.frame.id])
    let bytes = BATCH_OVERHEAD + Buffer.byteLength(JSON.stringify(batchItem(first.frame)))
    for (let i = 0; i < this.queue.length && batch.length < this.maxBatch; i++) {
      const out = this.queue[i]
      // the same message queued twice (a resend racing a reconnect) goes once
      if (out.frame.roomName !== first.frame.roomName || ids.has(out.frame.id) || !this.messages.has(out.frame.id)) continue
      const size = Buffer.byteLength(JSON.stringify(batchItem(out.frame))) + 1
      if (bytes + size > this.maxFrameBytes) break
      if (this.messageBudget.wait(1) > 0 || this.byteBudget.wait(out.size) > 0) break
      this.messageBudget.consume(1)
      this.byteBudget.consume(out.size)
      bytes += size
      batch.push(out)
      ids.add(out.frame.id)
      this.queue.splice(i--, 1)
    }
    return batch
  }
}

function batchItem (frame: Outgoing['frame']): object {
  const { id, message, signature } = frame
  return signature === undefined ? { id, message } : { id, message, signature }
}
