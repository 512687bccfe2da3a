import type HyperDHT from 'hyperdht'
import type { NoiseStream } from 'hyperswarm'

const DIAL_TICK = 1000
const RETRY_AFTER = 2000
/** a dial to a stale DHT record of a member that restarted can hang */
const DIAL_TIMEOUT = 10_000
/** the member with the smaller key waits this long without a link before it dials too */
const FALLBACK_AFTER = 3000

/** Dials the other members directly on the DHT, outside Hyperswarm's peer handling (docs/cluster.md). */
export class MemberDialer {
  private readonly self: string
  private readonly dht: HyperDHT
  private readonly keyPair: { publicKey: Buffer, secretKey: Buffer }
  private readonly members: readonly string[]
  private readonly linked: (member: string) => boolean
  private readonly onConnection: (conn: NoiseStream) => void
  private readonly dialing = new Map<string, NoiseStream>()
  private readonly notBefore = new Map<string, number>()
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
    // at its start this member dials every member at once: their dials to it may hang on its DHT record of before a restart
    const started = Date.now() - FALLBACK_AFTER
    for (const member of this.members) this.unlinkedSince.set(member, started)
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
    conn.on('error', noop) // a failed dial is retried on its close event
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

function noop (): void {}
