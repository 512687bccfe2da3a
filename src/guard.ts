import { RootPeerError } from './errors.js'
import type { Frame } from './protocol.js'
import { PeerBudget, type RateLimits } from './rate-limit.js'

/** Bans remembered at most; the oldest is forgotten first. */
const MAX_BANS = 10_000
const REFUSAL_WINDOW = 60_000

export interface GuardOptions extends RateLimits {
  /** refusals within a minute that get a peer banned; 0 = never */
  banThreshold: number
  banDuration: number
  /** called when a ban ends, so the swarm can let the key in again */
  onUnban: (peerId: string) => void
}

/** What the guard keeps per connected peer. */
export interface PeerRecord {
  budget: PeerBudget
  refusals: number
  windowStart: number
}

/**
 * Abuse control: per-peer token buckets for every kind of frame, and bans for peers that keep sending
 * frames that are refused. A ban is by public key; the swarm's firewall asks `isBanned` at the handshake.
 */
export class Guard {
  private readonly opts: GuardOptions
  private readonly bans = new Map<string, NodeJS.Timeout>()

  constructor (opts: GuardOptions) {
    this.opts = opts
  }

  record (): PeerRecord {
    return { budget: new PeerBudget(this.opts), refusals: 0, windowStart: Date.now() }
  }

  /** Charges a decoded frame to the peer's budgets; throws RATE_LIMITED (nothing charged) when one is spent. */
  admit (record: PeerRecord, frame: Frame): void {
    const b = record.budget
    if (frame.type === 'message') {
      const wait = Math.max(b.messages.wait(1), b.bytes.wait(frame.size))
      if (wait > 0) throw RootPeerError.RATE_LIMITED('messages', wait)
      b.messages.consume(1)
      b.bytes.consume(frame.size)
    } else if (frame.type === 'sync-request') {
      const wait = b.syncs.take(1)
      if (wait > 0) throw RootPeerError.RATE_LIMITED('sync-requests', wait)
    } else {
      const wait = b.registers.take(1)
      if (wait > 0) throw RootPeerError.RATE_LIMITED('register-room frames', wait)
    }
  }

  /** Charges the creation of a new room. */
  admitNewRoom (record: PeerRecord): void {
    const wait = record.budget.newRooms.take(1)
    if (wait > 0) throw RootPeerError.RATE_LIMITED('new rooms', wait)
  }

  /** Notes a refused frame; true when the peer has now earned a ban. */
  refused (record: PeerRecord, now = Date.now()): boolean {
    if (this.opts.banThreshold === 0) return false
    if (now - record.windowStart > REFUSAL_WINDOW) {
      record.windowStart = now
      record.refusals = 0
    }
    return ++record.refusals >= this.opts.banThreshold
  }

  ban (peerId: string): void {
    if (this.bans.has(peerId)) return
    if (this.bans.size >= MAX_BANS) this.unban(this.bans.keys().next().value as string)
    const timer = setTimeout(() => this.unban(peerId), this.opts.banDuration)
    timer.unref()
    this.bans.set(peerId, timer)
  }

  isBanned (peerId: string): boolean {
    return this.bans.has(peerId)
  }

  get banned (): number {
    return this.bans.size
  }

  get banDuration (): number {
    return this.opts.banDuration
  }

  close (): void {
    for (const timer of this.bans.values()) clearTimeout(timer)
    this.bans.clear()
  }

  private unban (peerId: string): void {
    const timer = this.bans.get(peerId)
    if (timer === undefined) return
    clearTimeout(timer)
    this.bans.delete(peerId)
    this.opts.onUnban(peerId)
  }
}
