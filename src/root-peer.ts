import { EventEmitter } from 'node:events'
import type Corestore from 'corestore'
import HyperDHT from 'hyperdht'
import Hyperswarm, { type NoiseStream, type PeerDiscovery } from 'hyperswarm'
import crypto from 'hypercore-crypto'
import type { BootstrapNode } from './config.js'
import { DEFAULT_DISCOVERY_TOPIC } from './config.js'
import { openStore } from './data-dir-lock.js'
import { StorageHealth } from './storage-health.js'
import { RootPeerError } from './errors.js'
import { Guard } from './guard.js'
import { CLOSE_GRACE, Peer, endConnection } from './peer.js'
import { Inbound, type DropReason } from './inbound.js'
import {
  DEFAULT_LIMITS, PROTOCOL_VERSION, decodeFrame, encodeAck, frameContext, isHexTopic,
  type Frame, type Limits, type MessageFrame, type RegisterRoomFrame, type SyncRequestFrame
} from './protocol.js'
import type { Room } from './room.js'
import { RoomTopics, type TopicSwarm } from './room-topics.js'
import { Rooms } from './rooms.js'
import { ACCESS_VERSION, keyMatchesName, verifyAccess } from './room-auth.js'
import { retentionOn, type RetentionPolicy } from './retention.js'
import { Pruner } from './pruner.js'
import { StateFile, type PersistentState, type RoomState } from './state-file.js'
import { WalSync } from './wal-sync.js'
import { SWARM_KEY_PAIR, type ForwardedWrite } from './cluster.js'
import { ClusterRooms } from './cluster-rooms.js'
import { RoomWriter, checkSigned } from './room-writer.js'
import { newChallenge } from './room-auth.js'
import { busiest, bump, createCounters, largest, type Counters, type StatsSnapshot } from './stats.js'

export interface RootPeerOptions {
  storageDir: string
  /** refuse rooms that are not signed rooms */
  requireSignedRooms?: boolean
  /** per-room retention (0 = off): most messages, most bytes, oldest age in ms */
  retentionMessages?: number
  retentionBytes?: number
  retentionAge?: number
  /** message bytes held in all rooms; 0 = no cap */
  maxStorageBytes?: number
  /** fsync the storage's write-ahead log before each ack (survives power loss, costs an fsync per batch) */
  syncWrites?: boolean
  /** DHT bootstrap nodes; null or omitted: the public DHT */
  bootstrap?: BootstrapNode[] | null
  dhtHost?: string
  dhtPort?: number | null
  discoveryTopic?: string
  /** ms between `stats` events; 0 = none */
  statsInterval?: number
  maxPeers?: number
  /** rooms in all; a new room over it is refused with TOO_MANY_ROOMS */
  maxRooms?: number
  /** room cores open at once (least recently used idle room closed first) */
  maxOpenRooms?: number
  /** room topics announced on the DHT at once (least recently active left first); 0 = none */
  maxAnnouncedRooms?: number
  /** ms without activity after which a room's core is closed and its topic left */
  roomIdleTimeout?: number
  /** bytes of RocksDB memtable the store fills before flushing it to disk (held in memory, twice while flushing) */
  storageWriteBuffer?: number
  maxFrameBytes?: number
  maxMessageBytes?: number
  /** per-peer rates, 0 = unlimited (see Limits) */
  messagesPerSecond?: number
  bytesPerSecond?: number
  syncsPerSecond?: number
  registersPerMinute?: number
  newRoomsPerMinute?: number
  /** refusals within a minute that get a peer disconnected and banned; 0 = never */
  banThreshold?: number
  /** ms a ban lasts */
  banDuration?: number
  /** ms a peer may leave our writes unread before it is disconnected; 0 = never */
  stallTimeout?: number
  /** incoming frame bytes held for all connections together; past it the connection holding the most is dropped */
  maxBufferedBytes?: number
  /** ms a peer may take to finish a frame it has started */
  frameTimeout?: number
  /** ms a new connection may take to send its first valid frame; 0 = forever */
  firstFrameTimeout?: number
  /** connections at once from one remote address; 0 = no cap */
  maxPeersPerHost?: number
  /** at MAX_PEERS, ms a peer must have gone without a valid frame to give its place to a newcomer; 0 = never */
  idleEvictAfter?: number
  /** ms an empty room (no message ever stored) is kept after its last use; 0 = until MAX_ROOMS needs its place */
  emptyRoomTtl?: number
  /** page sizes and other limits (the settings above win) */
  limits?: Partial<Limits>
  /** public keys (hex) of the other root peers of this cluster; empty: a single root peer */
  clusterPeers?: string[]
  /** mirrors that must have stored a message before the primary acks it (at most the other members) */
  minMirrors?: number
  /** ms a write waits for its mirrors, or a forwarded write for its primary, before NOT_REPLICATED */
  replicationTimeout?: number
  /** called with the seconds each append (frame to ack) and each sync page (request to answer) took */
  onLatency?: (kind: 'append' | 'sync', seconds: number) => void
}

export interface Health {
  ok: boolean
  /** why the root peer is not ready; empty when ok */
  reasons: string[]
  storage: boolean
  discovery: boolean
  dht: boolean
  /** with CLUSTER_PEERS: every other member and whether it is connected (a member down does not make the root peer unhealthy) */
  cluster?: Array<{ publicKey: string, connected: boolean }>
}

/** State is saved after this many stored messages (and on every stats tick and on shutdown)... */
const SAVE_EVERY_MESSAGES = 10
/** ...but not more often than this, so a busy root peer does not spend its time rewriting the file. */
const MIN_SAVE_INTERVAL = 1000
/** How much longer than REPLICATION_TIMEOUT a forwarded write waits for its primary's answer. */
const FORWARD_GRACE = 2000
/** How long shutdown waits for peers to read their last frames before the swarm is destroyed. */
const CLOSE_CONNECTIONS_TIMEOUT = 2000

const LIMIT_SETTINGS = ['maxFrameBytes', 'maxMessageBytes', 'messagesPerSecond', 'bytesPerSecond', 'syncsPerSecond', 'registersPerMinute', 'newRoomsPerMinute'] as const

type Handler<F extends Frame> = (peer: Peer, frame: F) => Promise<void>

/**
 * The root peer: keeps end-to-end encrypted rooms available while their members are offline.
 *
 * Events: `ready` ({ publicKey }), `dht-bootstrapped` ({ nodes }), `discovery-announced`, `discovery-error` (err),
 * `peer-connected` (peerId), `peer-disconnected` (peerId), `peer-error` (peerId, err), `peer-refused` (peerId, err),
 * `room-registered` ({ roomId, roomName, peerId, messageCount }), `room-recovered` ({ roomName }),
 * `message-stored` ({ roomName, messageCount, totalMessages, messageIndex, peerId, id }),
 * `frame-refused` (peerId, err), `peer-banned` (peerId), `peer-stalled` (peerId), `append-error` ({ roomName, err }), `state-file-recovered` ({ problem, movedTo, fromPrevious, rooms, messages }),
 * `storage-failed` ({ code, freeBytes, err }), `storage-recovery-failed` (err), `storage-recovered`,
 * `state-saved`, `state-save-error` (err), `stats` (StatsSnapshot), `closing`, `close`.
 */
export class ChatRootPeer extends EventEmitter {
  readonly storageDir: string
  readonly limits: Readonly<Limits>
  readonly maxPeers: number
  readonly maxRooms: number
  readonly counters: Counters = createCounters()
  readonly peers = new Map<string, Peer>()
  publicKey: Buffer | null = null
  closing = false

  private readonly opts: RootPeerOptions
  private readonly discoveryTopic: Buffer
  private readonly statsInterval: number
  private readonly stateFile: StateFile
  private store: Corestore | null = null
  private rooms: Rooms | null = null
  private swarm: Hyperswarm | null = null
  private discovery: PeerDiscovery | null = null
  private readonly topics: RoomTopics
  private readonly maxOpenRooms: number
  private readonly roomIdleTimeout: number
  private readonly storageWriteBuffer: number
  private sweepTimer: NodeJS.Timeout | null = null
  private readonly inflight = new Set<Promise<unknown>>()
  private statsTimer: NodeJS.Timeout | null = null
  private saveTimer: NodeJS.Timeout | null = null
  private unsaved = 0
  private lastSaveAt = 0
  private createdAt = 0
  private startedAt = 0
  private announced = false
  private readonly onLatency: ((kind: 'append' | 'sync', seconds: number) => void) | null
  private opening: Promise<void> | null = null
  private closingPromise: Promise<void> | null = null
  private readonly handlers: { [T in Frame['type']]: Handler<Extract<Frame, { type: T }>> }
  private readonly guard: Guard
  private readonly stallTimeout: number
  private readonly inbound: Inbound
  private readonly firstFrameTimeout: number
  private readonly maxPeersPerHost: number
  private readonly idleEvictAfter: number
  private readonly emptyRoomTtl: number
  /** connected peers per remote address */
  private readonly hosts = new Map<string, number>()
  private readonly walSync: WalSync | null
  private readonly requireSignedRooms: boolean
  readonly retention: Readonly<RetentionPolicy>
  private readonly maxStorageBytes: number
  /** null when retention is off */
  private readonly pruner: Pruner | null
  /** whether writes fail (disk full, read-only, I/O error): messages are refused until storage recovers, frames wait for a reopen */
  private readonly storage: StorageHealth
  private readonly clusterPeers: string[]
  private readonly minMirrors: number
  private readonly replicationTimeout: number
  private cluster: ClusterRooms | null = null
  private readonly writer: RoomWriter

  constructor (opts: RootPeerOptions) {
    super()
    const {
      storageDir,
      discoveryTopic = DEFAULT_DISCOVERY_TOPIC,
      statsInterval = 30_000,
      maxPeers = 1024,
      maxRooms = 100_000,
      maxOpenRooms = 256,
      maxAnnouncedRooms = 1000,
      roomIdleTimeout = 300_000,
      storageWriteBuffer = 8 * 1024 * 1024,
      banThreshold = 100,
      banDuration = 600_000,
      stallTimeout = 30_000,
      maxBufferedBytes = 64 * 1024 * 1024,
      frameTimeout = 20_000,
      firstFrameTimeout = 30_000,
      maxPeersPerHost = 256,
      idleEvictAfter = 10_000,
      emptyRoomTtl = 3_600_000,
      limits = {}
    } = opts
    this.opts = opts
    this.storageDir = storageDir
    this.discoveryTopic = crypto.hash(Buffer.from(discoveryTopic))
    this.statsInterval = statsInterval
    this.maxPeers = maxPeers
    this.maxRooms = maxRooms
    this.maxOpenRooms = maxOpenRooms
    this.roomIdleTimeout = roomIdleTimeout
    this.storageWriteBuffer = storageWriteBuffer
    this.topics = new RoomTopics({ maxAnnounced: maxAnnouncedRooms, idleTimeout: roomIdleTimeout })
    this.stallTimeout = stallTimeout
    const settings: Partial<Limits> = {}
    for (const key of LIMIT_SETTINGS) if (opts[key] !== undefined) settings[key] = opts[key]
    this.limits = Object.freeze({ ...DEFAULT_LIMITS, ...limits, ...settings })
    this.inbound = new Inbound({ maxFrameBytes: this.limits.maxFrameBytes, frameTimeout, maxBufferedBytes })
    this.firstFrameTimeout = firstFrameTimeout
    this.maxPeersPerHost = maxPeersPerHost
    this.idleEvictAfter = idleEvictAfter
    this.emptyRoomTtl = emptyRoomTtl
    this.guard = new Guard({
      ...this.limits,
      banThreshold,
      banDuration,
      onUnban: peerId => this.swarm?.peers.get(peerId)?.ban(false)
    })
    this.stateFile = new StateFile(storageDir)
    this.walSync = opts.syncWrites === true ? new WalSync(() => this.store!) : null
    this.requireSignedRooms = opts.requireSignedRooms === true
    this.retention = Object.freeze({ messages: opts.retentionMessages ?? 0, bytes: opts.retentionBytes ?? 0, maxAgeMs: opts.retentionAge ?? 0 })
    this.maxStorageBytes = opts.maxStorageBytes ?? 0
    this.storage = new StorageHealth({ dir: storageDir, writeBuffer: storageWriteBuffer, reopen: () => this.reopenStorage() })
    this.storage.on('storage-failed', e => {
      this.counters.storageFailures++
      this.emit('storage-failed', e)
    })
    this.storage.on('storage-recovery-failed', err => this.emit('storage-recovery-failed', err))
    this.storage.on('storage-recovered', () => {
      this.emit('storage-recovered')
      this.save()
    })
    this.pruner = retentionOn(this.retention) ? new Pruner(this.retention, () => this.rooms) : null
    this.pruner?.on('room-pruned', e => this.emit('room-pruned', e))
    this.pruner?.on('prune-error', e => this.emit('prune-error', e))
    this.onLatency = opts.onLatency ?? null
    this.clusterPeers = opts.clusterPeers ?? []
    this.minMirrors = opts.minMirrors ?? 0
    this.replicationTimeout = opts.replicationTimeout ?? 5000
    this.writer = new RoomWriter({
      rooms: () => this.rooms!,
      storage: this.storage,
      walSync: this.walSync,
      cluster: () => this.cluster,
      pruner: this.pruner,
      counters: this.counters,
      closing: () => this.closing,
      maxRooms: this.maxRooms,
      onLatency: this.onLatency
    })
    this.writer.on('message-stored', e => {
      this.emit('message-stored', e)
      if (++this.unsaved >= SAVE_EVERY_MESSAGES) this.scheduleSave()
    })
    this.writer.on('append-error', e => this.emit('append-error', e))
    this.handlers = {
      'register-room': this.onRegisterRoom.bind(this),
      message: this.onMessage.bind(this),
      'sync-request': this.onSyncRequest.bind(this)
    }
  }

  ready (): Promise<void> {
    if (this.opening === null) this.opening = this.open()
    return this.opening
  }

  close (): Promise<void> {
    if (this.closingPromise === null) this.closingPromise = this.shutdown()
    return this.closingPromise
  }

  /** True once the DHT has bootstrapped (found at least one node). */
  get dhtBootstrapped (): boolean {
    const dht = this.swarm?.dht
    return dht !== undefined && dht.bootstrapped && dht.toArray({ limit: 1 }).length > 0
  }

  /** Ready means: storage open, discovery topic announced, DHT bootstrapped. */
  health (): Health {
    const failure = this.storage.reason()
    const storage = this.store !== null && this.rooms !== null && !this.closing && failure === null
    const discovery = this.announced && !this.closing
    const dht = this.dhtBootstrapped
    const reasons: string[] = []
    if (this.closing) reasons.push('shutting down')
    else if (failure !== null) reasons.push(failure)
    else if (!storage) reasons.push('storage not open')
    if (!this.closing && !discovery) reasons.push('discovery topic not announced yet')
    if (!this.closing && !dht) reasons.push('DHT not bootstrapped')
    const health: Health = { ok: reasons.length === 0, reasons, storage, discovery, dht }
    if (this.cluster !== null) health.cluster = this.cluster.status()
    return health
  }

  /** With CLUSTER_PEERS: per primary member, the blocks it has announced that this member has not stored yet, and for how long. */
  mirrorLag (): Map<string, { blocks: number, seconds: number }> {
    return this.cluster?.mirrorLag() ?? new Map()
  }

  /** With CLUSTER_PEERS: rooms mirrored here, and those followed actively now (the others sleep until their core grows). */
  mirroredRooms (): { followed: number, active: number } {
    return this.cluster?.mirroredRooms() ?? { followed: 0, active: 0 }
  }

  /** With CLUSTER_PEERS, as a primary: per mirror, the blocks of this root peer's open rooms it has not stored yet. */
  replicaLag (): Map<string, number> {
    if (this.cluster === null || this.rooms === null) return new Map()
    return this.cluster.replicaLag([...this.rooms.openRooms()].filter(room => !room.mirrored).map(room => room.core))
  }

  /** Bytes of incoming frames held now for all connections (half-received and queued), at most MAX_BUFFERED_BYTES. */
  get inboundBytes (): number {
    return this.inbound.total
  }

  /** Keys and addresses whose rate budgets are remembered now (each table at most MAX_BUDGETS). */
  get budgets (): { keys: number, hosts: number } {
    return this.guard.remembered
  }

  /** Messages and bytes pruned by retention since the process started. */
  get pruned (): { messages: number, bytes: number } {
    return { messages: this.rooms?.prunedMessages ?? 0, bytes: this.rooms?.prunedBytes ?? 0 }
  }

  /** Every room this root peer holds (the monitor and the metrics read them; see stats.ts namedRooms). */
  roomList (): Iterable<RoomState> {
    return this.rooms?.list() ?? []
  }

  /** The `n` rooms that hold the most message bytes. */
  largestRooms (n: number): Array<{ name: string, bytes: number }> {
    return largest(this.roomList(), n)
  }

  /** Rooms known, rooms whose core is open now, bytes stored, and room topics announced now. */
  get roomCounts (): { total: number, open: number, bytes: number, announced: number } {
    return { total: this.rooms?.size ?? 0, open: this.rooms?.openCount ?? 0, bytes: this.rooms?.totalBytes ?? 0, announced: this.topics.size }
  }

  stats (): StatsSnapshot {
    const rooms = this.rooms
    return {
      publicKey: this.publicKey?.toString('hex') ?? '',
      totalRooms: rooms?.size ?? 0,
      totalMessages: rooms?.totalMessages ?? 0,
      activePeers: this.peers.size,
      uptimeSeconds: this.startedAt === 0 ? 0 : Math.round((Date.now() - this.startedAt) / 1000),
      busiestRooms: rooms === null ? [] : busiest(rooms.list()),
      counters: this.counters
    }
  }

  private async open (): Promise<void> {
    // the store first: it is the data dir's lock, so a dir another process holds is refused before anything in it is touched
    const store = await this.openStore()
    const keyPair = await store.createKeyPair(SWARM_KEY_PAIR)
    this.publicKey = keyPair.publicKey

    const loaded = await this.stateFile.load()
    const recovered = await this.openRooms(loaded.state)
    const rooms = this.rooms!
    // a missing file on a fresh data dir is no news; a missing file beside stored rooms is
    if (loaded.problem !== null && (loaded.problem !== 'missing' || recovered > 0 || loaded.fromPrevious)) {
      const { problem, movedTo, fromPrevious } = loaded
      this.emit('state-file-recovered', { problem, movedTo, fromPrevious, rooms: rooms.size, messages: rooms.totalMessages })
    }
    this.announceRecentRooms(rooms)
    this.createdAt = loaded.state?.rootPeerCreatedAt || Date.now()

    const { bootstrap, dhtHost = '0.0.0.0', dhtPort } = this.opts
    const dht = new HyperDHT({
      ...(bootstrap ? { bootstrap } : {}),
      host: dhtHost,
      ...(dhtPort ? { port: dhtPort } : {}),
      keyPair
    })
    // the daemon enforces maxPeers itself, with an answer; Hyperswarm's own cap is for outgoing connections
    this.swarm = new Hyperswarm({
      dht,
      keyPair,
      maxPeers: this.maxPeers + 1 + this.clusterPeers.length,
      // a banned key is refused at the handshake, before it costs a stream
      firewall: remotePublicKey => this.guard.isBanned(remotePublicKey.toString('hex'))
    })
    this.swarm.on('connection', (conn: NoiseStream) => this.onConnection(conn))
    if (this.clusterPeers.length > 0) this.openCluster(this.swarm)
    this.discovery = this.swarm.join(this.discoveryTopic, { server: true, client: false })
    this.topics.attach(topicSwarm(this.swarm))

    // an unreachable DHT does not hold back ready; these report when it comes
    dht.fullyBootstrapped().then(() => {
      if (!this.closing) this.emit('dht-bootstrapped', { nodes: dht.toArray().length })
    }, () => {})
    this.discovery.flushed().then(() => {
      this.announced = true
      if (!this.closing) this.emit('discovery-announced')
    }, err => {
      if (!this.closing) this.emit('discovery-error', err)
    })

    if (this.statsInterval > 0) {
      this.statsTimer = setInterval(() => {
        this.save()
        this.emit('stats', this.stats())
      }, this.statsInterval)
      this.statsTimer.unref()
    }
    this.startSweep()
    this.pruner?.start()
    this.startedAt = Date.now()
    await this.save()
    this.emit('ready', { publicKey: this.publicKey.toString('hex') })
  }

  private async openStore (): Promise<Corestore> {
    const store = await openStore(this.storageDir, { writeBufferSize: this.storageWriteBuffer })
    this.store = store
    return store
  }

  /** Loads the rooms from the store's room index merged with `saved`; resolves with the rooms found only in the index. */
  private async openRooms (saved: PersistentState | null): Promise<number> {
    const rooms = new Rooms(this.store!, { maxOpen: this.maxOpenRooms, onBatch: () => { this.counters.appendBatches++ } })
    rooms.on('index-recovered', ({ name }: { name: string }) => this.emit('room-recovered', { roomName: name }))
    const recovered = await rooms.load(saved)
    this.rooms = rooms
    return recovered
  }

  private async reopenStorage (): Promise<void> {
    const rooms = this.rooms!
    await rooms.settled()
    const snapshot = rooms.snapshot(this.createdAt)
    await this.cluster?.pause()
    await rooms.close().catch(() => {})
    await this.store!.close().catch(() => {})
    if (this.closing) return
    await this.openStore()
    await this.openRooms(snapshot)
    // the mirrored rooms are followed again in the new store, and member links start over on it
    this.cluster?.resume()
  }

  private async shutdown (): Promise<void> {
    if (this.opening !== null) await this.opening.catch(() => {})
    this.closing = true
    this.emit('closing')
    if (this.statsTimer !== null) clearInterval(this.statsTimer)
    if (this.saveTimer !== null) clearTimeout(this.saveTimer)
    if (this.sweepTimer !== null) clearInterval(this.sweepTimer)
    this.storage.close()
    if (this.storage.reopening !== null) await this.storage.reopening.catch(() => {})
    this.topics.close()
    this.guard.close()

    // frames accepted before the signal finish, and their acks go out; later frames get SHUTTING_DOWN
    while (this.inflight.size > 0) await Promise.allSettled([...this.inflight])
    if (this.pruner !== null) await this.pruner.close()
    if (this.cluster !== null) await this.cluster.close()
    if (this.rooms !== null) await this.rooms.settled()
    if (this.rooms !== null) await this.save()

    await Promise.all([...this.peers.values()].map(peer => endConnection(peer.conn, CLOSE_CONNECTIONS_TIMEOUT)))
    if (this.swarm !== null) await this.swarm.destroy()
    if (this.rooms !== null) await this.rooms.close()
    if (this.walSync !== null) await this.walSync.close()
    if (this.store !== null) await this.store.close()
    await this.stateFile.flushed()
    this.emit('close')
  }

  private onConnection (conn: NoiseStream): void {
    conn.on('error', (err: Error) => this.emit('peer-error', conn.remotePublicKey.toString('hex'), err))
    if (this.closing) {
      conn.destroy()
      return
    }
    if (this.cluster !== null && this.cluster.isMember(conn.remotePublicKey.toString('hex'))) {
      // another root peer of this cluster: no client frames, replication and the cluster channel instead
      this.cluster.attach(conn)
      return
    }
    const host = conn.rawStream?.remoteHost ?? null
    const refusal = this.admission(host)
    if (refusal !== null) {
      endConnection(conn, CLOSE_GRACE, JSON.stringify({ type: 'error', code: refusal.code, message: refusal.message, ...refusal.details })).catch(() => {})
      bump(this.counters.errors, refusal.code)
      this.emit('peer-refused', conn.remotePublicKey.toString('hex'), refusal)
      return
    }
    // before the Peer's own data listener: the inbound budget sees each chunk as secret-stream leaves it
    const inbound = this.inbound.watch(conn, (reason, announced) => this.dropPeer(conn, reason, announced))
    const peerId = conn.remotePublicKey.toString('hex')
    const peer = new Peer(conn, this.guard.record(peerId, host), {
      stallTimeout: this.stallTimeout,
      inbound,
      handle: (p, data) => this.onFrame(p, data),
      onStall: p => {
        this.counters.stalledPeers++
        this.emit('peer-stalled', p.id)
      }
    })
    this.peers.set(peer.id, peer)
    if (host !== null) this.hosts.set(host, (this.hosts.get(host) ?? 0) + 1)
    this.counters.peersConnected++
    const firstFrame = this.firstFrameTimeout > 0
      ? setTimeout(() => { if (peer.accepted === 0) this.disconnect(peer, RootPeerError.IDLE(this.firstFrameTimeout)) }, this.firstFrameTimeout)
      : null
    firstFrame?.unref()
    conn.on('close', () => {
      if (firstFrame !== null) clearTimeout(firstFrame)
      if (this.peers.get(peer.id) === peer) this.peers.delete(peer.id)
      if (host !== null) {
        const n = (this.hosts.get(host) ?? 1) - 1
        if (n === 0) this.hosts.delete(host)
        else this.hosts.set(host, n)
      }
      this.counters.peersDisconnected++
      this.emit('peer-disconnected', peer.id)
    })
    this.emit('peer-connected', peer.id)
    this.sendFrame(peer, 'root-peer-announcement', {
      type: 'root-peer-announcement',
      version: PROTOCOL_VERSION,
      publicKey: this.publicKey!.toString('hex'),
      limits: this.limits,
      challenge: peer.challenge,
      access: ACCESS_VERSION
    })
  }

  private async onFrame (peer: Peer, data: Buffer): Promise<void> {
    let frame: Frame
    try {
      frame = decodeFrame(data, this.limits)
    } catch (err) {
      bump(this.counters.framesReceived, 'invalid')
      this.refuse(peer, err, frameContext(data, this.limits))
      return
    }
    bump(this.counters.framesReceived, frame.type)
    if (this.closing) {
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
    if (this.storage.reopening !== null) await this.storage.reopening.catch(() => {})
    const handled = (this.handlers[frame.type] as Handler<Frame>)(peer, frame)
    this.track(handled)
    try {
      await handled
    } catch (err) {
      this.refuse(peer, err, contextOf(frame))
    }
  }

  private async onRegisterRoom (peer: Peer, frame: RegisterRoomFrame): Promise<void> {
    const { roomName, writerPublicKey, signature } = frame
    // the name commits to the key: nobody can claim a signed room's name with another key
    if (writerPublicKey !== undefined && !keyMatchesName(writerPublicKey, roomName)) throw RootPeerError.BAD_ROOM_KEY()
    const key = writerPublicKey ?? this.rooms!.info(roomName)?.writerPublicKey
    if (key === undefined) {
      if (this.requireSignedRooms) throw RootPeerError.UNAUTHORIZED('this root peer keeps signed rooms only: register-room needs writerPublicKey and signature')
    } else if (!verifyAccess(key, this.publicKey!.toString('hex'), peer.challenge, roomName, signature)) {
      throw RootPeerError.UNAUTHORIZED('a signed room: register-room needs a signature over (challenge, roomName) by the room\'s key')
    }
    // in a cluster, a new room is created at its rendezvous owner and mirrored here
    if (this.cluster !== null && !this.rooms!.has(roomName)) await this.placeRoom(peer, roomName, writerPublicKey)
    // a mirrored room signed here: its primary signs it, and says where its signed history starts
    const known = this.rooms!.info(roomName)
    if (this.cluster !== null && writerPublicKey !== undefined && known?.primary !== undefined && known.writerPublicKey === undefined) {
      await this.cluster.sign(known.primary, roomName, writerPublicKey)
    }
    const info = await this.joinRoom(peer, roomName, true, writerPublicKey)
    if (frame.requestId !== undefined) {
      this.sendFrame(peer, 'room-registered', { type: 'room-registered', roomName: frame.roomName, messageCount: info.messageCount, requestId: frame.requestId })
    }
  }

  private async onMessage (peer: Peer, frame: MessageFrame): Promise<void> {
    // while writes fail, nothing is tried: the peer resends after the failure has passed
    if (this.storage.failure !== null) throw this.storage.failure
    const rooms = this.rooms!
    const writerPublicKey = rooms.info(frame.roomName)?.writerPublicKey
    if (writerPublicKey !== undefined) checkSigned(writerPublicKey, frame)
    else if (this.requireSignedRooms) throw RootPeerError.UNAUTHORIZED('this root peer keeps signed rooms only: register the room with its key first')
    if (this.maxStorageBytes > 0 && rooms.totalBytes >= this.maxStorageBytes) throw RootPeerError.STORAGE_CAP(this.maxStorageBytes)
    if (this.cluster !== null && !rooms.has(frame.roomName)) await this.placeRoom(peer, frame.roomName)
    // in a cluster, who the primary is is known once another member was heard from since start (one may have taken this one's rooms over)
    const writable = this.cluster?.writable() ?? null
    if (writable !== null) await writable
    const primary = rooms.info(frame.roomName)?.primary
    // another member's room: the write goes to its primary
    if (primary !== undefined) return await this.forward(peer, frame, primary)
    // a message for a room not registered yet registers it first
    if (peer.rooms.has(frame.roomName)) this.topics.touch(frame.roomName)
    else await this.joinRoom(peer, frame.roomName, false)
    // the handler returns once the message is queued for its room, so the next frame is handled while it is appended
    const { roomName, message, messageJson, id, signature } = frame
    const { result } = await this.writer.queue({ roomName, message, messageJson, fromPeer: peer.id, id, signature, checkedKey: writerPublicKey })
    this.track(result.then(({ index, duplicate }) => {
      // acked only once the promise is kept (appended; with SYNC_WRITES on disk; with MIN_MIRRORS mirrored)
      if (id !== undefined) this.sendFrame(peer, 'message-ack', encodeAck(JSON.stringify(roomName), id, index, duplicate))
    }, err => this.refuse(peer, err, contextOf(frame))))
  }

  private async onSyncRequest (peer: Peer, frame: SyncRequestFrame): Promise<void> {
    const { roomName, lastIndex, limit, requestId } = frame
    const started = this.onLatency === null ? 0 : performance.now()
    const rooms = this.rooms!
    const writerPublicKey = rooms.info(roomName)?.writerPublicKey
    // a signed room is read only with a signature over this connection's challenge; a refusal tells nothing of it
    if (writerPublicKey !== undefined && !verifyAccess(writerPublicKey, this.publicKey!.toString('hex'), peer.challenge, roomName, frame.signature)) {
      throw RootPeerError.UNAUTHORIZED('a signed room: sync-request needs a signature over (challenge, roomName) by the room\'s key')
    }
    // frames are handled in order: a sync after this connection's own forwarded message sees it
    const forwarded = peer.forwards.get(roomName)
    if (forwarded !== undefined) await forwarded
    const room = rooms.has(roomName) ? await rooms.get(roomName, false) : null
    const tail = requestId === undefined ? '}' : ',"requestId":' + JSON.stringify(requestId) + '}'
    const head = '{"type":"sync-response","roomName":' + JSON.stringify(roomName) + ',"messages":['
    if (room === null) {
      // an unknown room is not created by being asked about
      this.sendFrame(peer, 'sync-response', head + '],"totalMessages":0,"nextIndex":' + lastIndex + ',"hasMore":false,"firstIndex":0' + tail)
      return
    }
    this.topics.touch(roomName)
    let page
    // below the retention horizon the answer starts at the horizon, and firstIndex says so
    let firstIndex = 0
    try {
      // frames are handled in order: a sync after this connection's own message sees it
      await room.barrier()
      // a signed room's members are served its signed history only: what a stranger stored under the name before is below signedFrom
      firstIndex = Math.max(room.info.firstIndex ?? 0, room.info.writerPublicKey === undefined ? 0 : room.info.signedFrom ?? 0)
      page = await room.readPage(Math.max(lastIndex, firstIndex), limit, this.limits.maxPageBytes)
    } finally {
      rooms.release(room)
    }
    this.sendFrame(peer, 'sync-response', head + page.entries.join(',') +
      '],"totalMessages":' + page.totalMessages +
      ',"nextIndex":' + page.nextIndex +
      ',"hasMore":' + (page.nextIndex < page.totalMessages) +
      ',"firstIndex":' + firstIndex + tail)
    // a reader that does not read holds up its own next frame (Peer waits for the drain), not our memory
    if (this.onLatency !== null) this.onLatency('sync', (performance.now() - started) / 1000)
  }

  /** Registers the room unless it exists (within the caps) and marks it active; opens no core. */
  private async joinRoom (peer: Peer, roomName: string, always: boolean, writerPublicKey?: string): Promise<RoomState> {
    const rooms = this.rooms!
    if (!rooms.has(roomName)) {
      this.guard.admitNewRoom(peer.record)
      // full: an empty room (a stranger's, most likely) gives its place up; rooms with history never do
      if (rooms.size >= this.maxRooms && !(this.cluster === null && await this.removeEmptyRoom('evicted'))) throw RootPeerError.TOO_MANY_ROOMS(this.maxRooms)
    }
    const info = await rooms.register(roomName, writerPublicKey)
    this.topics.touch(roomName)
    const fresh = !peer.rooms.has(roomName)
    if (fresh) peer.rooms.add(roomName)
    if (always || fresh) {
      this.emit('room-registered', { roomId: roomName, roomName, peerId: peer.id, messageCount: info.messageCount })
    }
    return info
  }

  /** Rooms active before a restart are announced again, the most recent ones within the caps. */
  private announceRecentRooms (rooms: Rooms): void {
    const now = Date.now()
    const recent = [...rooms.list()].filter(r => now - r.lastActivity <= this.roomIdleTimeout)
    recent.sort((a, b) => a.lastActivity - b.lastActivity)
    for (const r of recent.slice(-this.topics.maxAnnounced)) this.topics.touch(r.name, r.lastActivity)
  }

  /** Closes idle rooms' cores and leaves idle rooms' topics, every half idle timeout (1 s to 1 min). */
  private startSweep (): void {
    // this.rooms, not a copy: the rooms are replaced when the store is reopened after a storage failure
    const expire = this.cluster === null && this.emptyRoomTtl > 0
    this.sweepTimer = setInterval(() => {
      this.rooms?.closeIdle(this.roomIdleTimeout)
      this.topics.sweep()
      if (expire && this.rooms !== null && !this.closing) this.track(this.expireEmptyRooms(this.rooms))
    }, Math.max(1000, Math.min(this.roomIdleTimeout / 2, expire ? this.emptyRoomTtl / 2 : Infinity, 60_000)))
    this.sweepTimer.unref()
  }

  /** Removes the empty room unused longest; false when every room has history or is in use. */
  private async removeEmptyRoom (reason: 'evicted'): Promise<boolean> {
    const name = await this.rooms!.removeEmpty()
    if (name !== null) this.roomRemoved(name, reason)
    return name !== null
  }

  private async expireEmptyRooms (rooms: Rooms): Promise<void> {
    const removed = await rooms.expireEmpty(Date.now() - this.emptyRoomTtl).catch(err => {
      this.emit('append-error', { roomName: null, err })
      return []
    })
    for (const name of removed) this.roomRemoved(name, 'expired')
  }

  private roomRemoved (roomName: string, reason: 'evicted' | 'expired'): void {
    bump(this.counters.roomsRemoved, reason)
    this.emit('room-removed', { roomName, reason })
    if (++this.unsaved >= SAVE_EVERY_MESSAGES) this.scheduleSave()
  }

  /** Joins the cluster: members' connections carry replication and the cluster channel; mirrored rooms are followed. */
  private openCluster (swarm: Hyperswarm): void {
    const cluster = new ClusterRooms({
      self: this.publicKey!.toString('hex'),
      members: this.clusterPeers,
      swarm,
      store: () => this.store!,
      rooms: () => this.rooms!,
      maxRooms: this.maxRooms,
      maxOpenRooms: this.maxOpenRooms,
      roomIdleTimeout: this.roomIdleTimeout,
      minMirrors: this.minMirrors,
      timeout: this.replicationTimeout,
      announcement: () => JSON.stringify({ type: 'root-peer-announcement', version: PROTOCOL_VERSION, publicKey: this.publicKey!.toString('hex'), limits: this.limits, challenge: newChallenge(), access: ACCESS_VERSION }),
      onWrite: write => this.onForwardedWrite(write)
    })
    for (const name of ['member-connected', 'member-disconnected', 'member-error', 'room-mirrored', 'room-conflict', 'cluster-error']) {
      cluster.on(name, (...args: unknown[]) => this.emit(name, ...args))
    }
    this.cluster = cluster
    cluster.start()
  }

  /** A new room, in a cluster: created at its rendezvous owner (here, or asked over the cluster channel) and mirrored here. */
  private async placeRoom (peer: Peer, roomName: string, writerPublicKey?: string): Promise<void> {
    await this.cluster!.place(roomName, writerPublicKey, () => {
      if (this.rooms!.size >= this.maxRooms) throw RootPeerError.TOO_MANY_ROOMS(this.maxRooms)
      this.guard.admitNewRoom(peer.record)
    })
  }

  /** Sends a client's message to the room's primary; acks with the primary's index once this member holds the block too. */
  private async forward (peer: Peer, frame: MessageFrame, primary: string): Promise<void> {
    if (peer.rooms.has(frame.roomName)) this.topics.touch(frame.roomName)
    else await this.joinRoom(peer, frame.roomName, false)
    const write: ForwardedWrite = { roomName: frame.roomName, message: frame.message, fromPeer: peer.id }
    if (frame.id !== undefined) write.id = frame.id
    if (frame.signature !== undefined) write.signature = frame.signature
    // the primary may wait REPLICATION_TIMEOUT for its mirrors; this waits a little longer for its answer
    const forwarded = this.cluster!.forward(primary, write, this.replicationTimeout + FORWARD_GRACE).then(async ({ messageIndex, duplicate }) => {
      await this.holdBlock(frame.roomName, messageIndex)
      this.counters.forwardedWrites++
      if (frame.id !== undefined) this.sendFrame(peer, 'message-ack', encodeAck(JSON.stringify(frame.roomName), frame.id, messageIndex, duplicate === true))
    }).catch(err => this.refuse(peer, err, contextOf(frame))).finally(() => {
      if (peer.forwards.get(frame.roomName) === forwarded) peer.forwards.delete(frame.roomName)
    })
    // a sync-request this peer writes after the message waits for it, as for a room of this root peer's own
    peer.forwards.set(frame.roomName, forwarded)
    this.track(forwarded)
  }

  /** Resolves once this member has the block `index` of a mirrored room (fetching it from the cluster if needed). */
  private async holdBlock (roomName: string, index: number): Promise<void> {
    const room = await this.rooms!.get(roomName, false)
    if (room === null) throw RootPeerError.INTERNAL_ERROR(new Error(`mirrored room ${roomName} is gone`))
    try {
      await room.core.get(index, { timeout: this.replicationTimeout })
    } catch (err) {
      throw RootPeerError.NOT_HELD(index, this.replicationTimeout, err)
    } finally {
      this.rooms!.release(room)
    }
  }

  /** A message another member forwarded to this root peer, the room's primary: stored (deduplicated by id) like a client's. */
  private async onForwardedWrite (write: ForwardedWrite): Promise<{ messageIndex: number, duplicate: boolean }> {
    if (this.closing) throw RootPeerError.SHUTTING_DOWN()
    if (this.storage.failure !== null) throw this.storage.failure
    await this.cluster!.writable()
    const rooms = this.rooms!
    const info = rooms.info(write.roomName)
    if (info === undefined || info.primary !== undefined) throw RootPeerError.PRIMARY_UNAVAILABLE(info?.primary ?? this.cluster!.self)
    if (this.maxStorageBytes > 0 && rooms.totalBytes >= this.maxStorageBytes) throw RootPeerError.STORAGE_CAP(this.maxStorageBytes)
    // the primary checks a signed room's signature too, with its own view: the forwarding member's may be behind
    const { index, duplicate } = await this.writer.write({ ...write, messageJson: JSON.stringify(write.message) })
    return { messageIndex: index, duplicate }
  }

  private scheduleSave (): void {
    if (this.saveTimer !== null || this.closing) return
    const wait = Math.max(0, this.lastSaveAt + MIN_SAVE_INTERVAL - Date.now())
    this.saveTimer = setTimeout(() => {
      this.saveTimer = null
      this.save()
    }, wait)
    this.saveTimer.unref()
  }

  /** Saves the state file; failures are reported as `state-save-error`, never thrown. */
  private save (): Promise<void> {
    const rooms = this.rooms
    if (rooms === null) return Promise.resolve()
    this.unsaved = 0
    this.lastSaveAt = Date.now()
    return this.stateFile.save(() => rooms.snapshot(this.createdAt)).then(() => {
      this.counters.stateSaves++
      this.emit('state-saved')
    }, err => {
      this.counters.stateSaveFailures++
      this.emit('state-save-error', err)
    })
  }

  private refuse (peer: Peer, err: unknown, context: Record<string, unknown>): void {
    const coded = err instanceof RootPeerError ? err : RootPeerError.INTERNAL_ERROR(err)
    bump(this.counters.errors, coded.code)
    this.emit('frame-refused', peer.id, coded)
    this.sendFrame(peer, 'error', { type: 'error', code: coded.code, message: coded.message, ...coded.details, ...context })
    if (!BLAMELESS.has(coded.code) && this.guard.refused(peer.record)) this.banPeer(peer)
  }

  /**
   * Null when a connection from `host` may be served, else why not: the address has MAX_PEERS_PER_HOST
   * connections, or MAX_PEERS are connected and none has been idle long enough to give its place up.
   */
  private admission (host: string | null): RootPeerError | null {
    if (host !== null && this.maxPeersPerHost > 0 && (this.hosts.get(host) ?? 0) >= this.maxPeersPerHost) {
      return RootPeerError.TOO_MANY_PEERS_FROM_HOST(this.maxPeersPerHost)
    }
    if (this.peers.size < this.maxPeers) return null
    if (this.idleEvictAfter === 0) return RootPeerError.TOO_MANY_PEERS(this.maxPeers)
    let idlest: Peer | null = null
    for (const peer of this.peers.values()) {
      if (!peer.closed && (idlest === null || peer.lastActive < idlest.lastActive)) idlest = peer
    }
    const idle = idlest === null ? 0 : Date.now() - idlest.lastActive
    if (idlest === null || idle < this.idleEvictAfter) return RootPeerError.TOO_MANY_PEERS(this.maxPeers)
    this.disconnect(idlest, RootPeerError.IDLE(idle))
    // its place is free now: close() stops counting it before the stream is gone
    this.peers.delete(idlest.id)
    return null
  }

  /** Ends a peer's connection with an error frame saying why. */
  private disconnect (peer: Peer, err: RootPeerError): void {
    if (peer.closed) return
    bump(this.counters.errors, err.code)
    this.counters.idleDisconnects++
    this.emit('peer-idle', peer.id, err)
    peer.send({ type: 'error', code: err.code, message: err.message, ...err.details })
    peer.close()
  }

  /** Ends a connection the inbound budget gave up on: a frame too large, too slow, or too much held. */
  private dropPeer (conn: NoiseStream, reason: DropReason, announced: number): void {
    const err = reason === 'frame-too-large'
      ? RootPeerError.FRAME_TOO_LARGE(announced, this.limits.maxFrameBytes)
      : reason === 'frame-timeout' ? RootPeerError.FRAME_INCOMPLETE(this.inbound.frameTimeout) : RootPeerError.OVERLOADED(this.inbound.maxBufferedBytes)
    bump(this.counters.errors, err.code)
    bump(this.counters.droppedPeers, reason)
    const peerId = conn.remotePublicKey.toString('hex')
    this.emit('peer-dropped', peerId, err)
    // the error goes out, and the stream is destroyed at once: the transport keeps taking in what a peer sends
    // while it is open, whether anyone reads it or not
    const peer = this.peers.get(peerId)
    if (peer !== undefined && peer.conn === conn) this.sendFrame(peer, 'error', { type: 'error', code: err.code, message: err.message, ...err.details })
    peer?.close()
    setImmediate(() => conn.destroy())
  }

  /** Disconnects a peer that keeps sending refused frames, and refuses its key for a while. */
  private banPeer (peer: Peer): void {
    if (peer.closed) return
    this.guard.ban(peer.id)
    this.counters.bans++
    const err = RootPeerError.BANNED(this.guard.banDuration)
    bump(this.counters.errors, err.code)
    this.emit('peer-banned', peer.id)
    peer.send({ type: 'error', code: err.code, message: err.message, ...err.details })
    peer.close()
  }

  private sendFrame (peer: Peer, type: string, frame: object | string): void {
    if (peer.closed) return
    peer.send(frame)
    bump(this.counters.framesSent, type)
  }

  private track (promise: Promise<unknown>): void {
    const done = (): void => { this.inflight.delete(p) }
    const p: Promise<unknown> = promise.then(done, done)
    this.inflight.add(p)
  }
}

/** The topic a room is announced on: the name itself when it is a 64-hex topic (what clients join), else its hash. */
export function roomTopic (name: string): Buffer {
  return isHexTopic(name) ? Buffer.from(name, 'hex') : crypto.hash(Buffer.from(name))
}

/** Joins and leaves a room's topic on the swarm, as a server. */
function topicSwarm (swarm: Hyperswarm): TopicSwarm {
  return {
    join: name => { swarm.join(roomTopic(name), { server: true, client: false }) },
    leave: name => { swarm.leave(roomTopic(name)).catch(() => {}) }
  }
}

/** Refusals that are not the peer's fault and do not count towards a ban. */
const BLAMELESS: ReadonlySet<string> = new Set(['SHUTTING_DOWN', 'STORAGE_ERROR', 'STORAGE_FULL', 'INTERNAL_ERROR', 'TOO_MANY_ROOMS', 'PRIMARY_UNAVAILABLE', 'NOT_REPLICATED'])

function contextOf (frame: Frame): Record<string, unknown> {
  const ctx: Record<string, unknown> = { requestType: frame.type, roomName: frame.roomName }
  if (frame.type === 'message' && frame.id !== undefined) ctx.id = frame.id
  if (frame.type !== 'message' && frame.requestId !== undefined) ctx.requestId = frame.requestId
  return ctx
}

