import type HyperDHT from 'hyperdht'
import type { NoiseStream } from 'hyperswarm'

/** How often members that are not connected are looked at, and how long a failed dial waits before the next. */
const DIAL_TICK = 1000
const RETRY_AFTER = 2000
/** A dial that has not opened by then is dropped (one to a stale DHT record of a member that restarted can hang). */
const DIAL_TIMEOUT = 10_000
/**
 * Of two members, the one with the greater key dials; the other dials too only after being without a link for this
 * long (the greater one's dial may hang on a stale DHT record of it), so that two dials rarely cross.
 */
const FALLBACK_AFTER = 3000

/**
 * Dials the other members of a cluster directly on the DHT (`dht.connect`), outside Hyperswarm's peer
 * handling: Hyperswarm refuses an incoming connection from a peer while its own dial to that peer is
 * pending and it is the expected initiator, so a member that restarted could be shut out until a dial to
 * its stale DHT record timed out. With these dials each side's swarm takes the other's connection at once;
 * the receiver of two connections to one member keeps one (see Cluster.attach).
 */
export class MemberDialer {
  private readonly self: string
  private readonly dht: HyperDHT
  private readonly keyPair: { publicKey: Buffer, secretKey: Buffer }
  private readonly members: readonly string[]
  private readonly linked: (member: string) => boolean
  private readonly onConnection: (conn: NoiseStream) => void
  private readonly dialing = new Map<string, NoiseStream>()
  private readonly notBefore = new Map<string, number>()
  /** when each member that does not lead was last seen linked, or first seen unlinked */
  private readonly unlinkedSince = new Map<string, number>()
  private timer: NodeJS.Timeout | null = null
  private closed = false

  constructor (opts: { self: string, dht: HyperDHT, keyPair: { publicKey: Buffer, secretKey: Buffer }, members: readonly string[], linked: (member: string) => boolean, onConnection: (conn: NoiseStream) => void }) {
    this.self = opts.self
    this.dht = opts.dht
    this.keyPair = opts.keyPair
    this.members = opts.members
    this.linked = opts.linked
    this.onConnection = opts.onConnection
  }

  start (): void {
    this.timer = setInterval(() => this.tick(), DIAL_TICK)
    this.timer.unref()
    this.tick()
  }

  close (): void {
    this.closed = true
    if (this.timer !== null) clearInterval(this.timer)
    for (const conn of this.dialing.values()) conn.destroy()
    this.dialing.clear()
  }

  private tick (): void {
    const now = Date.now()
    for (const member of this.members) {
      if (this.closed || this.dht.destroyed) return
      if (this.linked(member)) {
        this.unlinkedSince.delete(member)
        continue
      }
      if (!this.unlinkedSince.has(member)) this.unlinkedSince.set(member, now)
      const leads = this.self > member
      if (!leads && now - this.unlinkedSince.get(member)! < FALLBACK_AFTER) continue
      if (this.dialing.has(member) || now < (this.notBefore.get(member) ?? 0)) continue
      this.dial(member)
    }
  }

  private dial (member: string): void {
    const conn = this.dht.connect(Buffer.from(member, 'hex'), { keyPair: this.keyPair }) as unknown as NoiseStream
    this.dialing.set(member, conn)
    const timer = setTimeout(() => conn.destroy(), DIAL_TIMEOUT)
    const done = (): void => {
      clearTimeout(timer)
      if (this.dialing.get(member) === conn) this.dialing.delete(member)
    }
    conn.on('error', () => {})
    conn.once('open', () => {
      done()
      if (this.closed) conn.destroy()
      else this.onConnection(conn)
    })
    conn.once('close', () => {
      if (this.dialing.get(member) === conn) this.notBefore.set(member, Date.now() + RETRY_AFTER)
      done()
    })
  }
}
