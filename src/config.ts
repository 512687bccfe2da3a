import { isIP } from 'node:net'
import path from 'node:path'

export const DEFAULT_DISCOVERY_TOPIC = 'holepunch-root-peer-discovery'

export interface BootstrapNode { host: string, port: number }

/** Every setting of the daemon, parsed once from env and flags. */
export interface Config {
  storageDir: string
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
  { key: 'bootstrap', env: 'DHT_BOOTSTRAP', flag: '--bootstrap', default: '', help: 'comma-separated host:port DHT bootstrap nodes (default: the public DHT)', parse: parseBootstrap },
  { key: 'dhtHost', env: 'DHT_HOST', flag: '--dht-host', default: '0.0.0.0', help: 'address the DHT socket binds (127.0.0.1 on a loopback testnet)', parse: parseHost },
  { key: 'dhtPort', env: 'DHT_PORT', flag: '--dht-port', default: '', help: 'UDP port of the DHT socket (default: 49737 or the next free)', parse: parsePort },
  { key: 'discoveryTopic', env: 'DISCOVERY_TOPIC', flag: '--discovery-topic', default: DEFAULT_DISCOVERY_TOPIC, help: 'string whose BLAKE2b-256 hash is the discovery topic', parse: parseNonEmpty },
  { key: 'logLevel', env: 'LOG_LEVEL', flag: '--log-level', default: 'info', help: `pino level: ${LOG_LEVELS.join(', ')}`, parse: parseLogLevel },
  { key: 'statsInterval', env: 'STATS_INTERVAL', flag: '--stats-interval', default: '30s', help: 'stats display period (500ms, 30s, 5m; a bare number is seconds), 0 = off', parse: parseDuration },
  { key: 'maxPeers', env: 'MAX_PEERS', flag: '--max-peers', default: '1024', help: 'concurrent peer connections', parse: (v, n) => parseInteger(v, n, 1, 100_000) },
  { key: 'host', env: 'HOST', flag: '--host', default: '127.0.0.1', help: 'address the monitoring HTTP server binds (/health, /metrics, /stats, /)', parse: parseHost },
  { key: 'port', env: 'PORT', flag: '--port', default: '3000', help: 'port of the monitoring HTTP server; 0 = any free port', parse: (v, n) => parseInteger(v, n, 0, 65535) }
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
  return Object.freeze(config as unknown as Config)
}

export function helpText (): string {
  const rows = SETTINGS.map(s => `  ${(s.flag + ' <value>').padEnd(28)} ${s.env.padEnd(16)} ${s.help}${s.default ? ` [${s.default}]` : ''}`)
  return [
    'Usage: root-peer [start] [options]     run the daemon',
    '       root-peer testnet [--port N]    run a loopback DHT for offline use; prints DHT_BOOTSTRAP',
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

export function parseInteger (value: string, name: string, min: number, max: number): number {
  const n = /^\d+$/.test(value.trim()) ? Number(value) : NaN
  if (!Number.isSafeInteger(n) || n < min || n > max) throw new ConfigError(name, `${name}: ${JSON.stringify(value)} is not an integer from ${min} to ${max}`)
  return n
}
