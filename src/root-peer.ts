import type Corestore from 'corestore'
import HyperDHT from 'hyperdht'
import Hyperswarm, { type NoiseStream, type PeerDiscovery } from 'hyperswarm'
import crypto from 'hypercore-crypto'
import ReadyResource from 'ready-resource'
import safetyCatch from 'safety-catch'
import { replicasOf, withDefaults, type Config, type Settings } from './config.js'
import { openStore } from './storage/data-dir-lock.js'
import { StorageHealth } from './storage/storage-health.js'
import { type Peer, delivered } from './connection/peer.js'
import { DEFAULT_LIMITS, encodeAnnouncement, isHexTopic, type Limits } from './protocol/protocol.js'
import { RoomTopics, type TopicSwarm } from './connection/room-topics.js'
import { Rooms } from './storage/rooms.js'
import { retentionOn, type RetentionPolicy } from './storage/retention.js'
import { Pruner } from './storage/pruner.js'
import { StateFile, type PersistentState, type RoomState } from './storage/state-file.js'
import { StateSaver } from './storage/state-saver.js'
import { RoomUpkeep } from './storage/room-upkeep.js'
import { WalSync } from './storage/wal-sync.js'
import { SWARM_KEY_PAIR } from './cluster/cluster.js'
import { ClusterRooms } from './cluster/cluster-rooms.js'
import type { ControlLogStatus } from './cluster/failover.js'
import { Connections } from './connection/connections.js'
import { RELAY_KEY_PAIR, Relay } from './connection/relay.js'
import { RoomWriter } from './storage/room-writer.js'
import { newChallenge } from 'root-peer-client/protocol'
import { busiest, createCounters, largest, type Counters, type StatsSnapshot } from './monitor/stats.js'

/** The daemon's settings (see config.ts; unset ones take their default) and what only a library user passes. */
export type RootPeerOptions = Partial<Config> & {
  storageDir: string
  limits?: Partial<Limits>
  onLatency?: (kind: 'append' | 'sync', seconds: number) => void
}

export interface Health {
  ok: boolean
  reasons: string[]
  storage: boolean
  discovery: boolean
  dht: boolean
  // a member down does not make the root peer unhealthy
  cluster?: Array<{ publicKey: string, connected: boolean }>
  /** with automatic failover: the control log's entries, how many are final, and whether this member may write */
  controlLog?: ControlLogStatus
}

// how long shutdown waits for peers to read their last frames before the swarm is destroyed
const CLOSE_CONNECTIONS_TIMEOUT = 2000
// how long shutdown waits for DHT nodes to answer its unannounces before it destroys the DHT node under them
const UNANNOUNCE_TIMEOUT = 500
const LIMIT_SETTINGS = ['maxFrameBytes', 'maxMessageBytes', 'messagesPerSecond', 'bytesPerSecond', 'syncsPerSecond', 'registersPerMinute', 'newRoomsPerMinute', 'maxFollows'] as const

/**
 * The root peer: keeps end-to-end encrypted rooms available while their members are offline.
 * It opens and wires the parts (the store and rooms, the swarm, the connections, the cluster) and closes them
 * in order; the events are listed in docs/operations.md.
 */
export class ChatRootPeer extends ReadyResource {
  readonly storageDir: string
  readonly settings: Readonly<Omit<Settings, 'storageDir'>>
  readonly limits: Readonly<Limits>
  readonly retention: Readonly<RetentionPolicy>
  readonly counters: Counters = createCounters()
  publicKey: Buffer | null = null
  private readonly discoveryTopic: Buffer
  private readonly stateFile: StateFile
  private readonly saver: StateSaver
  private readonly storage: StorageHealth
  private readonly walSync: WalSync | null
  private readonly pruner: Pruner | null
  private readonly topics: RoomTopics
  private readonly upkeep: RoomUpkeep
  private readonly writer: RoomWriter
  private readonly connections: Connections
  private readonly inflight = new Set<Promise<unknown>>()
  private store: Corestore | null = null
  private rooms: Rooms | null = null
  private swarm: Hyperswarm | null = null
  private discovery: PeerDiscovery | null = null
  private cluster: ClusterRooms | null = null
  /** the blind relay (null with RELAY=false, and before ready) */
  relay: Relay | null = null
  private statsTimer: NodeJS.Timeout | null = null
  private createdAt = 0
  private startedAt = 0
  private announced = false

  constructor (opts: RootPeerOptions) {
    super()
    const s = withDefaults(opts)
    this.storageDir = opts.storageDir
    this.settings = s
    this.discoveryTopic = crypto.hash(Buffer.from(s.discoveryTopic))
    const limits: Partial<Limits> = {}
    for (const key of LIMIT_SETTINGS) if (opts[key] !== undefined) limits[key] = opts[key]
    this.limits = Object.freeze({ ...DEFAULT_LIMITS, ...opts.limits, ...limits })
    this.retention = Object.freeze({ messages: s.retentionMessages, bytes: s.retentionBytes, maxAgeMs: s.retentionAge })
    const onLatency = opts.onLatency ?? null
    const closing = (): boolean => this.closing !== null
    const track = (work: Promise<unknown>): void => this.track(work)

    this.stateFile = new StateFile(opts.storageDir)
    this.saver = new StateSaver({ file: this.stateFile, rooms: () => this.rooms, createdAt: () => this.createdAt, counters: this.counters })
    this.walSync = s.syncWrites ? new WalSync(() => this.store!) : null
    this.storage = new StorageHealth({ dir: opts.storageDir, writeBuffer: s.storageWriteBuffer, reopen: () => this.reopenStorage() })
    this.pruner = retentionOn(this.retention) ? new Pruner(this.retention, () => this.rooms) : null
    this.topics = new RoomTopics({ maxAnnounced: s.maxAnnouncedRooms, idleTimeout: s.roomIdleTimeout })
    // in a cluster no room is removed: the other members hold it too
    const emptyRoomTtl = s.clusterPeers.length > 0 ? 0 : s.emptyRoomTtl
    const isFollowed = (roomName: string): boolean => this.connections.handlers.followers.isFollowed(roomName)
    this.upkeep = new RoomUpkeep({ rooms: () => this.rooms, topics: this.topics, idleTimeout: s.roomIdleTimeout, emptyRoomTtl, isFollowed, counters: this.counters, track })
    this.writer = new RoomWriter({
      rooms: () => this.rooms!,
      storage: this.storage,
      walSync: this.walSync,
      cluster: () => this.cluster,
      pruner: this.pruner,
      counters: this.counters,
      closing,
      onLatency
    })
    this.connections = new Connections({
      limits: this.limits,
      guard: { banThreshold: s.banThreshold, banDuration: s.banDuration, onUnban: peerId => this.swarm?.peers.get(peerId)?.ban(false) },
      inbound: { frameTimeout: s.frameTimeout, maxBufferedBytes: s.maxBufferedBytes },
      maxBatchMessages: s.maxBatchMessages,
      maxPeers: s.maxPeers,
      maxPeersPerHost: s.maxPeersPerHost,
      idleEvictAfter: s.idleEvictAfter,
      firstFrameTimeout: s.firstFrameTimeout,
      stallTimeout: s.stallTimeout,
      counters: this.counters,
      storage: this.storage,
      publicKey: () => this.publicKey!.toString('hex'),
      relayPublicKey: () => this.relay?.publicKey.toString('hex') ?? null,
      closing,
      track,
      handlers: {
        rooms: () => this.rooms!,
        cluster: () => this.cluster,
        writer: this.writer,
        topics: this.topics,
        maxRooms: s.maxRooms,
        maxStorageBytes: s.maxStorageBytes,
        requireSignedRooms: s.requireSignedRooms,
        replicationTimeout: s.replicationTimeout,
        onLatency,
        removeEmptyRoom: () => this.upkeep.removeEmpty()
      }
    })
    this.wireEvents()
  }

  get peers (): ReadonlyMap<string, Peer> {
    return this.connections.peers
  }

  // null before ready; the store is replaced when storage is reopened
  get network (): Hyperswarm | null {
    return this.swarm
  }

  get corestore (): Corestore | null {
    return this.store
  }

  get dhtBootstrapped (): boolean {
    const dht = this.swarm?.dht
    return dht !== undefined && dht.bootstrapped && dht.toArray({ limit: 1 }).length > 0
  }

  /** Rooms followed live now, and of those the ones waiting for their peer to read. */
  get follows (): { open: number, waiting: number } {
    const followers = this.connections.handlers.followers
    return { open: followers.size, waiting: followers.waiting }
  }

  /** Ready: storage open, discovery topic announced, DHT bootstrapped. */
  health (): Health {
    const closing = this.closing !== null
    const failure = this.storage.reason()
    const storage = this.store !== null && this.rooms !== null && !closing && failure === null
    const discovery = this.announced && !closing
    const dht = this.dhtBootstrapped
    const reasons: string[] = []
    if (closing) reasons.push('shutting down')
    else if (failure !== null) reasons.push(failure)
    else if (!storage) reasons.push('storage not open')
    if (!closing && !discovery) reasons.push('discovery topic not announced yet')
    if (!closing && !dht) reasons.push('DHT not bootstrapped')
    const health: Health = { ok: reasons.length === 0, reasons, storage, discovery, dht }
    if (this.cluster !== null) health.cluster = this.cluster.status()
    const controlLog = this.cluster?.failover?.status()
    if (controlLog !== undefined) health.controlLog = controlLog
    return health
  }

  mirrorLag (): Map<string, { blocks: number, seconds: number }> {
    return this.cluster?.mirrorLag() ?? new Map()
  }

  mirroredRooms (): { followed: number, active: number } {
    return this.cluster?.mirroredRooms() ?? { followed: 0, active: 0 }
  }

  replicaLag (): Map<string, number> {
    if (this.cluster === null || this.rooms === null) return new Map()
    return this.cluster.replicaLag([...this.rooms.openRooms()].filter(room => !room.mirrored).map(room => room.core))
  }

  get inboundBytes (): number {
    return this.connections.inbound.total
  }

  get budgets (): { keys: number, hosts: number } {
    return this.connections.guard.remembered
  }

  get pruned (): { messages: number, bytes: number } {
    return { messages: this.rooms?.prunedMessages ?? 0, bytes: this.rooms?.prunedBytes ?? 0 }
  }

  /** The rooms in memory: the open ones and the most recently used (docs/scaling.md). */
  roomList (): Iterable<RoomState> {
    return this.rooms?.recent(Infinity) ?? []
  }

  largestRooms (n: number): Array<{ name: string, bytes: number }> {
    return largest(this.roomList(), n)
  }

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
      busiestRooms: busiest(this.roomList()),
      counters: this.counters
    }
  }

  private wireEvents (): void {
    this.storage.on('storage-failed', e => {
      this.counters.storageFailures++
      this.emit('storage-failed', e)
    })
    this.storage.on('storage-recovery-failed', err => this.emit('storage-recovery-failed', err))
    this.storage.on('storage-recovered', () => {
      this.emit('storage-recovered')
      this.saver.save()
    })
    this.pruner?.on('room-pruned', e => this.emit('room-pruned', e))
    this.pruner?.on('prune-error', e => this.emit('prune-error', e))
    this.saver.on('state-saved', () => this.emit('state-saved'))
    this.saver.on('state-save-error', err => this.emit('state-save-error', err))
    this.upkeep.on('room-removed', e => {
      this.emit('room-removed', e)
      this.saver.noteChange()
    })
    this.upkeep.on('append-error', e => this.emit('append-error', e))
    this.writer.on('message-stored', e => {
      this.emit('message-stored', e)
      this.saver.noteChange()
    })
    this.writer.on('append-error', e => this.emit('append-error', e))
    this.connections.on('peer-connected', id => this.emit('peer-connected', id))
    this.connections.on('peer-disconnected', id => this.emit('peer-disconnected', id))
    this.connections.on('peer-refused', (id, err) => this.emit('peer-refused', id, err))
    this.connections.on('peer-stalled', id => this.emit('peer-stalled', id))
    this.connections.on('peer-idle', (id, err) => this.emit('peer-idle', id, err))
    this.connections.on('peer-dropped', (id, err) => this.emit('peer-dropped', id, err))
    this.connections.on('frame-refused', (id, err) => this.emit('frame-refused', id, err))
    this.connections.on('peer-banned', id => {
      // a banned key loses its relay connections too: the ban is the key's, not its chat connection's
      this.relay?.ban(id)
      this.emit('peer-banned', id)
    })
    this.connections.handlers.on('room-registered', e => this.emit('room-registered', e))
  }

  protected override async _open (): Promise<void> {
    try {
      await this.start()
    } catch (err) {
      // ready-resource closes only what opened: a half-open root peer lets go of its store and swarm here
      await this._close().catch(safetyCatch)
      throw err
    }
  }

  private async start (): Promise<void> {
    // the store is the data dir's lock: a dir another process holds is refused before anything in it is touched
    const store = await this.openStore()
    const keyPair = await store.createKeyPair(SWARM_KEY_PAIR)
    this.publicKey = keyPair.publicKey

    const loaded = await this.stateFile.load()
    const recovered = await this.openRooms(loaded.state)
    const rooms = this.rooms!
    // the rooms the last state file listed (the most recently active) are in memory again, a bounded read
    await rooms.warm(Object.keys(loaded.state?.rooms ?? {}))
    // a missing file on a fresh data dir is no news; a missing file beside stored rooms is
    if (loaded.problem !== null && (loaded.problem !== 'missing' || recovered > 0 || rooms.size > 0 || loaded.fromPrevious)) {
      const { problem, movedTo, fromPrevious } = loaded
      this.emit('state-file-recovered', { problem, movedTo, fromPrevious, rooms: rooms.size, messages: rooms.totalMessages })
    }
    this.upkeep.announceRecent(rooms)
    this.createdAt = loaded.state?.rootPeerCreatedAt || Date.now()

    const { bootstrap, dhtHost, dhtPort, clusterPeers } = this.settings
    const dht = new HyperDHT({ ...(bootstrap !== null ? { bootstrap } : {}), host: dhtHost, ...(dhtPort !== null ? { port: dhtPort } : {}), keyPair })
    // the daemon enforces maxPeers itself, with an answer; Hyperswarm's own cap is for outgoing connections
    this.swarm = new Hyperswarm({
      dht,
      keyPair,
      maxPeers: this.settings.maxPeers + 1 + clusterPeers.length,
      // a banned key is refused at the handshake, before it costs a stream
      firewall: remotePublicKey => this.connections.guard.isBanned(remotePublicKey.toString('hex'))
    })
    if (this.settings.relay) await this.openRelay(dht, await store.createKeyPair(RELAY_KEY_PAIR))
    this.swarm.on('connection', (conn: NoiseStream) => this.onConnection(conn))
    if (clusterPeers.length > 0) this.openCluster(this.swarm)
    this.discovery = this.swarm.join(this.discoveryTopic, { server: true, client: false })
    this.topics.attach(topicSwarm(this.swarm))

    // an unreachable DHT does not hold back ready; these report when it comes
    dht.fullyBootstrapped().then(() => {
      if (this.closing === null) this.emit('dht-bootstrapped', { nodes: dht.toArray().length })
    }, safetyCatch)
    this.discovery.flushed().then(() => {
      this.announced = true
      if (this.closing === null) this.emit('discovery-announced')
    }, err => {
      if (this.closing === null) this.emit('discovery-error', err)
    })

    if (this.settings.statsInterval > 0) {
      this.statsTimer = setInterval(() => {
        this.saver.save()
        this.emit('stats', this.stats())
      }, this.settings.statsInterval)
      this.statsTimer.unref()
    }
    this.upkeep.start()
    this.pruner?.start()
    this.startedAt = Date.now()
    await this.saver.save()
  }

  protected override async _close (): Promise<void> {
    this.emit('closing')
    if (this.statsTimer !== null) clearInterval(this.statsTimer)
    this.saver.close()
    this.upkeep.close()
    this.storage.close()
    if (this.storage.reopening !== null) await this.storage.reopening.catch(safetyCatch)
    this.topics.close()
    this.connections.close()

    // frames accepted before the signal finish, and their acks go out; later frames get SHUTTING_DOWN
    while (this.inflight.size > 0) await Promise.allSettled([...this.inflight])
    if (this.pruner !== null) await this.pruner.close()
    if (this.cluster !== null) await this.cluster.close()
    if (this.rooms !== null) await this.rooms.settled()
    await this.saver.save()

    await Promise.all([...this.peers.values()].map(peer => delivered(peer.conn, CLOSE_CONNECTIONS_TIMEOUT)))
    // a node that does not answer is not waited for: the records it holds expire by themselves
    const cut = this.swarm === null ? null : setTimeout(destroyDht, UNANNOUNCE_TIMEOUT, this.swarm.dht)
    if (this.relay !== null) await this.relay.close()
    if (this.swarm !== null) await this.swarm.destroy()
    if (cut !== null) clearTimeout(cut)
    if (this.rooms !== null) await this.rooms.close()
    if (this.walSync !== null) await this.walSync.close()
    if (this.store !== null) await this.store.close()
    await this.stateFile.flushed()
  }

  private async openStore (): Promise<Corestore> {
    this.store = await openStore(this.storageDir, { writeBufferSize: this.settings.storageWriteBuffer })
    return this.store
  }

  private async openRooms (saved: PersistentState | null): Promise<number> {
    const rooms = new Rooms(this.store!, { maxOpen: this.settings.maxOpenRooms, onBatch: () => { this.counters.appendBatches++ } })
    rooms.on('index-recovered', ({ name }: { name: string }) => this.emit('room-recovered', { roomName: name }))
    const followers = this.connections.handlers.followers
    rooms.on('grown', (name: string) => followers.grown(name))
    rooms.on('removed', (name: string) => followers.removed(name))
    const recovered = await rooms.load(saved)
    this.rooms = rooms
    return recovered
  }

  private async reopenStorage (): Promise<void> {
    const rooms = this.rooms!
    await rooms.settled()
    await this.cluster?.pause()
    await rooms.close().catch(safetyCatch)
    await this.store!.close().catch(safetyCatch)
    if (this.closing !== null) return
    await this.openStore()
    // the room index has every room: no state file is read to open them again
    await this.openRooms(null)
    // the mirrored rooms are followed again in the new store, and member links start over on it
    this.cluster?.resume()
  }

  private onConnection (conn: NoiseStream): void {
    conn.on('error', (err: Error) => this.emit('peer-error', conn.remotePublicKey.toString('hex'), err))
    if (this.closing !== null) {
      conn.destroy()
      return
    }
    // another root peer of this cluster: replication and the cluster channel instead of client frames
    if (this.cluster?.isMember(conn.remotePublicKey.toString('hex')) === true) this.cluster.attach(conn)
    else this.connections.accept(conn)
  }

  private async openRelay (dht: HyperDHT, keyPair: { publicKey: Buffer, secretKey: Buffer }): Promise<void> {
    const s = this.settings
    this.relay = new Relay({ dht, keyPair, maxPairs: s.relayMaxPairs, maxPairsPerPeer: s.relayMaxPairsPerPeer, maxPairsPerHost: s.relayMaxPairsPerHost,
      pairBytesPerSecond: s.relayPairBytesPerSecond, peerBytesPerSecond: s.relayPeerBytesPerSecond, hostBytesPerSecond: s.relayHostBytesPerSecond,
      bytesPerSecond: s.relayBytesPerSecond, emptyPairTimeout: s.relayEmptyPairTimeout,
      isBanned: key => this.connections.guard.isBanned(key) })
    await this.relay.ready()
  }

  private openCluster (swarm: Hyperswarm): void {
    const s = this.settings
    const cluster = new ClusterRooms({
      self: this.publicKey!.toString('hex'),
      members: s.clusterPeers,
      swarm,
      store: () => this.store!,
      rooms: () => this.rooms!,
      maxRooms: s.maxRooms,
      maxOpenRooms: s.maxOpenRooms,
      roomIdleTimeout: s.roomIdleTimeout,
      minMirrors: s.minMirrors,
      replicas: replicasOf(s),
      timeout: s.replicationTimeout,
      failoverAfter: s.failoverAfter,
      announcement: () => JSON.stringify(encodeAnnouncement(this.publicKey!.toString('hex'), this.limits, newChallenge())),
      onWrite: write => this.connections.handlers.onForwardedWrite(write),
      onRead: read => this.connections.handlers.onForwardedRead(read)
    })
    cluster.on('member-connected', member => this.emit('member-connected', member))
    cluster.on('member-disconnected', member => this.emit('member-disconnected', member))
    cluster.on('member-error', (member, err) => this.emit('member-error', member, err))
    cluster.on('room-mirrored', e => this.emit('room-mirrored', e))
    cluster.on('room-conflict', e => this.emit('room-conflict', e))
    cluster.on('cluster-error', e => this.emit('cluster-error', e))
    cluster.on('room-claimed', e => this.emit('room-claimed', e))
    cluster.on('room-taken-over', e => this.emit('room-taken-over', e))
    cluster.on('room-followed', e => this.emit('room-followed', e))
    cluster.on('failover-error', err => this.emit('failover-error', err))
    cluster.on('log-error', err => this.emit('log-error', err))
    this.cluster = cluster
    cluster.start()
  }

  private track (promise: Promise<unknown>): void {
    const done = (): void => { this.inflight.delete(p) }
    const p: Promise<unknown> = promise.then(done, done)
    this.inflight.add(p)
  }
}

/** A room's topic: the name itself when it is 64 hex (what clients join), else its hash. */
export function roomTopic (name: string): Buffer {
  return isHexTopic(name) ? Buffer.from(name, 'hex') : crypto.hash(Buffer.from(name))
}

function destroyDht (dht: HyperDHT): void {
  dht.destroy({ force: true }).catch(safetyCatch)
}

function topicSwarm (swarm: Hyperswarm): TopicSwarm {
  return {
    join: name => { swarm.join(roomTopic(name), { server: true, client: false }) },
    leave: name => { swarm.leave(roomTopic(name)).catch(safetyCatch) }
  }
}
