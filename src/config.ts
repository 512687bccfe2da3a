import { isIP } from 'node:net'
import path from 'node:path'

export const DEFAULT_DISCOVERY_TOPIC = 'holepunch-root-peer-discovery'

export interface BootstrapNode { host: string, port: number }

/** Every setting of the daemon, parsed once from env and flags. */
export interface Config {
  storageDir: string
  /** fsync Hypercore's write-ahead log before every ack, so acked messages also survive a power loss */
  syncWrites: boolean
  /** null: Hyperswarm's own list of public bootstrap nodes */
  bootstrap: BootstrapNode[] | null
  dhtHost: string
  /** null: hyperdht's default (49737, or the next free port) */
  dhtPort: number | null
  discoveryTopic: string
  logLevel: string
  statsInterval: number
  maxPeers: number
  /** address the monitoring HTTP server binds */
  host: string
  /** port of the monitoring HTTP server; 0 = any free port */
  port: number
  maxFrameBytes: number
  maxMessageBytes: number
  maxRooms: number
  /** room cores open at once */
  maxOpenRooms: number
  /** room topics announced on the DHT at once; 0 = none */
  maxAnnouncedRooms: number
  /** ms without activity after which a room's core is closed and its topic left */
  roomIdleTimeout: number
  /** refuse rooms that are not signed rooms */
  requireSignedRooms: boolean
  /** per-room retention, 0 = off: most messages, most bytes, oldest age (ms) kept */
  retentionMessages: number
  retentionBytes: number
  retentionAge: number
  /** message bytes held in all rooms, 0 = no cap; over it messages are refused with STORAGE_FULL */
  maxStorageBytes: number
  /** bytes of RocksDB memtable before it is flushed to disk */
  storageWriteBuffer: number
  messagesPerSecond: number
  bytesPerSecond: number
  syncsPerSecond: number
  registersPerMinute: number
  newRoomsPerMinute: number
  /** refusals within a minute after which a peer is disconnected and banned; 0 = never */
  banThreshold: number
  banDuration: number
  /** ms a peer may leave the daemon's writes unread before it is disconnected; 0 = never */
  stallTimeout: number
  /** bytes of incoming frames held for all connections together (half-received and queued); past it the connection holding the most is dropped */
  maxBufferedBytes: number
  /** ms a peer may take to finish sending a frame it has started */
  frameTimeout: number
  /** ms a new connection may take to send its first valid frame; 0 = forever */
  firstFrameTimeout: number
  /** connections at once from one remote address; 0 = no cap */
  maxPeersPerHost: number
  /** at MAX_PEERS, ms a peer must have gone without a valid frame to give its place to a newcomer; 0 = never */
  idleEvictAfter: number
  /** ms an empty room (no message ever stored) is kept after its last use; 0 = until MAX_ROOMS needs its place */
  emptyRoomTtl: number
  /** public keys (hex) of the other root peers of this cluster; empty: a single root peer */
  clusterPeers: string[]
  /** mirrors that must have stored a message before it is acked */
  minMirrors: number
  /** ms a write waits for MIN_MIRRORS mirrors (or a forwarded write for its primary) before NOT_REPLICATED */
  replicationTimeout: number
  /** host names (besides IP addresses and localhost) the monitor answers in a request's Host header */
  monitorHosts: string[]
  /** bearer token every monitor endpoint but /health requires; '' = none */
  monitorToken: string
}

/** A setting an operator got wrong; the entry point prints `message` and exits 2. */
export class ConfigError extends Error {
  readonly setting: string
  constructor (setting: string, message: string) {
    super(message)
    this.name = 'ConfigError'
    this.setting = setting
  }
}

interface Setting {
  key: keyof Config
  env: string
  flag: string
  default: string
  help: string
  parse: (value: string, name: string) => unknown
}

const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']

export const SETTINGS: readonly Setting[] = [
  { key: 'storageDir', env: 'STORAGE_DIR', flag: '--storage', default: './root-peer-storage', help: 'data dir', parse: parseDir },
  { key: 'syncWrites', env: 'SYNC_WRITES', flag: '--sync-writes', default: 'false', help: 'fsync storage before each ack, so acked messages survive a power loss too (true or false)', parse: parseBoolean },
  { key: 'bootstrap', env: 'DHT_BOOTSTRAP', flag: '--bootstrap', default: '', help: 'comma-separated host:port DHT bootstrap nodes (default: the public DHT)', parse: parseBootstrap },
  { key: 'dhtHost', env: 'DHT_HOST', flag: '--dht-host', default: '0.0.0.0', help: 'address the DHT socket binds (127.0.0.1 on a loopback testnet)', parse: parseHost },
  { key: 'dhtPort', env: 'DHT_PORT', flag: '--dht-port', default: '', help: 'UDP port of the DHT socket (default: 49737 or the next free)', parse: parsePort },
  { key: 'discoveryTopic', env: 'DISCOVERY_TOPIC', flag: '--discovery-topic', default: DEFAULT_DISCOVERY_TOPIC, help: 'string whose BLAKE2b-256 hash is the discovery topic', parse: parseNonEmpty },
  { key: 'logLevel', env: 'LOG_LEVEL', flag: '--log-level', default: 'info', help: `pino level: ${LOG_LEVELS.join(', ')}`, parse: parseLogLevel },
  { key: 'statsInterval', env: 'STATS_INTERVAL', flag: '--stats-interval', default: '30s', help: 'stats display period (500ms, 30s, 5m; a bare number is seconds), 0 = off', parse: parseDuration },
  { key: 'maxPeers', env: 'MAX_PEERS', flag: '--max-peers', default: '1024', help: 'concurrent peer connections', parse: (v, n) => parseInteger(v, n, 1, 100_000) },
  { key: 'host', env: 'HOST', flag: '--host', default: '127.0.0.1', help: 'address the monitoring HTTP server binds (/health, /metrics, /stats, /)', parse: parseHost },
  { key: 'port', env: 'PORT', flag: '--port', default: '3000', help: 'port of the monitoring HTTP server; 0 = any free port', parse: (v, n) => parseInteger(v, n, 0, 65535) },
  { key: 'maxFrameBytes', env: 'MAX_FRAME_BYTES', flag: '--max-frame-bytes', default: '256KiB', help: 'largest frame a peer may send (bytes; KiB/MiB suffixes)', parse: (v, n) => parseBytes(v, n, 1024, 8 * 1024 * 1024) },
  { key: 'maxMessageBytes', env: 'MAX_MESSAGE_BYTES', flag: '--max-message-bytes', default: '64KiB', help: 'largest message payload (bytes; KiB/MiB suffixes)', parse: (v, n) => parseBytes(v, n, 1, 8 * 1024 * 1024) },
  { key: 'maxRooms', env: 'MAX_ROOMS', flag: '--max-rooms', default: '100000', help: 'rooms the root peer holds in all', parse: (v, n) => parseInteger(v, n, 1, 100_000_000) },
  { key: 'maxOpenRooms', env: 'MAX_OPEN_ROOMS', flag: '--max-open-rooms', default: '256', help: 'room cores open at once; the least recently used idle room is closed to open another', parse: (v, n) => parseInteger(v, n, 1, 1_000_000) },
  { key: 'maxAnnouncedRooms', env: 'MAX_ANNOUNCED_ROOMS', flag: '--max-announced-rooms', default: '1000', help: 'room topics announced on the DHT at once, least recently active left first; 0 = none (clients still find the root peer on the discovery topic)', parse: (v, n) => parseInteger(v, n, 0, 1_000_000) },
  { key: 'requireSignedRooms', env: 'REQUIRE_SIGNED_ROOMS', flag: '--require-signed-rooms', default: 'false', help: 'refuse rooms that are not signed rooms (true or false)', parse: parseBoolean },
  { key: 'retentionMessages', env: 'RETENTION_MESSAGES', flag: '--retention-messages', default: '0', help: 'most messages a room keeps; older ones are pruned (indices stay); 0 = all', parse: (v, n) => parseInteger(v, n, 0, Number.MAX_SAFE_INTEGER) },
  { key: 'retentionBytes', env: 'RETENTION_BYTES', flag: '--retention-bytes', default: '0', help: 'most message bytes a room keeps (KiB/MiB/GiB suffixes); 0 = all', parse: (v, n) => parseBytes(v, n, 0, Number.MAX_SAFE_INTEGER) },
  { key: 'retentionAge', env: 'RETENTION_DAYS', flag: '--retention-days', default: '0', help: 'days a message is kept (fractions allowed); 0 = forever', parse: parseDays },
  { key: 'maxStorageBytes', env: 'MAX_STORAGE_BYTES', flag: '--max-storage-bytes', default: '0', help: 'message bytes held in all rooms; over it messages are refused with STORAGE_FULL; 0 = no cap', parse: (v, n) => parseBytes(v, n, 0, Number.MAX_SAFE_INTEGER) },
  { key: 'roomIdleTimeout', env: 'ROOM_IDLE_TIMEOUT', flag: '--room-idle-timeout', default: '5m', help: 'how long a room may go unused before its core is closed and its topic left', parse: (v, n) => atLeastOneSecond(parseDuration(v, n), n) },
  { key: 'storageWriteBuffer', env: 'STORAGE_WRITE_BUFFER', flag: '--storage-write-buffer', default: '8MiB', help: 'RocksDB memtable of the store, held in memory until flushed to disk (Hypercore\'s own default is 64MiB; bytes, KiB/MiB suffixes)', parse: (v, n) => parseBytes(v, n, 1024 * 1024, 1024 * 1024 * 1024) },
  { key: 'messagesPerSecond', env: 'RATE_MESSAGES', flag: '--rate-messages', default: '100', help: 'messages a second per peer (burst: 10 s worth); 0 = unlimited', parse: rate },
  { key: 'bytesPerSecond', env: 'RATE_BYTES', flag: '--rate-bytes', default: '1MiB', help: 'message bytes a second per peer (burst: 10 s worth); 0 = unlimited', parse: (v, n) => parseBytes(v, n, 0, Number.MAX_SAFE_INTEGER) },
  { key: 'syncsPerSecond', env: 'RATE_SYNCS', flag: '--rate-syncs', default: '50', help: 'sync-requests a second per peer (burst: 10 s worth); 0 = unlimited', parse: rate },
  { key: 'registersPerMinute', env: 'RATE_REGISTERS', flag: '--rate-registers', default: '600', help: 'register-room frames a minute per peer (burst: 1 min worth); 0 = unlimited', parse: rate },
  { key: 'newRoomsPerMinute', env: 'RATE_NEW_ROOMS', flag: '--rate-new-rooms', default: '60', help: 'rooms a peer may create a minute (burst: 1 min worth); 0 = unlimited', parse: rate },
  { key: 'banThreshold', env: 'BAN_THRESHOLD', flag: '--ban-threshold', default: '100', help: 'refused frames within a minute that get a peer disconnected and banned; 0 = never', parse: (v, n) => parseInteger(v, n, 0, 1_000_000) },
  { key: 'banDuration', env: 'BAN_DURATION', flag: '--ban-duration', default: '10m', help: 'how long a banned peer is refused', parse: parseDuration },
  { key: 'stallTimeout', env: 'STALL_TIMEOUT', flag: '--stall-timeout', default: '30s', help: 'how long a peer may leave the daemon\'s writes unread before it is disconnected; 0 = never', parse: parseDuration },
  { key: 'maxBufferedBytes', env: 'MAX_BUFFERED_BYTES', flag: '--max-buffered-bytes', default: '64MiB', help: 'incoming frame bytes held for all connections together (half-received and queued); past it the connection holding the most is dropped', parse: (v, n) => parseBytes(v, n, 1024 * 1024, 64 * 1024 ** 3) },
  { key: 'frameTimeout', env: 'FRAME_TIMEOUT', flag: '--frame-timeout', default: '20s', help: 'how long a peer may take to finish sending a frame it has started before it is disconnected', parse: (v, n) => atLeastOneSecond(parseDuration(v, n), n) },
  { key: 'firstFrameTimeout', env: 'FIRST_FRAME_TIMEOUT', flag: '--first-frame-timeout', default: '30s', help: 'how long a new connection may take to send its first valid frame before it is disconnected; 0 = forever', parse: parseDuration },
  { key: 'maxPeersPerHost', env: 'MAX_PEERS_PER_HOST', flag: '--max-peers-per-host', default: '256', help: 'connections at once from one IP address; 0 = no cap', parse: (v, n) => parseInteger(v, n, 0, 100_000) },
  { key: 'idleEvictAfter', env: 'IDLE_EVICT_AFTER', flag: '--idle-evict-after', default: '10s', help: 'with MAX_PEERS connected, a newcomer takes the place of the peer longest without a valid frame, if that is at least this long; 0 = never', parse: parseDuration },
  { key: 'emptyRoomTtl', env: 'EMPTY_ROOM_TTL', flag: '--empty-room-ttl', default: '1h', help: 'how long a room that never stored a message is kept after its last use; 0 = until MAX_ROOMS needs its place', parse: parseDuration },
  { key: 'clusterPeers', env: 'CLUSTER_PEERS', flag: '--cluster-peers', default: '', help: 'comma-separated public keys (64 hex) of the other root peers of this cluster; empty = a single root peer', parse: parseKeys },
  { key: 'minMirrors', env: 'MIN_MIRRORS', flag: '--min-mirrors', default: '0', help: 'cluster members besides the primary that must have stored a message before it is acked', parse: (v, n) => parseInteger(v, n, 0, 100) },
  { key: 'replicationTimeout', env: 'REPLICATION_TIMEOUT', flag: '--replication-timeout', default: '5s', help: 'how long a write waits for MIN_MIRRORS mirrors (and a forwarded write for its primary) before NOT_REPLICATED', parse: (v, n) => atLeastOneSecond(parseDuration(v, n), n) },
  { key: 'monitorHosts', env: 'MONITOR_HOSTS', flag: '--monitor-hosts', default: '', help: 'comma-separated host names the monitor answers (IP addresses and localhost always are); other Host headers get 421', parse: parseHostNames },
  { key: 'monitorToken', env: 'MONITOR_TOKEN', flag: '--monitor-token', default: '', help: 'bearer token every monitor endpoint but /health requires (16 to 256 printable characters, e.g. openssl rand -hex 32); empty = none', parse: parseToken }
]

/** Parses flags (`--flag value` or `--flag=value`) over env over defaults. Throws ConfigError. */
export function parseConfig (argv: readonly string[], env: NodeJS.ProcessEnv = process.env): Readonly<Config> {
  const values = new Map<Setting, string>()
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
  if ((config.clusterPeers as string[]).length > 0) {
    const retention = SETTINGS.find(s => ['retentionMessages', 'retentionBytes', 'retentionAge'].includes(s.key) && (config[s.key] as number) > 0)
    if (retention !== undefined) {
      throw new ConfigError(retention.flag, `${retention.flag} (${retention.env}): retention is not supported in a cluster (CLUSTER_PEERS) yet: a mirror could not fetch pruned blocks, and a pruned mirror no longer tells its primary what it holds; unset it, or run a single root peer`)
    }
  }
  return Object.freeze(config as unknown as Config)
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

function parseBootstrap (value: string, name: string): BootstrapNode[] | null {
  if (value === '') return null
  return value.split(',').map(entry => {
    const m = /^\s*(?:\[([0-9a-fA-F:.]+)\]|([A-Za-z0-9.-]+)):(\d{1,5})\s*$/.exec(entry)
    const host = m === null ? '' : (m[1] ?? m[2])
    const port = m === null ? 0 : Number(m[3])
    if (host === '' || port < 1 || port > 65535) {
      throw new ConfigError(name, `${name}: ${JSON.stringify(entry)} is not host:port (a comma-separated list of host:port, port 1-65535)`)
    }
    return { host, port }
  })
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
