import BlindRelay, { type BlindRelaySession, type Server as BlindRelayServer } from 'blind-relay'
import type HyperDHT from 'hyperdht'
import type { DHTServer, RawStream } from 'hyperdht'
import type { NoiseStream } from 'hyperswarm'
import ReadyResource from 'ready-resource'
import safetyCatch from 'safety-catch'
import { bump } from '../monitor/stats.js'
import { CLOSE_GRACE, endConnection } from './peer.js'

/** The name of the relay's key pair in the root peer's Corestore: a key of its own, beside the swarm's. */
export const RELAY_KEY_PAIR = 'root-peer-relay'

/** What strangers can make the relay hold and carry (the RELAY_* settings); a rate of 0 is unlimited. */
export interface RelayLimits {
  maxPairs: number
  maxPairsPerPeer: number
  pairBytesPerSecond: number
  bytesPerSecond: number
}

export interface RelayOptions extends RelayLimits {
  dht: HyperDHT
  keyPair: { publicKey: Buffer, secretKey: Buffer }
  pairingTimeout?: number
}

/** The reasons of root_peer_relay_refusals_total. */
export type RelayRefusal = 'connections' | 'pairs' | 'peer-pairs' | 'pair-bytes' | 'bytes' | 'idle'

export interface RelayCounters {
  pairsOpened: number
  bytes: number
  refusals: Record<string, number>
}

// hyperdht gives a pairing up after 15 s, and drops its relay connection when its pair closes
const PAIRING_TIMEOUT = 20_000
const METER_INTERVAL = 1000
const BURST_SECONDS = 10

interface Member {
  key: string
  socket: NoiseStream
  session: BlindRelaySession
  sides: Set<string>
  streams: number
  idleSince: number
}

interface Pair {
  streams: Set<RawStream>
  closedBytes: number
  counted: number
  budget: ByteBudget
}

// unlike a TokenBucket it is charged after the bytes went through, so it can go below 0
class ByteBudget {
  allowance: number
  private readonly rate: number
  private last = Date.now()

  constructor (rate: number) {
    this.rate = rate
    this.allowance = rate * BURST_SECONDS
  }

  spend (bytes: number, now = Date.now()): boolean {
    if (this.rate === 0) return true
    this.allowance = Math.min(this.rate * BURST_SECONDS, this.allowance + (now - this.last) * this.rate / 1000) - bytes
    this.last = now
    return this.allowance >= 0
  }
}

/**
 * Holepunch's blind-relay on a DHT server and key of its own: it joins the UDX streams of two members who
 * share a token, and forwards their encrypted packets unread. Caps are checked before blind-relay sees a
 * request; relayed bytes are read every second, and a pair over its budget is closed (docs/relay.md).
 */
export class Relay extends ReadyResource {
  readonly publicKey: Buffer
  readonly counters: RelayCounters = { pairsOpened: 0, bytes: 0, refusals: Object.create(null) }
  private readonly opts: RelayOptions
  private readonly blind: BlindRelayServer
  private readonly members = new Set<Member>()
  private readonly keys = new Map<string, number>()
  private readonly pairs = new Map<string, Pair>()
  private readonly budget: ByteBudget
  private held = 0
  private server: DHTServer | null = null
  private listening: Promise<unknown> | null = null
  private meter: NodeJS.Timeout | null = null

  constructor (opts: RelayOptions) {
    super()
    this.opts = opts
    this.publicKey = opts.keyPair.publicKey
    this.budget = new ByteBudget(opts.bytesPerSecond)
    this.blind = new BlindRelay.Server({ createStream: o => opts.dht.createRawStream({ ...o, framed: true }) })
  }

  get pairsOpen (): number {
    return this.pairs.size
  }

  get connections (): number {
    return this.members.size
  }

  get requests (): number {
    return this.held
  }

  /** Resolves once the relay's key is announced on the DHT (ready does not wait for it). */
  async flushed (): Promise<void> {
    await this.listening
  }

  protected override async _open (): Promise<void> {
    // each end of a relayed connection has a relay connection of its own
    const maxConnections = 2 * this.opts.maxPairs
    this.server = this.opts.dht.createServer({
      firewall: () => {
        if (this.closing !== null) return true
        if (this.members.size < maxConnections) return false
        this.note('connections')
        return true
      }
    }, socket => this.onConnection(socket))
    // an unreachable DHT does not hold back ready; the DHT closes the servers it made
    this.listening = this.server.listen(this.opts.keyPair).catch(safetyCatch)
    this.meter = setInterval(() => this.measure(), METER_INTERVAL)
    this.meter.unref()
  }

  protected override async _close (): Promise<void> {
    if (this.meter !== null) clearInterval(this.meter)
    for (const member of this.members) {
      member.session.destroy()
      member.socket.destroy()
    }
    await this.blind.close()
  }

  private onConnection (socket: NoiseStream): void {
    socket.on('error', safetyCatch)
    if (this.closing !== null) {
      socket.destroy()
      return
    }
    const session = this.blind.accept(socket, { id: socket.remotePublicKey })
    const member: Member = { key: socket.remotePublicKey.toString('hex'), socket, session, sides: new Set(), streams: 0, idleSince: Date.now() }
    this.members.add(member)
    session.on('error', safetyCatch)
    session.on('pair', (isInitiator, token, stream) => this.onPaired(member, sideOf(token, isInitiator), token.toString('hex'), stream))
    // blind-relay lets a closed channel's requests go: so do the caps, and the connection serves nothing more
    session.on('close', () => {
      for (const side of member.sides) this.release(member, side)
      endConnection(socket, CLOSE_GRACE).catch(safetyCatch)
    })
    socket.on('close', () => this.members.delete(member))
    for (const channel of session.mux) {
      if (channel.protocol !== 'blind-relay') continue
      // message 0 of blind-relay is `pair`: a request over a cap never reaches it
      const pair = channel.messages[0]
      const onpair = pair.onmessage
      pair.onmessage = m => this.admit(member, m) ? onpair(m) : undefined
    }
  }

  private admit (member: Member, m: { isInitiator: boolean, token: Buffer }): boolean {
    const side = sideOf(m.token, m.isInitiator)
    if (member.sides.has(side)) return true
    const byKey = this.keys.get(member.key) ?? 0
    const refusal = this.held >= 2 * this.opts.maxPairs ? 'pairs' : byKey >= this.opts.maxPairsPerPeer ? 'peer-pairs' : null
    if (refusal !== null) {
      // blind-relay has no refusal message: the closed channel tells the member's hyperdht at once
      this.refuse(member, refusal)
      return false
    }
    member.sides.add(side)
    this.keys.set(member.key, byKey + 1)
    this.held++
    return true
  }

  private onPaired (member: Member, side: string, token: string, stream: RawStream): void {
    let pair = this.pairs.get(token)
    if (pair === undefined) {
      pair = { streams: new Set(), closedBytes: 0, counted: 0, budget: new ByteBudget(this.opts.pairBytesPerSecond) }
      this.pairs.set(token, pair)
      this.counters.pairsOpened++
      this.emit('pair-opened', token)
    }
    const joined = pair
    joined.streams.add(stream)
    member.streams++
    stream.once('close', () => {
      joined.streams.delete(stream)
      joined.closedBytes += stream.bytesReceived
      this.read(joined)
      if (joined.streams.size === 0 && this.pairs.delete(token)) this.emit('pair-closed', token)
      if (--member.streams === 0) member.idleSince = Date.now()
      this.release(member, side)
    })
  }

  private release (member: Member, side: string): void {
    if (!member.sides.delete(side)) return
    this.held--
    const byKey = (this.keys.get(member.key) ?? 1) - 1
    if (byKey === 0) this.keys.delete(member.key)
    else this.keys.set(member.key, byKey)
  }

  private measure (): void {
    let total = 0
    const within: Array<{ pair: Pair, bytes: number }> = []
    for (const pair of this.pairs.values()) {
      const bytes = this.read(pair)
      if (!pair.budget.spend(bytes)) {
        this.closePair(pair, 'pair-bytes')
        continue
      }
      total += bytes
      within.push({ pair, bytes })
    }
    if (!this.budget.spend(total)) {
      // the pairs that relayed the most this second are closed, their bytes given back, until the rest fit
      within.sort((a, b) => b.bytes - a.bytes)
      for (const { pair, bytes } of within) {
        if (this.budget.allowance >= 0) break
        this.closePair(pair, 'bytes')
        this.budget.allowance += bytes
      }
    }
    const now = Date.now()
    const timeout = this.opts.pairingTimeout ?? PAIRING_TIMEOUT
    for (const member of this.members) {
      if (member.streams === 0 && !member.session.closed && now - member.idleSince > timeout) this.refuse(member, 'idle')
    }
  }

  private read (pair: Pair): number {
    let bytes = pair.closedBytes
    for (const stream of pair.streams) bytes += stream.bytesReceived
    const fresh = bytes - pair.counted
    pair.counted = bytes
    this.counters.bytes += fresh
    return fresh
  }

  private note (refusal: RelayRefusal): void {
    bump(this.counters.refusals, refusal)
    this.emit('refused', refusal)
  }

  private closePair (pair: Pair, reason: RelayRefusal): void {
    this.note(reason)
    for (const stream of pair.streams) stream.destroy()
  }

  private refuse (member: Member, reason: RelayRefusal): void {
    this.note(reason)
    member.session.destroy()
  }
}

function sideOf (token: Buffer, isInitiator: boolean): string {
  return token.toString('hex') + (isInitiator ? ':i' : ':r')
}
