import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client'
import type { ChatRootPeer } from '../root-peer.js'
import { largest, namedRooms } from './stats.js'

/** Seconds; appends are group-committed, so most land in the low milliseconds. */
const LATENCY_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5]

type Read<T> = (rootPeer: ChatRootPeer) => T

/**
 * The Prometheus metrics of one root peer. Values are read from the root peer's counters when
 * scraped; only the latency histograms are fed as things happen, through `onLatency`.
 * Create it before the root peer (to pass `onLatency`), then `attach` the root peer.
 */
/** Rooms with a series of their own in root_peer_room_bytes. */
const TOP_ROOMS = 20

export class Metrics {
  readonly registry = new Registry()
  readonly contentType = this.registry.contentType
  private rootPeer: ChatRootPeer | null = null
  private readonly appendLatency: Histogram
  private readonly syncLatency: Histogram

  constructor () {
    collectDefaultMetrics({ register: this.registry })
    this.gauge('root_peer_rooms', 'Rooms known to the root peer', rp => rp.roomCounts.total)
    this.gauge('root_peer_rooms_open', 'Rooms whose core is open now', rp => rp.roomCounts.open)
    this.gauge('root_peer_inbound_buffered_bytes', 'Bytes of incoming frames held now for all connections (half-received and queued); at most MAX_BUFFERED_BYTES', rp => rp.inboundBytes)
    this.gauge('root_peer_messages', 'Messages stored, all rooms (the cores\' lengths)', rp => rp.stats().totalMessages)
    this.gauge('root_peer_stored_bytes', 'Bytes of stored message blocks, all rooms', rp => rp.roomCounts.bytes)
    this.gauge('root_peer_peers', 'Peer connections open now', rp => rp.peers.size)
    this.gauge('root_peer_dht_bootstrapped', '1 when the DHT has bootstrapped (found at least one node), else 0', rp => rp.dhtBootstrapped ? 1 : 0)
    this.gauge('root_peer_healthy', '1 when /health answers 200 (storage open, discovery announced, DHT bootstrapped), else 0', rp => rp.health().ok ? 1 : 0)
    this.counter('root_peer_messages_stored_total', 'Messages stored since the process started (duplicates not counted)', rp => rp.counters.messagesStored)
    this.counter('root_peer_duplicate_messages_total', 'Messages whose id was already stored, acked without storing them again', rp => rp.counters.duplicates)
    this.counter('root_peer_peer_connections_total', 'Peer connections accepted since the process started', rp => rp.counters.peersConnected)
    this.counter('root_peer_peer_disconnections_total', 'Peer connections closed since the process started', rp => rp.counters.peersDisconnected)
    this.counter('root_peer_state_saves_total', 'State file saves that succeeded', rp => rp.counters.stateSaves)
    this.counter('root_peer_state_save_failures_total', 'State file saves that failed', rp => rp.counters.stateSaveFailures)
    this.counter('root_peer_bans_total', 'Peers disconnected and banned for too many refused frames', rp => rp.counters.bans)
    this.counter('root_peer_idle_disconnects_total', 'Peers disconnected for sending no valid frame (FIRST_FRAME_TIMEOUT, or making room at MAX_PEERS)', rp => rp.counters.idleDisconnects)
    this.counter('root_peer_stalled_peers_total', 'Peers disconnected for leaving the root peer\'s writes unread past STALL_TIMEOUT', rp => rp.counters.stalledPeers)
    this.counter('root_peer_pruned_messages_total', 'Messages pruned by retention since the process started', rp => rp.pruned.messages)
    this.counter('root_peer_pruned_bytes_total', 'Message bytes reclaimed by retention since the process started', rp => rp.pruned.bytes)
    this.labelledGauge('root_peer_room_bytes', `Message bytes held, for each of the ${TOP_ROOMS} rooms that hold the most (signed rooms are not named)`, 'room',
      rp => largest(namedRooms(rp.roomList()), TOP_ROOMS).map(r => [r.name, r.bytes]))
    this.counter('root_peer_storage_failures_total', 'Times writes started failing (disk full, read-only disk, I/O error)', rp => rp.counters.storageFailures)
    this.gauge('root_peer_cluster_members_connected', 'Other cluster members (CLUSTER_PEERS) connected now', rp => rp.health().cluster?.filter(m => m.connected).length ?? 0)
    this.counter('root_peer_forwarded_writes_total', 'Messages this member forwarded to their room\'s primary and acked', rp => rp.counters.forwardedWrites)
    // replication lag: as a mirror, per primary (blocks and seconds); as a primary, per mirror (blocks)
    this.labelledGauge('root_peer_mirror_lag_blocks', 'Blocks a primary cluster member has announced that this member (its mirror) has not stored yet, by primary', 'primary',
      rp => [...rp.mirrorLag()].map(([primary, { blocks }]) => [primary, blocks]))
    this.labelledGauge('root_peer_mirror_lag_seconds', 'Seconds since this member (a mirror) fell behind a primary cluster member, by primary; 0 when caught up', 'primary',
      rp => [...rp.mirrorLag()].map(([primary, { seconds }]) => [primary, seconds]))
    this.gauge('root_peer_mirrored_rooms_active', 'Mirrored rooms this member follows actively now (a downloading session); the others sleep until their core grows', rp => rp.mirroredRooms().active)
    this.labelledGauge('root_peer_replica_lag_blocks', 'Blocks of this member\'s own open rooms that a mirror has not announced as stored, by mirror', 'mirror',
      rp => rp.replicaLag())
    this.labelled('root_peer_frames_received_total', 'Frames received, by type (`invalid`: not decodable)', 'type', rp => rp.counters.framesReceived)
    this.labelled('root_peer_frames_sent_total', 'Frames sent, by type', 'type', rp => rp.counters.framesSent)
    this.labelled('root_peer_errors_total', 'Refusals and failures, by error code', 'code', rp => rp.counters.errors)
    this.labelled('root_peer_dropped_peers_total', 'Connections dropped by the inbound budget, by reason (frame-too-large, frame-timeout, buffer-full)', 'reason', rp => rp.counters.droppedPeers)
    this.labelled('root_peer_rooms_removed_total', 'Empty rooms removed, by reason (expired, evicted)', 'reason', rp => rp.counters.roomsRemoved)
    this.appendLatency = new Histogram({
      name: 'root_peer_append_latency_seconds',
      help: 'Seconds from a message frame to its message being stored',
      buckets: LATENCY_BUCKETS,
      registers: [this.registry]
    })
    this.syncLatency = new Histogram({
      name: 'root_peer_sync_latency_seconds',
      help: 'Seconds from a sync-request to its answer being sent',
      buckets: LATENCY_BUCKETS,
      registers: [this.registry]
    })
  }

  /** Pass as the `onLatency` option of ChatRootPeer. */
  readonly onLatency = (kind: 'append' | 'sync', seconds: number): void => {
    (kind === 'append' ? this.appendLatency : this.syncLatency).observe(seconds)
  }

  attach (rootPeer: ChatRootPeer): void {
    this.rootPeer = rootPeer
  }

  /** The Prometheus text exposition of every metric. */
  text (): Promise<string> {
    return this.registry.metrics()
  }

  private gauge (name: string, help: string, read: Read<number>): void {
    const self = this
    new Gauge({
      name,
      help,
      registers: [this.registry],
      collect () {
        if (self.rootPeer !== null) this.set(read(self.rootPeer))
      }
    })
  }

  /** A gauge with one label, its series replaced at each scrape by the pairs `read` gives. */
  private labelledGauge (name: string, help: string, label: string, read: Read<Iterable<[string, number]>>): void {
    const self = this
    new Gauge({
      name,
      help,
      labelNames: [label],
      registers: [this.registry],
      collect () {
        if (self.rootPeer === null) return
        this.reset()
        for (const [value, n] of read(self.rootPeer)) this.set({ [label]: value }, n)
      }
    })
  }

  /** A counter mirroring a plain counter of the root peer. */
  private counter (name: string, help: string, read: Read<number>): void {
    const self = this
    new Counter({
      name,
      help,
      registers: [this.registry],
      collect () {
        if (self.rootPeer === null) return
        this.reset()
        this.inc(read(self.rootPeer))
      }
    })
  }

  /** A counter with one label, mirroring a `Record<label value, count>` of the root peer. */
  private labelled (name: string, help: string, label: string, read: Read<Record<string, number>>): void {
    const self = this
    new Counter({
      name,
      help,
      labelNames: [label],
      registers: [this.registry],
      collect () {
        if (self.rootPeer === null) return
        this.reset()
        for (const [value, count] of Object.entries(read(self.rootPeer))) this.inc({ [label]: value }, count)
      }
    })
  }
}
