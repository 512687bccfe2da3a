import type Corestore from 'corestore'
import HypercoreStats from 'hypercore-stats'
import HyperswarmStats, { type PromClient } from 'hyperswarm-stats'
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics, type CounterConfiguration, type GaugeConfiguration } from 'prom-client'
import type { ChatRootPeer } from '../root-peer.js'
import { dhtLocalAddress } from './dht-address.js'
import { largest, namedRooms } from './stats.js'

// seconds: appends are group-committed, so most land in the low milliseconds
const LATENCY_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5]
const TOP_ROOMS = 20

// the stats modules register five gauges named like counters, which Prometheus' conventions (promtool check metrics)
// refuse: the three that only ever grow become counters under their names, the two levels lose `_total`
const STACK_COUNTERS = new Set(['dht_holepunch_try_later_total', 'dht_holepunch_try_later_relayed_handshakes_total', 'udx_packets_dropped_total'])
const STACK_RENAMED = new Map([['hypercore_sessions_total', 'hypercore_sessions'], ['hypercore_global_cache_entries_total', 'hypercore_global_cache_entries']])
// prom-client's default metrics have three such gauges, each the sum of its per-type gauge (`nodejs_active_handles{type}` ...)
const DEFAULT_SUMS = ['nodejs_active_handles_total', 'nodejs_active_requests_total', 'nodejs_active_resources_total']

type Read<T> = (rootPeer: ChatRootPeer) => T

/** A root peer's metrics, read from its counters when scraped, and hyperswarm-stats' and hypercore-stats'. */
export class Metrics {
  readonly registry = new Registry()
  readonly contentType = this.registry.contentType
  private rootPeer: ChatRootPeer | null = null
  private readonly appendLatency: Histogram
  private readonly syncLatency: Histogram
  private coreStats: HypercoreStats | null = null
  private readonly coreMetrics: string[] = []

  constructor () {
    collectDefaultMetrics({ register: this.registry })
    for (const name of DEFAULT_SUMS) this.registry.removeSingleMetric(name)
    this.single(Gauge, 'root_peer_rooms', 'Rooms known to the root peer', rp => rp.roomCounts.total)
    this.single(Gauge, 'root_peer_rooms_open', 'Rooms whose core is open now', rp => rp.roomCounts.open)
    this.single(Gauge, 'root_peer_inbound_buffered_bytes', 'Bytes of incoming frames held now for all connections (half-received and queued); at most MAX_BUFFERED_BYTES', rp => rp.inboundBytes)
    this.single(Gauge, 'root_peer_messages', 'Messages stored, all rooms (the cores\' lengths)', rp => rp.stats().totalMessages)
    this.single(Gauge, 'root_peer_stored_bytes', 'Bytes of stored message blocks, all rooms', rp => rp.roomCounts.bytes)
    this.single(Gauge, 'root_peer_peers', 'Client connections open now (admitted; cluster members not counted)', rp => rp.peers.size)
    this.single(Gauge, 'root_peer_follows', 'Rooms followed live now (follow frames), all connections; each connection at most MAX_FOLLOWS', rp => rp.follows.open)
    this.single(Gauge, 'root_peer_follows_waiting', 'Follows paused now because their peer has not read what was sent (they resume from their index)', rp => rp.follows.waiting)
    this.single(Gauge, 'root_peer_healthy', '1 when /health answers 200 (storage open, discovery announced, DHT bootstrapped), else 0', rp => rp.health().ok ? 1 : 0)
    this.single(Counter, 'root_peer_messages_stored_total', 'Messages stored since the process started (duplicates not counted)', rp => rp.counters.messagesStored)
    this.single(Counter, 'root_peer_duplicate_messages_total', 'Messages whose id was already stored, acked without storing them again', rp => rp.counters.duplicates)
    this.single(Counter, 'root_peer_peer_connections_total', 'Client connections admitted since the process started', rp => rp.counters.peersConnected)
    this.single(Counter, 'root_peer_peer_disconnections_total', 'Admitted client connections closed since the process started', rp => rp.counters.peersDisconnected)
    this.single(Counter, 'root_peer_state_saves_total', 'State file saves that succeeded', rp => rp.counters.stateSaves)
    this.single(Counter, 'root_peer_state_save_failures_total', 'State file saves that failed', rp => rp.counters.stateSaveFailures)
    this.single(Counter, 'root_peer_bans_total', 'Peers disconnected and banned for too many refused frames', rp => rp.counters.bans)
    this.single(Counter, 'root_peer_idle_disconnects_total', 'Peers disconnected for sending no valid frame (FIRST_FRAME_TIMEOUT, or making room at MAX_PEERS)', rp => rp.counters.idleDisconnects)
    this.single(Counter, 'root_peer_stalled_peers_total', 'Peers disconnected for leaving the root peer\'s writes unread past STALL_TIMEOUT', rp => rp.counters.stalledPeers)
    this.single(Counter, 'root_peer_pruned_messages_total', 'Messages pruned by retention since the process started', rp => rp.pruned.messages)
    this.single(Counter, 'root_peer_pruned_bytes_total', 'Message bytes reclaimed by retention since the process started', rp => rp.pruned.bytes)
    this.labelled(Gauge, 'root_peer_room_bytes', `Message bytes held, for each of the ${TOP_ROOMS} rooms that hold the most (signed rooms are not named)`, 'room',
      rp => largest(namedRooms(rp.roomList()), TOP_ROOMS).map(r => [r.name, r.bytes]))
    this.single(Counter, 'root_peer_storage_failures_total', 'Times writes started failing (disk full, read-only disk, I/O error)', rp => rp.counters.storageFailures)
    this.single(Gauge, 'root_peer_cluster_members_connected', 'Other cluster members (CLUSTER_PEERS) connected now', rp => rp.health().cluster?.filter(m => m.connected).length ?? 0)
    this.single(Counter, 'root_peer_forwarded_writes_total', 'Messages this member forwarded to their room\'s primary and acked', rp => rp.counters.forwardedWrites)
    this.labelled(Gauge, 'root_peer_mirror_lag_blocks', 'Blocks of a primary cluster member\'s rooms that some member (the primary or another mirror) holds and this member (a mirror) has not stored yet, asleep or not, by primary', 'primary',
      rp => [...rp.mirrorLag()].map(([primary, { blocks }]) => [primary, blocks]))
    this.labelled(Gauge, 'root_peer_mirror_lag_seconds', 'Seconds since this member (a mirror) fell behind another member on a room of a primary cluster member (the oldest such room), by primary; 0 when caught up', 'primary',
      rp => [...rp.mirrorLag()].map(([primary, { seconds }]) => [primary, seconds]))
    this.single(Gauge, 'root_peer_mirrored_rooms_active', 'Mirrored rooms this member follows actively now (a downloading session); the others sleep until their core grows', rp => rp.mirroredRooms().active)
    this.labelled(Gauge, 'root_peer_replica_lag_blocks', 'Blocks of this member\'s own open rooms that a mirror has not announced as stored, by mirror', 'mirror',
      rp => rp.replicaLag())
    this.labelled(Counter, 'root_peer_frames_received_total', 'Frames received, by type (`invalid`: not decodable)', 'type', rp => Object.entries(rp.counters.framesReceived))
    this.labelled(Counter, 'root_peer_frames_sent_total', 'Frames sent, by type', 'type', rp => Object.entries(rp.counters.framesSent))
    this.labelled(Counter, 'root_peer_errors_total', 'Refusals and failures, by error code', 'code', rp => Object.entries(rp.counters.errors))
    this.labelled(Counter, 'root_peer_dropped_peers_total', 'Connections dropped by the inbound budget, by reason (frame-too-large, frame-timeout, buffer-full)', 'reason', rp => Object.entries(rp.counters.droppedPeers))
    this.labelled(Counter, 'root_peer_rooms_removed_total', 'Empty rooms removed, by reason (expired, evicted)', 'reason', rp => Object.entries(rp.counters.roomsRemoved))
    this.labelled(Counter, 'root_peer_pages_read_ahead_total', 'Catch-up pages read while the page before was on the wire, by outcome (used: served to the request they were read for; unused: dropped)', 'outcome',
      rp => [['used', rp.counters.pagesReadAhead], ['unused', rp.counters.pagesReadAheadUnused]])
    this.single(Gauge, 'root_peer_relay_pairs', 'Pairs the blind relay joins now (at most RELAY_MAX_PAIRS)', rp => rp.relay?.pairsOpen ?? 0)
    this.single(Gauge, 'root_peer_relay_connections', 'Connections to the blind relay\'s key open now (at most 2 x RELAY_MAX_PAIRS)', rp => rp.relay?.connections ?? 0)
    this.single(Counter, 'root_peer_relay_pairs_total', 'Pairs the blind relay has joined since the process started', rp => rp.relay?.counters.pairsOpened ?? 0)
    this.single(Counter, 'root_peer_relay_bytes_total', 'Bytes the blind relay forwarded, both ways (read every 50 ms and when a pair closes)', rp => rp.relay?.counters.bytes ?? 0)
    this.labelled(Counter, 'root_peer_relay_refusals_total', 'Relay connections and pair requests refused, and pairs closed, by reason (connections, host-connections, pairs, peer-pairs, host-pairs, pair-bytes, peer-bytes, host-bytes, bytes, empty, idle, banned)', 'reason',
      rp => Object.entries(rp.relay?.counters.refusals ?? {}))
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

  /** The swarm and the store are measured from the root peer's `ready` on (at once if it is ready). */
  attach (rootPeer: ChatRootPeer): void {
    this.rootPeer = rootPeer
    if (rootPeer.network !== null) this.measureStack(rootPeer)
    else rootPeer.once('ready', () => this.measureStack(rootPeer))
    rootPeer.on('storage-recovered', () => {
      if (!rootPeer.closing && rootPeer.corestore !== null) this.measureStore(rootPeer.corestore)
    })
  }

  text (): Promise<string> {
    // hypercore-stats caches its totals for 5 s, so that a scrape reads one snapshot: each scrape takes a new one
    this.coreStats?.bustCache()
    return this.registry.metrics()
  }

  private measureStack (rootPeer: ChatRootPeer): void {
    const swarmStats = new HyperswarmStats(rootPeer.network!)
    // hyperdht-stats reports the machine's interface address even when DHT_HOST binds the socket elsewhere
    swarmStats.dhtStats.getLocalAddress = () => dhtLocalAddress(rootPeer.network!.dht)
    swarmStats.registerPrometheusMetrics(this.promClient([]))
    this.measureStore(rootPeer.corestore!)
  }

  /** A reopened storage is a new Corestore: its gauges replace the closed store's, which let its cores go. */
  private measureStore (store: Corestore): void {
    for (const name of this.coreMetrics.splice(0)) this.registry.removeSingleMetric(name)
    this.coreStats = HypercoreStats.fromCorestore(store)
    this.coreStats.registerPrometheusMetrics(this.promClient(this.coreMetrics))
  }

  /**
   * prom-client as the stats modules use it, but registering on this registry, not the process-wide default, and
   * with their names made conventional (STACK_COUNTERS, STACK_RENAMED).
   */
  private promClient (names: string[]): PromClient {
    const registry = this.registry
    return {
      Gauge: class {
        // a constructor's returned object is what `new` gives: the module gets the metric its collect() will set
        constructor (config: GaugeConfiguration<string>) {
          const name = STACK_RENAMED.get(config.name) ?? config.name
          names.push(name)
          const conf = { ...config, name, registers: [registry] }
          return STACK_COUNTERS.has(name) ? new SetCounter(conf as CounterConfiguration<string>) : new Gauge(conf)
        }
      }
    }
  }

  // a counter mirrors a count the root peer keeps: reset and set to it at each scrape, like a gauge
  private single (Metric: typeof Gauge | typeof Counter, name: string, help: string, read: Read<number>): void {
    const self = this
    new (Metric as typeof Gauge)({
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

  /** Its series are replaced at each scrape, so a room or member gone leaves no stale one. */
  private labelled (Metric: typeof Gauge | typeof Counter, name: string, help: string, label: string, read: Read<Iterable<[string, number]>>): void {
    const self = this
    new (Metric as typeof Gauge)({
      name,
      help,
      labelNames: [label],
      registers: [this.registry],
      collect () {
        if (self.rootPeer === null) return
        this.reset()
        for (const [value, n] of read(self.rootPeer)) this.inc({ [label]: value }, n)
      }
    })
  }
}

/** A counter of a running count kept elsewhere: `set` to it when scraped, as the stats modules set their gauges. */
class SetCounter extends Counter {
  set (value: number): void {
    this.reset()
    this.inc(value)
  }
}
