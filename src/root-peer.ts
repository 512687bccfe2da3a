import { EventEmitter } from 'node:events'
import type Corestore from 'corestore'
import HyperDHT from 'hyperdht'
import Hyperswarm, { type NoiseStream, type PeerDiscovery } from 'hyperswarm'
import crypto from 'hypercore-crypto'
import type { BootstrapNode } from './config.js'
import { DEFAULT_DISCOVERY_TOPIC } from './config.js'
import { openStore } from './storage/data-dir-lock.js'
import { StorageHealth } from './storage/storage-health.js'
import { RootPeerError } from './protocol/errors.js'
import { type Peer, endConnection } from './connection/peer.js'
import { DEFAULT_LIMITS, encodeAnnouncement, isHexTopic, type Limits } from './protocol/protocol.js'
import { RoomTopics, type TopicSwarm } from './connection/room-topics.js'
import { Rooms } from './storage/rooms.js'
import { retentionOn, type RetentionPolicy } from './storage/retention.js'
import { Pruner } from './storage/pruner.js'
import { StateFile, type PersistentState, type RoomState } from './storage/state-file.js'
import { WalSync } from './storage/wal-sync.js'
import { SWARM_KEY_PAIR, type ForwardedWrite } from './cluster/cluster.js'
import { ClusterRooms } from './cluster/cluster-rooms.js'
import { Connections } from './connection/connections.js'
import { FrameHandlers } from './connection/frame-handlers.js'
import { RoomWriter } from './storage/room-writer.js'
import { newChallenge } from './protocol/room-auth.js'
import { busiest, bump, createCounters, largest, type Counters, type StatsSnapshot } from './monitor/stats.js'
import safetyCatch from 'safety-catch'

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
/** How long shutdown waits for peers to read their last frames before the swarm is destroyed. */
const CLOSE_CONNECTIONS_TIMEOUT = 2000

const LIMIT_SETTINGS = ['maxFrameBytes', 'maxMessageBytes', 'messagesPerSecond', 'bytesPerSecond', 'syncsPerSecond', 'registersPerMinute', 'newRoomsPerMinute'] as const


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
  private readonly connections: Connections
  private readonly handlers: FrameHandlers
  private readonly emptyRoomTtl: number
  private readonly walSync: WalSync | null
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
    const settings: Partial<Limits> = {}
    for (const key of LIMIT_SETTINGS) if (opts[key] !== undefined) settings[key] = opts[key]
    this.limits = Object.freeze({ ...DEFAULT_LIMITS, ...limits, ...settings })
    this.emptyRoomTtl = emptyRoomTtl
    this.stateFile = new StateFile(storageDir)
    this.walSync = opts.syncWrites === true ? new WalSync(() => this.store!) : null
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
    this.connections = new Connections({
      limits: this.limits,
      guard: { banThreshold, banDuration, onUnban: peerId => this.swarm?.peers.get(peerId)?.ban(false) },
      inbound: { frameTimeout, maxBufferedBytes },
      maxPeers,
      maxPeersPerHost,
      idleEvictAfter,
      firstFrameTimeout,
      stallTimeout,
      counters: this.counters,
      storage: this.storage,
      publicKey: () => this.publicKey!.toString('hex'),
      closing: () => this.closing,
      dispatch: (peer, frame) => this.handlers.dispatch(peer, frame),
      track: promise => this.track(promise)
    })
    this.handlers = new FrameHandlers({
      rooms: () => this.rooms!,
      cluster: () => this.cluster,
      connections: this.connections,
      writer: this.writer,
      topics: this.topics,
      storage: this.storage,
      limits: this.limits,
      counters: this.counters,
      publicKey: () => this.publicKey!.toString('hex'),
      maxRooms,
      maxStorageBytes: this.maxStorageBytes,
      requireSignedRooms: opts.requireSignedRooms === true,
      replicationTimeout: this.replicationTimeout,
      onLatency: this.onLatency,
      removeEmptyRoom: () => this.removeEmptyRoom(),
      track: promise => this.track(promise)
    })
    this.connections.on('peer-connected', id => this.emit('peer-connected', id))
    this.connections.on('peer-disconnected', id => this.emit('peer-disconnected', id))
    this.connections.on('peer-refused', (id, err) => this.emit('peer-refused', id, err))
    this.connections.on('peer-stalled', id => this.emit('peer-stalled', id))
    this.connections.on('peer-idle', (id, err) => this.emit('peer-idle', id, err))
    this.connections.on('peer-dropped', (id, err) => this.emit('peer-dropped', id, err))
    this.connections.on('frame-refused', (id, err) => this.emit('frame-refused', id, err))
    this.connections.on('peer-banned', id => this.emit('peer-banned', id))
    this.handlers.on('room-registered', e => this.emit('room-registered', e))
  }

  /** The Hyperswarm and the Corestore in use now (null before ready; the store is replaced when storage is reopened). */
  get network (): Hyperswarm | null {
    return this.swarm
  }

  get corestore (): Corestore | null {
    return this.store
  }

  /** The client connections now, by public key (hex). */
  get peers (): ReadonlyMap<string, Peer> {
    return this.connections.peers
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
    return this.connections.inbound.total
  }

  /** Keys and addresses whose rate budgets are remembered now (each table at most MAX_BUDGETS). */
  get budgets (): { keys: number, hosts: number } {
    return this.connections.guard.remembered
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
      firewall: remotePublicKey => this.connections.guard.isBanned(remotePublicKey.toString('hex'))
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
    await rooms.close().catch(safetyCatch)
    await this.store!.close().catch(safetyCatch)
    if (this.closing) return
    await this.openStore()
    await this.openRooms(snapshot)
    // the mirrored rooms are followed again in the new store, and member links start over on it
    this.cluster?.resume()
  }

  private async shutdown (): Promise<void> {
    if (this.opening !== null) await this.opening.catch(safetyCatch)
    this.closing = true
    this.emit('closing')
    if (this.statsTimer !== null) clearInterval(this.statsTimer)
    if (this.saveTimer !== null) clearTimeout(this.saveTimer)
    if (this.sweepTimer !== null) clearInterval(this.sweepTimer)
    this.storage.close()
    if (this.storage.reopening !== null) await this.storage.reopening.catch(safetyCatch)
    this.topics.close()
    this.connections.close()

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
    this.connections.accept(conn)
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
  private async removeEmptyRoom (): Promise<boolean> {
    const name = await this.rooms!.removeEmpty()
    if (name !== null) this.roomRemoved(name, 'evicted')
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
      announcement: () => JSON.stringify(encodeAnnouncement(this.publicKey!.toString('hex'), this.limits, newChallenge())),
      onWrite: write => this.onForwardedWrite(write)
    })
    for (const name of ['member-connected', 'member-disconnected', 'member-error', 'room-mirrored', 'room-conflict', 'cluster-error']) {
      cluster.on(name, (...args: unknown[]) => this.emit(name, ...args))
    }
    this.cluster = cluster
    cluster.start()
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
    leave: name => { swarm.leave(roomTopic(name)).catch(safetyCatch) }
  }
}



