#!/usr/bin/env node
import { createRequire } from 'node:module'
import { isIP } from 'node:net'
import goodbye from 'graceful-goodbye'
import pino, { type Logger } from 'pino'
import { ConfigError, helpText, parseConfig, type Config } from './config.js'
import { Metrics } from './monitor/metrics.js'
import { Monitor } from './monitor/monitor.js'
import { ChatRootPeer } from './root-peer.js'
import { formatStats, type StatsSnapshot } from './monitor/stats.js'
import { runTestnet } from './cli/testnet.js'
import { exportCommand, importCommand, pruneCommand, roomsCommand, verifyCommand, type AdminIO } from './cli/admin.js'
import { backupCommand, restoreCommand } from './cli/backup.js'
import { makePrivate, openStore, type LooseModes } from './storage/data-dir-lock.js'
import { RootPeerError } from 'root-peer-client/protocol'
import { readPublicKey } from './cluster/cluster.js'
import { PromoteError, promote } from './cluster/promote.js'

/** How long a graceful shutdown may take before the process exits anyway. */
const SHUTDOWN_TIMEOUT = 10_000
/**
 * A signal repeated sooner than this is the first one delivered twice, not a second Ctrl-C: a terminal's
 * Ctrl-C reaches every process of the foreground group, and npm forwards it to its child, the daemon.
 */
const REPEATED_SIGNAL = 500
/** The admin commands: each runs to completion on a data dir no daemon holds, and resolves with its exit code. */
const ADMIN: Record<string, (argv: string[], io: AdminIO) => Promise<number>> = {
  rooms: roomsCommand,
  export: exportCommand,
  import: importCommand,
  verify: verifyCommand,
  prune: pruneCommand,
  backup: backupCommand,
  restore: restoreCommand
}
const COMMANDS = ['start', 'testnet', 'key', 'promote', ...Object.keys(ADMIN)]

main(process.argv.slice(2)).catch(err => {
  console.error(`root-peer: ${err?.stack ?? err}`)
  process.exit(1)
})

async function main (argv: string[]): Promise<void> {
  // whatever the daemon and the admin commands create is private to this user, RocksDB's own files included:
  // the data dir holds the root peer's secret key and every room, and a backup holds the same
  process.umask(0o077)
  if (argv.includes('--help') || argv.includes('-h')) {
    console.log(helpText())
    return
  }
  let command = 'start'
  if (argv.length > 0 && !argv[0].startsWith('-')) command = argv.shift()!
  if (!COMMANDS.includes(command)) usageError(`unknown command ${JSON.stringify(command)} (commands: ${COMMANDS.join(', ')})`)
  if (command === 'testnet') {
    try {
      return await runTestnet(argv)
    } catch (err) {
      if (err instanceof ConfigError || err instanceof TypeError) usageError(err.message)
      throw err
    }
  }

  if (Object.hasOwn(ADMIN, command)) return admin(command, argv)

  // promote's own option; the rest are the daemon's settings (data dir, DHT)
  let from: string | null = null
  if (command === 'promote') {
    const at = argv.findIndex(a => a === '--from' || a.startsWith('--from='))
    if (at !== -1) from = argv[at].includes('=') ? argv.splice(at, 1)[0].slice('--from='.length) : argv.splice(at, 2)[1] ?? ''
    if (from === null || !/^[0-9a-f]{64}$/i.test(from)) usageError('promote: --from needs the public key (64 hex) of the cluster member that is gone for good')
  }
  let config: Readonly<Config>
  try {
    config = parseConfig(argv)
  } catch (err) {
    if (err instanceof ConfigError) usageError(err.message)
    throw err
  }
  if (command === 'promote') {
    try {
      const rooms = await promote({ storageDir: config.storageDir, from: from!.toLowerCase(), bootstrap: config.bootstrap, dhtHost: config.dhtHost, members: config.clusterPeers })
      console.log(JSON.stringify({ promotedFrom: from!.toLowerCase(), rooms }))
    } catch (err) {
      if (!(err instanceof PromoteError) && !(err instanceof RootPeerError)) throw err
      console.error(`root-peer: promote refused: ${err.message}`)
      process.exit(1)
    }
    return
  }
  if (command === 'key') {
    // the key other members list in CLUSTER_PEERS, known before the daemon first starts
    console.log(await readPublicKey(config.storageDir))
    return
  }
  await start(config)
}

async function admin (command: string, argv: string[]): Promise<void> {
  try {
    process.exitCode = await ADMIN[command](argv, { stdin: process.stdin, stdout: process.stdout, stderr: process.stderr })
  } catch (err: any) {
    if (err instanceof ConfigError) usageError(`${command}: ${err.message}`)
    // a reader that went away (export | head) is not an error
    if (err?.code === 'EPIPE') process.exit(0)
    // a bug keeps its stack; anything else (a refusal, a file system or storage error) is one line
    if (err instanceof TypeError || err instanceof ReferenceError || err instanceof SyntaxError) throw err
    console.error(`root-peer ${command}: ${String(err?.message ?? err).replace(/\s*\n\s*/g, ' ')}`)
    process.exit(1)
  }
}

function usageError (message: string): never {
  console.error(`root-peer: ${message}`)
  process.exit(2)
}

async function start (config: Readonly<Config>): Promise<void> {
  const pretty = wantsPretty()
  const log = pino({
    level: config.logLevel,
    base: { pid: process.pid },
    ...(pretty ? { transport: { target: 'pino-pretty', options: { colorize: true, ignore: 'pid,hostname' } } } : {})
  })
  const metrics = new Metrics()
  const rootPeer = new ChatRootPeer({ ...config, onLatency: metrics.onLatency })
  metrics.attach(rootPeer)
  const monitor = new Monitor(rootPeer, { metrics, host: config.host, port: config.port, hosts: config.monitorHosts, token: config.monitorToken })
  wireLogs(rootPeer, log, pretty)
  monitor.on('request-error', err => log.error({ err }, 'monitor request failed'))

  const stop = async (signal: string): Promise<void> => {
    log.info({ signal }, 'shutting down: finishing appends in flight, saving state')
    setTimeout(() => {
      log.error({ timeoutMs: SHUTDOWN_TIMEOUT }, 'shutdown took too long: exiting')
      process.exit(1)
    }, SHUTDOWN_TIMEOUT).unref()
    try {
      // the monitor answers /health with 503 "shutting down" until the root peer has closed
      await rootPeer.close()
      await monitor.close()
    } catch (err) {
      log.error({ err }, 'shutdown failed')
      process.exit(1)
    }
    log.info('stopped')
    log.flush()
    process.exit(0)
  }
  // graceful-goodbye runs the shutdown once (SIGINT, SIGTERM, empty event loop); a second signal ends it
  let signal: string | null = null
  let signalledAt = 0
  goodbye(() => stop(signal ?? 'beforeExit'))
  for (const name of ['SIGINT', 'SIGTERM'] as const) {
    process.prependListener(name, () => {
      if (signal === null) {
        signal = name
        signalledAt = Date.now()
      } else if (Date.now() - signalledAt >= REPEATED_SIGNAL) {
        log.warn({ signal: name }, 'second signal: exiting at once')
        process.exit(1)
      }
    })
  }
  process.on('uncaughtException', err => {
    log.fatal({ err }, 'uncaught exception')
    process.exit(1)
  })

  log.info({ storageDir: config.storageDir, bootstrap: config.bootstrap ?? 'public DHT', dhtHost: config.dhtHost }, 'starting root peer')
  try {
    const loose = await makePrivate(config.storageDir)
    if (loose !== null) log.warn({ storageDir: config.storageDir, mode: octal(loose.mode), entries: loose.entries, error: loose.error ?? undefined }, looseMessage(config.storageDir, loose))
  } catch (err: any) {
    log.warn({ storageDir: config.storageDir, code: err?.code }, `could not check who can read data dir ${config.storageDir}: ${err?.message ?? err}`)
  }
  // the data dir's lock is looked at before the monitor takes its port, so a second daemon is told about the dir
  // (a dir with no store yet is held by no one, and is left for the root peer to create)
  try {
    await (await openStore(config.storageDir, { create: false })).close()
  } catch (err: any) {
    if (err?.code === 'DATA_DIR_LOCKED') {
      log.fatal({ code: err.code, storageDir: config.storageDir }, `could not start: ${err.message}`)
      process.exit(1)
    }
  }
  try {
    await monitor.ready()
  } catch (err: any) {
    log.fatal({ host: config.host, port: config.port, code: err?.code }, `monitor cannot listen on HOST=${config.host} PORT=${config.port}: ${err?.message ?? err}`)
    process.exit(1)
  }
  log.info({ url: monitor.url }, `monitor listening on ${monitor.url}`)
  if (!isLoopback(config.host) && config.monitorToken === '') {
    log.warn({ host: config.host, port: monitor.port }, `the monitor listens on HOST=${config.host}, not only loopback, and has no MONITOR_TOKEN: whoever reaches port ${monitor.port} reads /stats and /metrics; set MONITOR_TOKEN`)
  }
  try {
    await rootPeer.ready()
  } catch (err) {
    log.fatal({ err, storageDir: config.storageDir }, `could not start: ${(err as Error)?.message ?? err}`)
    process.exit(1)
  }
}

function looseMessage (dir: string, { mode, entries, error }: LooseModes): string {
  const what = `data dir ${dir} was open to other users (mode ${octal(mode)}${entries > 0 ? `, and ${entries} ${entries === 1 ? 'entry' : 'entries'} in it` : ''}); it holds the key pair's seed and every room`
  return error === null ? `${what}: made it 0700 and its files 0600` : `${what}: could not make it private (${error}); chmod -R go-rwx it`
}

function octal (mode: number): string {
  return '0' + (mode & 0o777).toString(8).padStart(3, '0')
}

function isLoopback (host: string): boolean {
  if (isIP(host) === 4) return host.startsWith('127.')
  return host === '::1' || /^::ffff:127\./i.test(host)
}

function wantsPretty (): boolean {
  if (process.env.NODE_ENV === 'production' || !process.stdout.isTTY) return false
  try {
    createRequire(import.meta.url).resolve('pino-pretty')
    return true
  } catch {
    return false
  }
}

/** The library emits events; this is the only place they become log lines. */
function wireLogs (rootPeer: ChatRootPeer, log: Logger, pretty: boolean): void {
  rootPeer.on('ready', () => {
    const publicKey = rootPeer.publicKey!.toString('hex')
    log.info({ publicKey, rooms: rootPeer.stats().totalRooms }, `root peer ready: ${publicKey}`)
  })
  rootPeer.on('dht-bootstrapped', ({ nodes }) => {
    if (nodes > 0) log.info({ nodes }, 'DHT bootstrapped')
    else log.warn('DHT bootstrap found no nodes: check DHT_BOOTSTRAP and the network; clients cannot find this root peer yet')
  })
  rootPeer.on('discovery-announced', () => log.info('announced on the discovery topic'))
  rootPeer.on('discovery-error', err => log.warn({ err }, 'announcing on the discovery topic failed'))
  rootPeer.on('peer-connected', peerId => log.info({ peerId }, 'peer connected'))
  rootPeer.on('peer-disconnected', peerId => log.info({ peerId }, 'peer disconnected'))
  rootPeer.on('peer-error', (peerId, err) => log.debug({ peerId, err: err.message }, 'connection error'))
  rootPeer.on('peer-refused', (peerId, err) => log.warn({ peerId, code: err.code }, 'peer refused'))
  rootPeer.on('peer-banned', peerId => log.warn({ peerId }, 'peer banned: too many refused frames'))
  rootPeer.on('peer-stalled', peerId => log.warn({ peerId }, 'peer stalled: our writes went unread past STALL_TIMEOUT, disconnected'))
  rootPeer.on('peer-idle', (peerId, err) => log.info({ peerId, idleMs: err.details.idleMs }, 'peer disconnected: no valid frame (FIRST_FRAME_TIMEOUT, or its place was needed at MAX_PEERS)'))
  rootPeer.on('peer-dropped', (peerId, err) => log.warn({ peerId, code: err.code }, `peer dropped: ${err.message}`))
  rootPeer.on('room-removed', ({ roomName, reason }) => log.debug({ roomName, reason }, 'empty room removed'))
  rootPeer.on('room-registered', ({ roomName, peerId, messageCount }) => log.debug({ roomName, peerId, messageCount }, 'room registered'))
  rootPeer.on('room-recovered', ({ roomName }) => log.warn({ roomName }, 'room missing from the state file recovered from the room index'))
  rootPeer.on('message-stored', ({ roomName, messageIndex }) => log.debug({ roomName, messageIndex }, 'message stored'))
  rootPeer.on('frame-refused', (peerId, err) => log.debug({ peerId, code: err.code, reason: err.message }, 'frame refused'))
  rootPeer.on('append-error', ({ roomName, err }) => log.error({ roomName, err }, 'append failed'))
  rootPeer.on('storage-failed', ({ code, freeBytes, err }) => log.error(
    { code, freeBytes, err, storageDir: rootPeer.storageDir },
    code === 'STORAGE_FULL'
      ? `disk full (${String(freeBytes)} bytes free in ${rootPeer.storageDir}): refusing messages with STORAGE_FULL until there is room`
      : `writes to ${rootPeer.storageDir} fail: refusing messages with STORAGE_ERROR until a write succeeds`
  ))
  rootPeer.on('storage-recovery-failed', err => log.warn({ err }, 'reopening storage failed; retrying'))
  rootPeer.on('room-pruned', ({ roomName, messages, bytes }) => log.debug({ roomName, messages, bytes }, 'room pruned by retention'))
  rootPeer.on('prune-error', ({ roomName, err }) => log.error({ roomName, err }, 'pruning a room failed'))
  rootPeer.on('storage-recovered', () => log.info('storage recovered: writes accepted again'))
  rootPeer.on('state-file-recovered', ({ problem, movedTo, fromPrevious, rooms, messages }) => log.warn(
    { problem, movedTo, fromPrevious, rooms, messages },
    `state file was ${problem}${movedTo === null ? '' : `: kept aside as ${movedTo}`}; ${rooms} rooms and ${messages} messages rebuilt from storage${fromPrevious ? ' and the previous good copy' : ''}`
  ))
  rootPeer.on('member-connected', member => log.info({ member }, 'cluster member connected'))
  rootPeer.on('member-disconnected', member => log.warn({ member }, 'cluster member disconnected: writes to its rooms get PRIMARY_UNAVAILABLE here until it is back'))
  rootPeer.on('member-error', (member, err) => log.debug({ member, err: err.message }, 'cluster connection error'))
  rootPeer.on('room-mirrored', ({ roomName, primary }) => log.info({ roomName, primary }, 'mirroring room'))
  rootPeer.on('room-conflict', ({ roomName, primary, key }) => log.error({ roomName, primary, key }, 'a cluster member is primary for a room this root peer holds in another core: keeping ours, not mirroring theirs'))
  rootPeer.on('cluster-error', ({ member, err }) => log.warn({ member, err }, 'cluster: a room could not be mirrored or announced'))
  rootPeer.on('room-claimed', ({ roomName, epoch, fromLength, from }) => log.warn({ roomName, epoch, fromLength, from }, 'failover: claimed a room whose primary is unreachable (it counts once final in the control log)'))
  rootPeer.on('room-taken-over', ({ roomName, epoch, messages, from }) => log.warn({ roomName, epoch, messages, from }, 'failover: this root peer is the room\'s primary now'))
  rootPeer.on('room-followed', ({ roomName, epoch, primary, from }) => log.warn({ roomName, epoch, primary, from }, 'failover: the room has a new primary'))
  rootPeer.on('failover-error', err => log.error({ err }, 'failover: a decision could not be made or applied'))
  rootPeer.on('log-error', err => log.error({ err }, 'cluster control log error'))
  rootPeer.on('state-save-error', err => log.error({ err }, 'saving the state file failed'))
  rootPeer.on('stats', (s: StatsSnapshot) => {
    if (pretty) log.info('\n' + formatStats(s))
    else log.info({ rooms: s.totalRooms, messages: s.totalMessages, peers: s.activePeers, uptimeSeconds: s.uptimeSeconds, busiestRooms: s.busiestRooms.map(r => ({ name: r.name, messages: r.messageCount })) }, 'stats')
  })
}
