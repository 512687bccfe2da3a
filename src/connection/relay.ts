import BlindRelay, { type BlindRelaySession, type Server as BlindRelayServer } from 'blind-relay'
import type HyperDHT from 'hyperdht'
import type { DHTServer, RawStream } from 'hyperdht'
import type { NoiseStream } from 'hyperswarm'
import ReadyResource from 'ready-resource'
import safetyCatch from 'safety-catch'
import { bump } from '../monitor/stats.js'
import { CLOSE_GRACE, endConnection } from './peer.js'
import { BudgetTable, ByteBudget } from './relay-budgets.js'

/** The name of the relay's key pair in the root peer's Corestore: a key of its own, beside the swarm's. */
export const RELAY_KEY_PAIR = 'root-peer-relay'

/** What strangers can make the relay hold and carry (the RELAY_* settings); a rate or timeout of 0 is unlimited. */
export interface RelayLimits {
  maxPairs: number
  maxPairsPerPeer: number
  maxPairsPerHost: number
  pairBytesPerSecond: number
  peerBytesPerSecond: number
  hostBytesPerSecond: number
  bytesPerSecond: number
  emptyPairTimeout: number
}

export interface RelayOptions extends RelayLimits {
  dht: HyperDHT
  keyPair: { publicKey: Buffer, secretKey: Buffer }
  pairingTimeout?: number
  /** the address a relay connection is counted under (default: its remote host) */
  hostOf?: (socket: NoiseStream) => string | null
  /** a key the root peer banned (hex): refused at the handshake, as by the root peer's own key */
  isBanned?: (publicKey: string) => boolean
}

/** The reasons of root_peer_relay_refusals_total. */
export type RelayRefusal = 'connections' | 'host-connections' | 'pairs' | 'peer-pairs' | 'host-pairs' |
'pair-bytes' | 'peer-bytes' | 'host-bytes' | 'bytes' | 'empty' | 'idle' | 'banned'

export interface RelayCounters {
  pairsOpened: number
  bytes: number
  refusals: Record<string, number>
}

// hyperdht gives a pairing up after 15 s, and drops its relay connection when its pair closes
const PAIRING_TIMEOUT = 20_000
// bytes are forwarded natively before they are seen: what a pair moves between two readings is the overshoot
const METER_INTERVAL = 50

interface Member {
  key: string
  host: string | null
  socket: NoiseStream
  session: BlindRelaySession
  sides: Set<string>
  streams: number
  idleSince: number
}

/** One end of a pair: the bytes its member sent, charged to that member's key and address. */
interface Side {
  member: Member
  stream: RawStream
  peer: ByteBudget
  host: ByteBudget
  counted: number
  fresh: number
}

interface Pair {
  sides: Side[]
  open: number
  opened: number
  budget: ByteBudget
  closing: boolean
}

/**
 * Holepunch's blind-relay on a DHT server and key of its own: it joins the UDX streams of two members who
 * share a token, and forwards their encrypted packets unread. Caps are checked before blind-relay sees a
 * request; relayed bytes are read every 50 ms and when a stream closes, charged to the sender's key and
 * address, which carry their debt to their next pairs, and an over-budget pair is closed (docs/relay.md).
 */
export class Relay extends ReadyResource {
  readonly publicKey: Buffer
  readonly counters: RelayCounters = { pairsOpened: 0, bytes: 0, refusals: Object.create(null) }
  private readonly opts: RelayOptions
  private readonly blind: BlindRelayServer
  private readonly members = new Set<Member>()
  private readonly keys = new Map<string, number>()
  private readonly hosts = new Map<string, number>()
  private readonly hostConnections = new Map<string, number>()
  private readonly pairs = new Map<string, Pair>()
  private readonly total: ByteBudget
  private readonly peerBudgets: BudgetTable
  private readonly hostBudgets: BudgetTable
  private held = 0
  private server: DHTServer | null = null
  private listening: Promise<unknown> | null = null
  private meter: NodeJS.Timeout | null = null

  constructor (opts: RelayOptions) {
    super()
    this.opts = opts
    this.publicKey = opts.keyPair.publicKey
    this.total = new ByteBudget(opts.bytesPerSecond)
    this.peerBudgets = new BudgetTable(opts.peerBytesPerSecond)
    this.hostBudgets = new BudgetTable(opts.hostBytesPerSecond)
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

  /** The relay connections and pair requests one address holds (2 x RELAY_MAX_PAIRS_PER_HOST each at most). */
  hostLoad (host: string): { connections: number, requests: number } {
    return { connections: this.hostConnections.get(host) ?? 0, requests: this.hosts.get(host) ?? 0 }
  }

  /** Keys and addresses whose byte budgets are remembered (each at most MAX_BUDGETS). */
  get remembered (): { keys: number, hosts: number } {
    return { keys: this.peerBudgets.size, hosts: this.hostBudgets.size }
  }

  /** Resolves once the relay's key is announced on the DHT (ready does not wait for it). */
  async flushed (): Promise<void> {
    await this.listening
  }

  protected override async _open (): Promise<void> {
    // each end of a relayed connection has a relay connection of its own
    const maxConnections = 2 * this.opts.maxPairs
    this.server = this.opts.dht.createServer({
      firewall: (remotePublicKey: Buffer) => {
        if (this.closing !== null) return true
        if (this.opts.isBanned?.(remotePublicKey.toString('hex')) === true) {
          this.note('banned')
          return true
        }
        if (this.members.size < maxConnections) return false
        this.note('connections')
        return true
      }
    }, socket => this.onConnection(socket))
    // an unreachable DHT does not hold back ready; the DHT closes the servers it made
    this.listening = this.server.listen(this.opts.keyPair).catch(safetyCatch)
  }

  protected override async _close (): Promise<void> {
    this.stopMeter()
    for (const member of this.members) {
      member.session.destroy()
      member.socket.destroy()
    }
    await this.blind.close()
    this.peerBudgets.clear()
    this.hostBudgets.clear()
  }

  private onConnection (socket: NoiseStream): void {
    socket.on('error', safetyCatch)
    if (this.closing !== null) {
      socket.destroy()
      return
    }
    const host = this.opts.hostOf !== undefined ? this.opts.hostOf(socket) : (socket.rawStream?.remoteHost ?? null)
    if (host !== null) {
      // the firewall sees a handshake, not an address: one address's share is checked once the connection is up
      const held = this.hostConnections.get(host) ?? 0
      if (held >= 2 * this.opts.maxPairsPerHost) {
        this.note('host-connections')
        socket.destroy()
        return
      }
      this.hostConnections.set(host, held + 1)
    }
    const session = this.blind.accept(socket, { id: socket.remotePublicKey })
    const member: Member = { key: socket.remotePublicKey.toString('hex'), host, socket, session, sides: new Set(), streams: 0, idleSince: Date.now() }
    this.members.add(member)
    this.startMeter()
    this.emit('member-connected', member.key)
    session.on('error', safetyCatch)
    session.on('pair', (isInitiator, token, stream) => this.onPaired(member, token.toString('hex'), stream, sideOf(token, isInitiator)))
    // blind-relay lets a closed channel's requests go: so do the caps, and the connection serves nothing more
    session.on('close', () => {
      for (const side of member.sides) this.release(member, side)
      endConnection(socket, CLOSE_GRACE).catch(safetyCatch)
    })
    socket.on('close', () => {
      this.members.delete(member)
      if (host !== null) decrement(this.hostConnections, host)
    })
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
    const refusal = this.refusal(member)
    if (refusal !== null) {
      // blind-relay has no refusal message: the closed channel tells the member's hyperdht at once
      this.emit('pair-refused', refusal)
      this.refuse(member, refusal)
      return false
    }
    member.sides.add(side)
    this.keys.set(member.key, (this.keys.get(member.key) ?? 0) + 1)
    if (member.host !== null) this.hosts.set(member.host, (this.hosts.get(member.host) ?? 0) + 1)
    this.held++
    return true
  }

  private refusal (member: Member): RelayRefusal | null {
    if (this.held >= 2 * this.opts.maxPairs) return 'pairs'
    if ((this.keys.get(member.key) ?? 0) >= this.opts.maxPairsPerPeer) return 'peer-pairs'
    if (member.host !== null && (this.hosts.get(member.host) ?? 0) >= 2 * this.opts.maxPairsPerHost) return 'host-pairs'
    // a debt is waited out before a new pair: a fresh token does not refill a budget
    const now = Date.now()
    if (this.total.inDebt(now)) return 'bytes'
    if (member.host !== null && this.hostBudgets.get(member.host).inDebt(now)) return 'host-bytes'
    if (this.peerBudgets.get(member.key).inDebt(now)) return 'peer-bytes'
    return null
  }

  private onPaired (member: Member, token: string, stream: RawStream, sideId: string): void {
    let pair = this.pairs.get(token)
    if (pair === undefined) {
      pair = { sides: [], open: 0, opened: Date.now(), budget: new ByteBudget(this.opts.pairBytesPerSecond), closing: false }
      this.pairs.set(token, pair)
      this.counters.pairsOpened++
      this.emit('pair-opened', token)
    }
    const joined = pair
    const side: Side = {
      member,
      stream,
      peer: this.peerBudgets.get(member.key),
      host: member.host !== null ? this.hostBudgets.get(member.host) : new ByteBudget(0),
      counted: 0,
      fresh: 0
    }
    joined.sides.push(side)
    joined.open++
    member.streams++
    stream.once('close', () => {
      // a pair that closes between two readings is charged all the same
      this.read(joined, side, Date.now())
      if (--joined.open === 0 && this.pairs.delete(token)) this.emit('pair-closed', token)
      if (--member.streams === 0) member.idleSince = Date.now()
      this.release(member, sideId)
    })
  }

  private release (member: Member, side: string): void {
    if (!member.sides.delete(side)) return
    this.held--
    decrement(this.keys, member.key)
    if (member.host !== null) decrement(this.hosts, member.host)
  }

  private startMeter (): void {
    if (this.meter !== null) return
    this.meter = setInterval(() => this.measure(), METER_INTERVAL)
    this.meter.unref()
  }

  private stopMeter (): void {
    if (this.meter !== null) clearInterval(this.meter)
    this.meter = null
  }

  private measure (): void {
    if (this.members.size === 0 && this.pairs.size === 0) {
      this.stopMeter()
      return
    }
    const now = Date.now()
    const moving: Array<{ pair: Pair, bytes: number }> = []
    for (const pair of this.pairs.values()) {
      if (pair.closing) continue
      let bytes = 0
      for (const side of pair.sides) bytes += this.read(pair, side, now)
      const over = this.overBudget(pair, now)
      if (over !== null) this.closePair(pair, over)
      else if (bytes > 0) moving.push({ pair, bytes })
    }
    let rest = moving.reduce((sum, m) => sum + m.bytes, 0)
    if (this.total.short(rest, now)) {
      // the busiest pairs are closed until what the rest moved in the last reading fits in what is left
      moving.sort((a, b) => b.bytes - a.bytes)
      const left = Math.max(0, this.total.allowance)
      for (const { pair, bytes } of moving) {
        if (rest <= left) break
        this.closePair(pair, 'bytes')
        rest -= bytes
      }
    }
    const timeout = this.opts.pairingTimeout ?? PAIRING_TIMEOUT
    for (const member of this.members) {
      if (member.streams === 0 && !member.session.closed && now - member.idleSince > timeout) this.refuse(member, 'idle')
    }
  }

  private overBudget (pair: Pair, now: number): RelayRefusal | null {
    // closed before the reading that would overdraw a budget, not after: the bytes cannot be taken back
    if (pair.budget.short(pair.sides.reduce((sum, s) => sum + s.fresh, 0), now)) return 'pair-bytes'
    // the sender pays: a key or address short of budget loses the pairs it is sending on
    for (const side of pair.sides) {
      if (side.fresh > 0 && side.host.short(side.fresh, now)) return 'host-bytes'
      if (side.fresh > 0 && side.peer.short(side.fresh, now)) return 'peer-bytes'
    }
    const timeout = this.opts.emptyPairTimeout
    if (timeout > 0 && now - pair.opened > timeout && pair.sides.some(s => s.counted === 0)) return 'empty'
    return null
  }

  private read (pair: Pair, side: Side, now: number): number {
    const fresh = side.stream.bytesReceived - side.counted
    side.fresh = fresh
    if (fresh <= 0) return 0
    side.counted += fresh
    pair.budget.charge(fresh, now)
    side.peer.charge(fresh, now)
    side.host.charge(fresh, now)
    this.total.charge(fresh, now)
    this.counters.bytes += fresh
    return fresh
  }

  /** A key the root peer banned: its relay connections (and so its pairs) are closed. */
  ban (key: string): void {
    for (const member of this.members) {
      if (member.key !== key) continue
      this.note('banned')
      member.socket.destroy()
    }
  }

  private note (refusal: RelayRefusal): void {
    bump(this.counters.refusals, refusal)
    this.emit('refused', refusal)
  }

  private closePair (pair: Pair, reason: RelayRefusal): void {
    if (pair.closing) return
    pair.closing = true
    this.note(reason)
    for (const side of pair.sides) side.stream.destroy()
  }

  private refuse (member: Member, reason: RelayRefusal): void {
    this.note(reason)
    member.session.destroy()
  }
}

function sideOf (token: Buffer, isInitiator: boolean): string {
  return token.toString('hex') + (isInitiator ? ':i' : ':r')
}

function decrement (map: Map<string, number>, id: string): void {
  const n = (map.get(id) ?? 1) - 1
  if (n <= 0) map.delete(id)
  else map.set(id, n)
}
