import { RootPeerError, type ErrorCode } from './protocol/errors.js'
import type { Limits } from './protocol/frame-types.js'
import { TokenBucket } from './protocol/token-bucket.js'

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

/** Each message until its ack: paced to the root peer's budgets, resent on reconnect or a passing refusal. */
export class Outbox {
  private readonly messages = new Map<string, Outgoing>()
  private queue: Outgoing[] = []
  private timer: ReturnType<typeof setTimeout> | null = null
  private send: ((frame: object) => void) | null = null
  private messageBudget = new TokenBucket(0, 1)
  private byteBudget = new TokenBucket(0, 1)

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

  /** On each connection: everything unacked goes out again, within the new root peer's budgets. */
  connected (send: (frame: object) => void, limits: Partial<Limits> | undefined): void {
    this.send = send
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

  /** An `error` frame naming one of our messages: final, or resent later. */
  refused (frame: { id?: string, roomName?: string, code: string, message: string, retryAfterMs?: number }): void {
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
      if (this.messages.has(out.frame.id)) this.enqueue(out)
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

  private enqueue (out: Outgoing): void {
    this.queue.push(out)
    this.pump()
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
      this.messageBudget.consume(1)
      this.byteBudget.consume(out.size)
      this.queue.shift()
      if (this.messages.has(out.frame.id)) this.send(out.frame)
    }
  }
}
