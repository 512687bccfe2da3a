import { EventEmitter } from 'node:events'
import type { NoiseStream } from 'hyperswarm'
import { RootPeerError } from 'root-peer-client/protocol'
import { Guard, type GuardOptions } from './guard.js'
import { Inbound, type DropReason, type InboundOptions } from './inbound.js'
import { CLOSE_GRACE, Peer, endConnection } from './peer.js'
import { contextOf, decodeFrame, encodeAnnouncement, errorFrame, frameContext, type Frame, type Limits } from '../protocol/protocol.js'
import { FrameHandlers, type FrameHandlersOptions } from './frame-handlers.js'
import type { StorageHealth } from '../storage/storage-health.js'
import { bump, type Counters } from '../monitor/stats.js'
import safetyCatch from 'safety-catch'

export interface ConnectionsOptions {
  limits: Readonly<Limits>
  guard: Omit<GuardOptions, keyof Limits>
  inbound: Omit<InboundOptions, 'maxFrameBytes'>
  /** messages a `message-batch` may carry; 0: the frame is not offered */
  maxBatchMessages: number
  maxPeers: number
  maxPeersPerHost: number
  idleEvictAfter: number
  firstFrameTimeout: number
  stallTimeout: number
  counters: Counters
  storage: StorageHealth
  publicKey: () => string
  /** the blind relay's key (hex) for the announcement; null when the relay is off */
  relayPublicKey: () => string | null
  closing: () => boolean
  /** what the handlers need besides what Connections shares with them */
  handlers: FrameHandlersOptions
  track: (promise: Promise<unknown>) => void
}

// refusals that are not the peer's fault do not count towards a ban
const BLAMELESS: ReadonlySet<string> = new Set(['SHUTTING_DOWN', 'STORAGE_ERROR', 'STORAGE_FULL', 'INTERNAL_ERROR', 'TOO_MANY_ROOMS', 'PRIMARY_UNAVAILABLE', 'NOT_REPLICATED'])

/** The client connections: who gets in, and each frame from its bytes to its handler or its refusal. */
export class Connections extends EventEmitter {
  readonly peers = new Map<string, Peer>()
  readonly guard: Guard
  readonly inbound: Inbound
  readonly handlers: FrameHandlers
  /** what a `message-batch` may carry: MAX_BATCH_MESSAGES, at most a burst of RATE_MESSAGES (so each message pays its token) */
  readonly maxBatchMessages: number
  private readonly hosts = new Map<string, number>()
  private readonly ctx: ConnectionsOptions

  constructor (opts: ConnectionsOptions) {
    super()
    this.ctx = opts
    this.guard = new Guard({ ...opts.limits, ...opts.guard })
    this.inbound = new Inbound({ maxFrameBytes: opts.limits.maxFrameBytes, ...opts.inbound })
    const rate = opts.limits.messagesPerSecond
    this.maxBatchMessages = rate > 0 ? Math.min(opts.maxBatchMessages, Math.max(1, Math.floor(rate * 10))) : opts.maxBatchMessages
    const { limits, counters, storage, publicKey, closing, track } = opts
    this.handlers = new FrameHandlers({ ...opts.handlers, limits, counters, storage, publicKey, closing, track, connections: this })
  }

  accept (conn: NoiseStream): void {
    const host = conn.rawStream?.remoteHost ?? null
    const refusal = this.admission(host)
    if (refusal !== null) {
      endConnection(conn, CLOSE_GRACE, JSON.stringify(errorFrame(refusal))).catch(safetyCatch)
      bump(this.ctx.counters.errors, refusal.code)
      this.emit('peer-refused', conn.remotePublicKey.toString('hex'), refusal)
      return
    }
    // before the Peer's own data listener: the inbound budget sees each chunk as secret-stream leaves it
    const inbound = this.inbound.watch(conn, (reason, announced) => this.dropPeer(conn, reason, announced))
    const peerId = conn.remotePublicKey.toString('hex')
    const peer = new Peer(conn, this.guard.record(peerId, host), {
      stallTimeout: this.ctx.stallTimeout,
      inbound,
      handle: (p, data) => this.onFrame(p, data),
      onStall: p => {
        this.ctx.counters.stalledPeers++
        this.emit('peer-stalled', p.id)
      }
    })
    this.peers.set(peer.id, peer)
    if (host !== null) this.hosts.set(host, (this.hosts.get(host) ?? 0) + 1)
    this.ctx.counters.peersConnected++
    const firstFrame = this.ctx.firstFrameTimeout > 0
      ? setTimeout(() => { if (peer.accepted === 0) this.disconnect(peer, RootPeerError.IDLE(this.ctx.firstFrameTimeout)) }, this.ctx.firstFrameTimeout)
      : null
    firstFrame?.unref()
    conn.on('close', () => {
      if (firstFrame !== null) clearTimeout(firstFrame)
      if (this.peers.get(peer.id) === peer) this.peers.delete(peer.id)
      this.handlers.followers.dropPeer(peer)
      if (host !== null) {
        const n = (this.hosts.get(host) ?? 1) - 1
        if (n === 0) this.hosts.delete(host)
        else this.hosts.set(host, n)
      }
      this.ctx.counters.peersDisconnected++
      this.emit('peer-disconnected', peer.id)
    })
    this.emit('peer-connected', peer.id)
    this.send(peer, 'root-peer-announcement', encodeAnnouncement(this.ctx.publicKey(), this.ctx.limits, peer.challenge, this.ctx.relayPublicKey(), this.maxBatchMessages))
  }

  async onFrame (peer: Peer, data: Buffer): Promise<void> {
    let frame: Frame
    try {
      frame = decodeFrame(data, this.ctx.limits, this.maxBatchMessages)
    } catch (err) {
      bump(this.ctx.counters.framesReceived, 'invalid')
      this.refuse(peer, err, frameContext(data, this.ctx.limits))
      return
    }
    bump(this.ctx.counters.framesReceived, frame.type)
    if (this.ctx.closing()) {
      this.refuse(peer, RootPeerError.SHUTTING_DOWN(), contextOf(frame))
      return
    }
    try {
      this.guard.admit(peer.record, frame)
    } catch (err) {
      this.refuse(peer, err, contextOf(frame))
      return
    }
    peer.accepted++
    peer.lastActive = Date.now()
    if (this.ctx.storage.reopening !== null) await this.ctx.storage.reopening.catch(safetyCatch)
    const handled = this.handlers.dispatch(peer, frame)
    this.ctx.track(handled)
    try {
      await handled
    } catch (err) {
      this.refuse(peer, err, contextOf(frame))
    }
  }

  refuse (peer: Peer, err: unknown, context: Record<string, unknown>, send = (frame: object) => this.send(peer, 'error', frame)): void {
    const { coded, ban } = this.tally(peer, err)
    send(errorFrame(coded, context))
    if (ban) this.banPeer(peer)
  }

  /** Counts a refusal as `refuse` does (a batch's message refused in its ack counts as a refused frame); `ban`: earned one. */
  tally (peer: Peer, err: unknown): { coded: RootPeerError, ban: boolean } {
    const coded = err instanceof RootPeerError ? err : RootPeerError.INTERNAL_ERROR(err)
    bump(this.ctx.counters.errors, coded.code)
    this.emit('frame-refused', peer.id, coded)
    return { coded, ban: !BLAMELESS.has(coded.code) && this.guard.noteRefusal(peer.record) }
  }

  /**
   * Sends `frame` once `ready` resolves (or refuses with its error), and holds the answers to the peer's later
   * frames until then: a peer reads its answers in the order of its frames (acks excepted: docs/protocol.md).
   */
  answerOnce (peer: Peer, ready: Promise<unknown>, type: string, frame: object, context: Record<string, unknown>): void {
    peer.answersWaiting++
    const answered = Promise.all([peer.answers, ready]).then(() => {
      peer.answersWaiting--
      this.sendNow(peer, type, frame)
    }, err => {
      peer.answersWaiting--
      this.refuse(peer, err, context, errFrame => this.sendNow(peer, 'error', errFrame))
    })
    peer.answers = answered
    this.ctx.track(answered)
  }

  /** Null when a connection from `host` may be served (an idle peer may give its place up), else why not. */
  private admission (host: string | null): RootPeerError | null {
    if (host !== null && this.ctx.maxPeersPerHost > 0 && (this.hosts.get(host) ?? 0) >= this.ctx.maxPeersPerHost) {
      return RootPeerError.TOO_MANY_PEERS_FROM_HOST(this.ctx.maxPeersPerHost)
    }
    if (this.peers.size < this.ctx.maxPeers) return null
    if (this.ctx.idleEvictAfter === 0) return RootPeerError.TOO_MANY_PEERS(this.ctx.maxPeers)
    let idlest: Peer | null = null
    for (const peer of this.peers.values()) {
      if (!peer.closed && (idlest === null || peer.lastActive < idlest.lastActive)) idlest = peer
    }
    const idle = idlest === null ? 0 : Date.now() - idlest.lastActive
    if (idlest === null || idle < this.ctx.idleEvictAfter) return RootPeerError.TOO_MANY_PEERS(this.ctx.maxPeers)
    this.disconnect(idlest, RootPeerError.IDLE(idle))
    // its place is free now: close() stops counting it before the stream is gone
    this.peers.delete(idlest.id)
    return null
  }

  private disconnect (peer: Peer, err: RootPeerError): void {
    if (peer.closed) return
    bump(this.ctx.counters.errors, err.code)
    this.ctx.counters.idleDisconnects++
    this.emit('peer-idle', peer.id, err)
    peer.send(errorFrame(err))
    peer.close()
  }

  private dropPeer (conn: NoiseStream, reason: DropReason, announced: number): void {
    const err = reason === 'frame-too-large'
      ? RootPeerError.FRAME_TOO_LARGE(announced, this.ctx.limits.maxFrameBytes)
      : reason === 'frame-timeout' ? RootPeerError.FRAME_INCOMPLETE(this.inbound.frameTimeout) : RootPeerError.OVERLOADED(this.inbound.maxBufferedBytes)
    bump(this.ctx.counters.errors, err.code)
    bump(this.ctx.counters.droppedPeers, reason)
    const peerId = conn.remotePublicKey.toString('hex')
    this.emit('peer-dropped', peerId, err)
    // destroyed at once: the transport keeps taking in what a peer sends while it is open, read or not
    const peer = this.peers.get(peerId)
    if (peer !== undefined && peer.conn === conn) this.send(peer, 'error', errorFrame(err))
    peer?.close()
    setImmediate(() => conn.destroy())
  }

  banPeer (peer: Peer): void {
    if (peer.closed) return
    this.guard.ban(peer.id)
    this.ctx.counters.bans++
    const err = RootPeerError.BANNED(this.guard.banDuration)
    bump(this.ctx.counters.errors, err.code)
    this.emit('peer-banned', peer.id)
    peer.send(errorFrame(err))
    peer.close()
  }

  send (peer: Peer, type: string, frame: object | string | Buffer): void {
    if (peer.answersWaiting === 0) {
      this.sendNow(peer, type, frame)
      return
    }
    peer.answersWaiting++
    peer.answers = peer.answers.then(() => {
      peer.answersWaiting--
      this.sendNow(peer, type, frame)
    })
  }

  private sendNow (peer: Peer, type: string, frame: object | string | Buffer): void {
    if (peer.closed) return
    peer.send(frame)
    bump(this.ctx.counters.framesSent, type)
  }

  close (): void {
    this.guard.close()
    this.handlers.followers.close()
  }
}
