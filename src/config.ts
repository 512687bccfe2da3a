import { isIP } from 'node:net'
import path from 'node:path'
import { DEFAULT_LIMITS } from './protocol/protocol.js'
import { autoMaxRooms } from './storage/disk.js'
import { DEFAULT_DISCOVERY_TOPIC, parseBootstrap, type BootstrapNode } from 'root-peer-client/protocol'

export { DEFAULT_DISCOVERY_TOPIC, type BootstrapNode }

/** A setting an operator got wrong; the entry point prints `message` and exits 2. */
export class ConfigError extends Error {
  readonly setting: string
  constructor (setting: string, message: string) {
    super(message)
    this.name = 'ConfigError'
    this.setting = setting
  }
}

interface Setting<T> {
  env: string
  flag: string
  default: string
  help: string
  parse: (value: string, name: string) => T
}

function setting<T> (env: string, flag: string, value: string, help: string, parse: (value: string, name: string) => T): Setting<T> {
  return { env, flag, default: value, help, parse }
}

/** The member link timeout (src/cluster/cluster.ts): a failover cannot be decided before a dead primary's link drops. */
export const MIN_FAILOVER_AFTER = 3000

const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']

// The one place a setting is described: Config, the defaults, --help and the docs' table come from it.
const TABLE = {
  storageDir: setting('STORAGE_DIR', '--storage', './root-peer-storage', 'data dir', parseDir),
  syncWrites: setting('SYNC_WRITES', '--sync-writes', 'false', 'fsync storage before each ack, so acked messages survive a power loss too (true or false)', parseBoolean),
  bootstrap: setting('DHT_BOOTSTRAP', '--bootstrap', '', 'comma-separated host:port DHT bootstrap nodes (default: the public DHT)', parseBootstrapSetting),
  dhtHost: setting('DHT_HOST', '--dht-host', '0.0.0.0', 'address the DHT socket binds (127.0.0.1 on a loopback testnet)', parseHost),
  dhtPort: setting('DHT_PORT', '--dht-port', '', 'UDP port of the DHT socket (default: 49737 or the next free)', parsePort),
  discoveryTopic: setting('DISCOVERY_TOPIC', '--discovery-topic', DEFAULT_DISCOVERY_TOPIC, 'string whose BLAKE2b-256 hash is the discovery topic', parseNonEmpty),
  logLevel: setting('LOG_LEVEL', '--log-level', 'info', `pino level: ${LOG_LEVELS.join(', ')}`, parseLogLevel),
  statsInterval: setting('STATS_INTERVAL', '--stats-interval', '30s', 'stats display period (500ms, 30s, 5m; a bare number is seconds), 0 = off', parseDuration),
  maxPeers: setting('MAX_PEERS', '--max-peers', '1024', 'concurrent peer connections', (v, n) => parseInteger(v, n, 1, 100_000)),
  host: setting('HOST', '--host', '127.0.0.1', 'address the monitoring HTTP server binds (/health, /metrics, /stats, /)', parseHost),
  port: setting('PORT', '--port', '3000', 'port of the monitoring HTTP server; 0 = any free port', (v, n) => parseInteger(v, n, 0, 65535)),
  maxFrameBytes: setting('MAX_FRAME_BYTES', '--max-frame-bytes', bytes(DEFAULT_LIMITS.maxFrameBytes), 'largest frame a peer may send (bytes; KiB/MiB suffixes)', (v, n) => parseBytes(v, n, 1024, 8 * 1024 * 1024)),
  maxMessageBytes: setting('MAX_MESSAGE_BYTES', '--max-message-bytes', bytes(DEFAULT_LIMITS.maxMessageBytes), 'largest message payload (bytes; KiB/MiB suffixes)', (v, n) => parseBytes(v, n, 1, 8 * 1024 * 1024)),
  maxRooms: setting('MAX_ROOMS', '--max-rooms', 'auto', 'rooms the root peer holds in all; auto = as many empty rooms as a quarter of the data dir\'s free disk holds', (v, n) => v.trim() === 'auto' ? null : parseInteger(v, n, 1, 100_000_000)),
  maxOpenRooms: setting('MAX_OPEN_ROOMS', '--max-open-rooms', '256', 'room cores open at once; the least recently used idle room is closed to open another', (v, n) => parseInteger(v, n, 1, 1_000_000)),
  maxAnnouncedRooms: setting('MAX_ANNOUNCED_ROOMS', '--max-announced-rooms', '1000', 'room topics announced on the DHT at once, least recently active left first; 0 = none (clients still find the root peer on the discovery topic)', (v, n) => parseInteger(v, n, 0, 1_000_000)),
  requireSignedRooms: setting('REQUIRE_SIGNED_ROOMS', '--require-signed-rooms', 'false', 'refuse rooms that are not signed rooms (true or false)', parseBoolean),
  retentionMessages: setting('RETENTION_MESSAGES', '--retention-messages', '0', 'most messages a room keeps; older ones are pruned (indices stay); 0 = all', (v, n) => parseInteger(v, n, 0, Number.MAX_SAFE_INTEGER)),
  retentionBytes: setting('RETENTION_BYTES', '--retention-bytes', '0', 'most message bytes a room keeps (KiB/MiB/GiB suffixes); 0 = all', (v, n) => parseBytes(v, n, 0, Number.MAX_SAFE_INTEGER)),
  retentionAge: setting('RETENTION_DAYS', '--retention-days', '0', 'days a message is kept (fractions allowed); 0 = forever', parseDays),
  maxStorageBytes: setting('MAX_STORAGE_BYTES', '--max-storage-bytes', '0', 'message bytes held in all rooms; over it messages are refused with STORAGE_FULL; 0 = no cap', (v, n) => parseBytes(v, n, 0, Number.MAX_SAFE_INTEGER)),
  roomIdleTimeout: setting('ROOM_IDLE_TIMEOUT', '--room-idle-timeout', '5m', 'how long a room may go unused before its core is closed and its topic left', (v, n) => atLeastOneSecond(parseDuration(v, n), n)),
  storageWriteBuffer: setting('STORAGE_WRITE_BUFFER', '--storage-write-buffer', '8MiB', 'RocksDB memtable of the store, held in memory until flushed to disk (Hypercore\'s own default is 64MiB; bytes, KiB/MiB suffixes)', (v, n) => parseBytes(v, n, 1024 * 1024, 1024 * 1024 * 1024)),
  messagesPerSecond: setting('RATE_MESSAGES', '--rate-messages', String(DEFAULT_LIMITS.messagesPerSecond), 'messages a second per peer (burst: 10 s worth); 0 = unlimited', rate),
  bytesPerSecond: setting('RATE_BYTES', '--rate-bytes', bytes(DEFAULT_LIMITS.bytesPerSecond), 'message bytes a second per peer (burst: 10 s worth); 0 = unlimited', (v, n) => parseBytes(v, n, 0, Number.MAX_SAFE_INTEGER)),
  syncsPerSecond: setting('RATE_SYNCS', '--rate-syncs', String(DEFAULT_LIMITS.syncsPerSecond), 'sync-requests a second per peer (burst: 10 s worth); 0 = unlimited', rate),
  registersPerMinute: setting('RATE_REGISTERS', '--rate-registers', String(DEFAULT_LIMITS.registersPerMinute), 'register-room frames a minute per peer (burst: 1 min worth); 0 = unlimited', rate),
  newRoomsPerMinute: setting('RATE_NEW_ROOMS', '--rate-new-rooms', String(DEFAULT_LIMITS.newRoomsPerMinute), 'rooms a peer may create a minute (burst: 1 min worth); 0 = unlimited', rate),
  maxFollows: setting('MAX_FOLLOWS', '--max-follows', String(DEFAULT_LIMITS.maxFollows), 'rooms one connection may follow live at once (follow frames)', (v, n) => parseInteger(v, n, 1, 10_000)),
  maxBatchMessages: setting('MAX_BATCH_MESSAGES', '--max-batch-messages', '100', 'messages one message-batch frame may carry (offered in the announcement; each charges the rates as a message frame does); 0 = not offered', (v, n) => parseInteger(v, n, 0, 10_000)),
  banThreshold: setting('BAN_THRESHOLD', '--ban-threshold', '100', 'refused frames within a minute that get a peer disconnected and banned; 0 = never', (v, n) => parseInteger(v, n, 0, 1_000_000)),
  banDuration: setting('BAN_DURATION', '--ban-duration', '10m', 'how long a banned peer is refused', parseDuration),
  stallTimeout: setting('STALL_TIMEOUT', '--stall-timeout', '30s', 'how long a peer may leave the daemon\'s writes unread before it is disconnected; 0 = never', parseDuration),
  maxBufferedBytes: setting('MAX_BUFFERED_BYTES', '--max-buffered-bytes', '64MiB', 'incoming frame bytes held for all connections together (half-received and queued); past it the connection holding the most is dropped', (v, n) => parseBytes(v, n, 1024 * 1024, 64 * 1024 ** 3)),
  frameTimeout: setting('FRAME_TIMEOUT', '--frame-timeout', '20s', 'how long a peer may take to finish sending a frame it has started before it is disconnected', (v, n) => atLeastOneSecond(parseDuration(v, n), n)),
  firstFrameTimeout: setting('FIRST_FRAME_TIMEOUT', '--first-frame-timeout', '30s', 'how long a new connection may take to send its first valid frame before it is disconnected; 0 = forever', parseDuration),
  maxPeersPerHost: setting('MAX_PEERS_PER_HOST', '--max-peers-per-host', '256', 'connections at once from one IP address; 0 = no cap', (v, n) => parseInteger(v, n, 0, 100_000)),
  idleEvictAfter: setting('IDLE_EVICT_AFTER', '--idle-evict-after', '10s', 'with MAX_PEERS connected, a newcomer takes the place of the peer longest without a valid frame, if that is at least this long; 0 = never', parseDuration),
  emptyRoomTtl: setting('EMPTY_ROOM_TTL', '--empty-room-ttl', '1h', 'how long a room that never stored a message is kept after its last use; 0 = until MAX_ROOMS needs its place', parseDuration),
  relay: setting('RELAY', '--relay', 'true', 'serve as a blind relay for members that cannot reach each other directly, on a key of its own (true or false)', parseBoolean),
  relayMaxPairs: setting('RELAY_MAX_PAIRS', '--relay-max-pairs', '256', 'relayed pairs at once in all (a request waiting for its other side holds half a place)', (v, n) => parseInteger(v, n, 1, 100_000)),
  relayMaxPairsPerPeer: setting('RELAY_MAX_PAIRS_PER_PEER', '--relay-max-pairs-per-peer', '16', 'relay pair requests one public key holds at once, open or waiting', (v, n) => parseInteger(v, n, 1, 100_000)),
  relayMaxPairsPerHost: setting('RELAY_MAX_PAIRS_PER_HOST', '--relay-max-pairs-per-host', '32', 'relayed pairs one IP address holds at once (2 x this many pair requests and relay connections)', (v, n) => parseInteger(v, n, 1, 100_000)),
  relayEmptyPairTimeout: setting('RELAY_EMPTY_PAIR_TIMEOUT', '--relay-empty-pair-timeout', '10s', 'how long a relayed pair may go without a byte from each side before it is closed; 0 = forever', parseDuration),
  relayPeerBytesPerSecond: setting('RELAY_RATE_PEER_BYTES', '--relay-rate-peer-bytes', '256KiB', 'relayed bytes a second one public key sends, across its pairs (burst: 10 s worth, debt carried to its next pairs); 0 = unlimited', (v, n) => parseBytes(v, n, 0, Number.MAX_SAFE_INTEGER)),
  relayHostBytesPerSecond: setting('RELAY_RATE_HOST_BYTES', '--relay-rate-host-bytes', '1MiB', 'relayed bytes a second one IP address sends, across its keys and pairs (burst: 10 s worth, debt carried); 0 = unlimited', (v, n) => parseBytes(v, n, 0, Number.MAX_SAFE_INTEGER)),
  relayPairBytesPerSecond: setting('RELAY_RATE_PAIR_BYTES', '--relay-rate-pair-bytes', '128KiB', 'relayed bytes a second of one pair, both ways (burst: 10 s worth); over it the pair is closed; 0 = unlimited', (v, n) => parseBytes(v, n, 0, Number.MAX_SAFE_INTEGER)),
  relayBytesPerSecond: setting('RELAY_RATE_BYTES', '--relay-rate-bytes', '2MiB', 'relayed bytes a second of all pairs (burst: 10 s worth); over it the busiest pairs are closed and new pairs refused until the debt is paid; 0 = unlimited', (v, n) => parseBytes(v, n, 0, Number.MAX_SAFE_INTEGER)),
  clusterPeers: setting('CLUSTER_PEERS', '--cluster-peers', '', 'comma-separated public keys (64 hex) of the other root peers of this cluster; empty = a single root peer', parseKeys),
  minMirrors: setting('MIN_MIRRORS', '--min-mirrors', '0', 'cluster members besides the primary that must have stored a message before it is acked', (v, n) => parseInteger(v, n, 0, 100)),
  replicas: setting('REPLICAS', '--replicas', 'auto', 'cluster members that hold a copy of each room, chosen by rendezvous hashing (members count this one; at most the members); auto = every member (as before REPLICAS existed) until a member without a copy forwards follows too; a member without a copy forwards the room\'s writes and sync-requests, and refuses follow', (v, n) => v.trim() === 'auto' ? null : parseInteger(v, n, 1, 100)),
  replicationTimeout: setting('REPLICATION_TIMEOUT', '--replication-timeout', '5s', 'how long a write waits for MIN_MIRRORS mirrors (and a forwarded write for its primary) before NOT_REPLICATED', (v, n) => atLeastOneSecond(parseDuration(v, n), n)),
  failoverAfter: setting('FAILOVER_AFTER', '--failover-after', '5s', 'in a cluster of three or more: how long a room\'s primary may be unreachable before a surviving member takes the room over, decided through the control log (at least 3s, the member link timeout); 0 = off', parseFailoverAfter),
  monitorHosts: setting('MONITOR_HOSTS', '--monitor-hosts', '', 'comma-separated host names the monitor answers (IP addresses and localhost always are); other Host headers get 421', parseHostNames),
  monitorToken: setting('MONITOR_TOKEN', '--monitor-token', '', 'bearer token every monitor endpoint but /health requires (16 to 256 printable characters, e.g. openssl rand -hex 32); empty = none', parseToken),
}

export type Config = { [K in keyof typeof TABLE]: ReturnType<(typeof TABLE)[K]['parse']> }

export const SETTINGS = Object.entries(TABLE).map(([key, s]) => ({ key: key as keyof Config, ...s }))

function bytes (n: number): string {
  if (n % (1024 * 1024) === 0) return `${n / (1024 * 1024)}MiB`
  return n % 1024 === 0 ? `${n / 1024}KiB` : String(n)
}

/** Parses flags (`--flag value` or `--flag=value`) over env over defaults. Throws ConfigError. */
export function parseConfig (argv: readonly string[], env: NodeJS.ProcessEnv = process.env): Readonly<Config> {
  const values = new Map<(typeof SETTINGS)[number], string>()
  for (const s of SETTINGS) {
    const fromEnv = env[s.env]
    if (fromEnv !== undefined && fromEnv !== '') values.set(s, fromEnv)
  }
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]
    const eq = arg.indexOf('=')
    const flag = eq === -1 ? arg : arg.slice(0, eq)
    const setting = SETTINGS.find(s => s.flag === flag)
    if (setting === undefined) throw new ConfigError(arg, `unknown option ${JSON.stringify(arg)} (see --help)`)
    let value: string | undefined
    if (eq !== -1) value = arg.slice(eq + 1)
    else value = argv[++i]
    if (value === undefined) throw new ConfigError(setting.flag, `${setting.flag} (${setting.env}) needs a value: ${setting.help}`)
    values.set(setting, value)
  }
  const config: Record<string, unknown> = {}
  for (const s of SETTINGS) {
    const raw = values.get(s) ?? s.default
    const name = `${s.flag} (${s.env})`
    config[s.key] = s.parse(raw, name)
  }
  if ((config.maxMessageBytes as number) > (config.maxFrameBytes as number)) {
    throw new ConfigError('--max-message-bytes', `--max-message-bytes (MAX_MESSAGE_BYTES): ${String(config.maxMessageBytes)} is larger than MAX_FRAME_BYTES (${String(config.maxFrameBytes)}); a message must fit in a frame`)
  }
  if ((config.minMirrors as number) > (config.clusterPeers as string[]).length) {
    throw new ConfigError('--min-mirrors', `--min-mirrors (MIN_MIRRORS): ${String(config.minMirrors)} is more than the ${(config.clusterPeers as string[]).length} other root peers in CLUSTER_PEERS; no message could ever be acked`)
  }
  const members = (config.clusterPeers as string[]).length + 1
  if (config.replicas !== null && (config.replicas as number) > members) {
    throw new ConfigError('--replicas', `--replicas (REPLICAS): ${String(config.replicas)} is more than the ${members} members of the cluster (this root peer and the ${members - 1} in CLUSTER_PEERS); a room cannot live on more members than there are`)
  }
  if ((config.clusterPeers as string[]).length > 0 && (config.minMirrors as number) > replicasOf(config as unknown as Config) - 1) {
    throw new ConfigError('--min-mirrors', `--min-mirrors (MIN_MIRRORS): ${String(config.minMirrors)} is more than the ${replicasOf(config as unknown as Config) - 1} other members that hold each room (REPLICAS ${String(replicasOf(config as unknown as Config))}); no message could ever be acked`)
  }
  if ((config.clusterPeers as string[]).length > 0) {
    const retention = SETTINGS.find(s => ['retentionMessages', 'retentionBytes', 'retentionAge'].includes(s.key) && (config[s.key] as number) > 0)
    if (retention !== undefined) {
      throw new ConfigError(retention.flag, `${retention.flag} (${retention.env}): retention is not supported in a cluster (CLUSTER_PEERS) yet: a mirror could not fetch pruned blocks, and a pruned mirror no longer tells its primary what it holds; unset it, or run a single root peer`)
    }
  }
  return Object.freeze(config as unknown as Config)
}

/** How many members hold each room: REPLICAS, or every member for `auto` (members counts this root peer): follows are not forwarded yet. */
export function replicasOf (config: Pick<Config, 'replicas' | 'clusterPeers'>): number {
  return config.replicas ?? config.clusterPeers.length + 1
}

/** Every setting at its default (the data dir resolved against the working directory). */
export const DEFAULTS: Readonly<Config> = parseConfig([], {})

/** The settings a root peer runs with: MAX_ROOMS `auto` is a number here. */
export type Settings = Omit<Config, 'maxRooms'> & { maxRooms: number }

/** `opts` over the defaults; a setting given as undefined takes its default. */
export function withDefaults (opts: Partial<Config>): Settings {
  const config: Record<string, unknown> = { ...DEFAULTS }
  for (const [key, value] of Object.entries(opts)) if (value !== undefined) config[key] = value
  config.maxRooms ??= autoMaxRooms(config.storageDir as string)
  return config as Settings
}

export function helpText (): string {
  const rows = SETTINGS.map(s => `  ${(s.flag + ' <value>').padEnd(28)} ${s.env.padEnd(16)} ${s.help}${s.default ? ` [${s.default}]` : ''}`)
  return [
    'Usage: root-peer [start] [options]     run the daemon',
    '       root-peer testnet [--port N]    run a loopback DHT for offline use; prints DHT_BOOTSTRAP',
    '       root-peer key [--storage DIR]   print the public key of the root peer on DIR (for CLUSTER_PEERS), creating its store if missing',
    '       root-peer promote --from KEY    with the daemon stopped: take over the rooms of the cluster member KEY, gone for good',
    '',
    'Admin commands (on the data dir of --storage / STORAGE_DIR; refused while a daemon holds it):',
    '       root-peer rooms [--sort name|messages|bytes|created|active] [--json]',
    '                                       every room: messages, bytes, created, last active',
    '       root-peer rooms --remove R      remove room R for good: its messages are deleted; registered again, it starts empty',
    '       root-peer export --room R [--from N]   the room\'s records as NDJSON on stdout',
    '       root-peer import --room R       NDJSON records on stdin appended to room R (indices kept)',
    '       root-peer verify [--repair]     every room\'s core against the state file; --repair rewrites it',
    '       root-peer prune [--room R]      apply RETENTION_MESSAGES / _BYTES / _DAYS now; prints what was reclaimed',
    '       root-peer backup --out FILE     the data dir as a .tar.gz',
    '       root-peer restore --from FILE [--force]   a backup into the data dir (--force: replace what is there)',
    '',
    'Every option can also be set by the environment variable beside it; flags win.',
    '',
    ...rows,
    '  --help                       show this help'
  ].join('\n')
}

function parseDir (value: string, name: string): string {
  if (value.trim() === '' || value.includes('\0')) throw new ConfigError(name, `${name}: ${JSON.stringify(value)} is not a directory path`)
  return path.resolve(value)
}

function parseBootstrapSetting (value: string, name: string): BootstrapNode[] | null {
  try {
    return parseBootstrap(value)
  } catch (err) {
    throw new ConfigError(name, `${name}: ${(err as Error).message}`)
  }
}

function parseKeys (value: string, name: string): string[] {
  if (value.trim() === '') return []
  const keys = value.split(',').map(k => k.trim().toLowerCase())
  for (const k of keys) {
    if (!/^[0-9a-f]{64}$/.test(k)) throw new ConfigError(name, `${name}: ${JSON.stringify(k)} is not a public key (64 hex characters; a comma-separated list)`)
  }
  return [...new Set(keys)]
}

function parseHost (value: string, name: string): string {
  if (isIP(value) === 0) throw new ConfigError(name, `${name}: ${JSON.stringify(value)} is not an IP address (for example 0.0.0.0 or 127.0.0.1)`)
  return value
}

function parsePort (value: string, name: string): number | null {
  if (value === '') return null
  return parseInteger(value, name, 1, 65535)
}

function parseNonEmpty (value: string, name: string): string {
  if (value.length === 0 || value.length > 1024) throw new ConfigError(name, `${name}: must be a string of 1 to 1024 characters`)
  return value
}

function parseBoolean (value: string, name: string): boolean {
  const v = value.trim().toLowerCase()
  if (['true', '1', 'yes', 'on'].includes(v)) return true
  if (['false', '0', 'no', 'off'].includes(v)) return false
  throw new ConfigError(name, `${name}: ${JSON.stringify(value)} is not true or false`)
}

/** Days as ms; fractions allowed. */
function parseDays (value: string, name: string): number {
  const n = /^\d+(\.\d+)?$/.test(value.trim()) ? Number(value) : NaN
  if (!Number.isFinite(n) || n > 100_000) throw new ConfigError(name, `${name}: ${JSON.stringify(value)} is not a number of days (0 = forever)`)
  return Math.round(n * 86_400_000)
}

function parseLogLevel (value: string, name: string): string {
  if (!LOG_LEVELS.includes(value)) throw new ConfigError(name, `${name}: ${JSON.stringify(value)} is not one of ${LOG_LEVELS.join(', ')}`)
  return value
}

function parseFailoverAfter (value: string, name: string): number {
  const ms = parseDuration(value, name)
  if (ms !== 0 && ms < MIN_FAILOVER_AFTER) throw new ConfigError(name, `${name}: ${JSON.stringify(value)} is shorter than the member link timeout (3s); at least 3s, or 0 for no automatic failover`)
  return ms
}

/** A duration in ms: `500ms`, `30s`, `5m`, `1h`, or a bare number of seconds. */
export function parseDuration (value: string, name: string): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h)?$/.exec(value.trim())
  if (m === null) throw new ConfigError(name, `${name}: ${JSON.stringify(value)} is not a duration (a non-negative number with ms, s, m or h; a bare number is seconds)`)
  const unit = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[m[2] ?? 's'] as number
  return Math.round(Number(m[1]) * unit)
}

function atLeastOneSecond (ms: number, name: string): number {
  if (ms < 1000) throw new ConfigError(name, `${name}: must be at least 1s`)
  return ms
}

function rate (value: string, name: string): number {
  const n = /^\d+(\.\d+)?$/.test(value.trim()) ? Number(value) : NaN
  if (!Number.isFinite(n) || n < 0 || n > 1e9) throw new ConfigError(name, `${name}: ${JSON.stringify(value)} is not a non-negative number (0 = unlimited)`)
  return n
}

/** A byte count: a whole number, optionally with KiB, MiB or GiB (k, m, g, KB... are read the same). */
export function parseBytes (value: string, name: string, min: number, max: number): number {
  const m = /^(\d+(?:\.\d+)?)\s*([kmg])?(?:i?b)?$/i.exec(value.trim())
  const unit = m === null ? NaN : ({ '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3 } as Record<string, number>)[(m[2] ?? '').toLowerCase()]
  const n = m === null ? NaN : Math.round(Number(m[1]) * unit)
  if (!Number.isSafeInteger(n) || n < min || n > max) throw new ConfigError(name, `${name}: ${JSON.stringify(value)} is not a byte count from ${min} to ${max} (suffixes KiB, MiB, GiB)`)
  return n
}

export function parseInteger (value: string, name: string, min: number, max: number): number {
  const n = /^\d+$/.test(value.trim()) ? Number(value) : NaN
  if (!Number.isSafeInteger(n) || n < min || n > max) throw new ConfigError(name, `${name}: ${JSON.stringify(value)} is not an integer from ${min} to ${max}`)
  return n
}

/** Host names as a Host header carries them, lowercased; no ports, no IP addresses (those are always answered). */
function parseHostNames (value: string, name: string): string[] {
  if (value.trim() === '') return []
  const names = value.split(',').map(h => h.trim().toLowerCase())
  for (const h of names) {
    if (h.length > 253 || !/^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$/.test(h) || isIP(h) !== 0) {
      throw new ConfigError(name, `${name}: ${JSON.stringify(h)} is not a host name (a comma-separated list of names such as monitor.example.com, without a port)`)
    }
  }
  return [...new Set(names)]
}

function parseToken (value: string, name: string): string {
  if (value === '') return ''
  if (value.length < 16 || value.length > 256 || !/^[\x21-\x7e]+$/.test(value)) {
    throw new ConfigError(name, `${name}: must be 16 to 256 printable characters without spaces (e.g. openssl rand -hex 32), or empty for none`)
  }
  return value
}
