import { once } from 'node:events'
import readline from 'node:readline'
import type { Readable, Writable } from 'node:stream'
import type Corestore from 'corestore'
import { ConfigError, parseConfig, type Config } from '../config.js'
import { openStore } from '../storage/data-dir-lock.js'
import { RootPeerError } from 'root-peer-client/protocol'
import { Progress } from './progress.js'
import { encodeRecord, validateRoomName } from '../protocol/protocol.js'
import { retentionOn } from '../storage/retention.js'
import { Rooms } from '../storage/rooms.js'
import { snapshotOf } from '../storage/state-saver.js'
import { StateFile, type LoadResult, type RoomState } from '../storage/state-file.js'

const EXPORT_PAGE = 1000
const EXPORT_PAGE_BYTES = 4 * 1024 * 1024
const MAX_IMPORT_LINE = 16 * 1024 * 1024
const MAX_ID = 128
const RECORD_FIELDS = new Set(['message', 'storedAt', 'fromPeer', 'senderPublicKey', 'id', 'signature', 'messageIndex'])

export interface AdminIO {
  stdin: Readable
  stdout: Writable
  stderr: NodeJS.WriteStream
}

type FlagKind = 'value' | 'bool'
type Flags = Record<string, string | true>

/** Takes a command's flags out of argv; the rest is parsed as the daemon's config (so STORAGE_DIR works). */
export function commandArgs (argv: readonly string[], spec: Record<string, FlagKind>): { flags: Flags, storageDir: string, config: Readonly<Config> } {
  const flags: Flags = {}
  const rest: string[] = []
  for (let i = 0; i < argv.length; i++) {
    const eq = argv[i].indexOf('=')
    const flag = eq === -1 ? argv[i] : argv[i].slice(0, eq)
    const kind = spec[flag]
    if (kind === undefined) {
      rest.push(argv[i])
      continue
    }
    if (kind === 'bool') {
      if (eq !== -1) throw new ConfigError(flag, `${flag} takes no value`)
      flags[flag] = true
      continue
    }
    const value = eq === -1 ? argv[++i] : argv[i].slice(eq + 1)
    if (value === undefined || value === '') throw new ConfigError(flag, `${flag} needs a value`)
    flags[flag] = value
  }
  const config = parseConfig(rest)
  return { flags, storageDir: config.storageDir, config }
}

/** The data dir opened as the daemon opens it: the lock (the store) first, then the state file and rooms. */
export class DataDir {
  readonly dir: string
  readonly stateFile: StateFile
  store: Corestore | null = null
  rooms: Rooms | null = null
  loaded: LoadResult | null = null

  constructor (dir: string) {
    this.dir = dir
    this.stateFile = new StateFile(dir)
  }

  async open ({ create = false, openAll = true, moveBad = true, onRoomOpened = () => {} } = {}): Promise<Rooms> {
    this.store = await openStore(this.dir, { create })
    this.loaded = await this.stateFile.load({ moveBad })
    this.rooms = new Rooms(this.store)
    this.rooms.on('room-loaded', onRoomOpened)
    await this.rooms.load(this.loaded.state, { openAll })
    return this.rooms
  }

  async save (): Promise<void> {
    const createdAt = this.loaded?.state?.rootPeerCreatedAt || Date.now()
    await this.stateFile.save(() => snapshotOf(this.rooms!, createdAt))
  }

  async close (): Promise<void> {
    if (this.rooms !== null) await this.rooms.close()
    if (this.store !== null) await this.store.close()
    await this.stateFile.flushed()
  }
}

async function listAll (rooms: Rooms): Promise<RoomState[]> {
  const list: RoomState[] = []
  for await (const info of rooms.list()) list.push({ ...info })
  return list
}

async function withDataDir<T> (dir: string, fn: (d: DataDir) => Promise<T>): Promise<T> {
  const d = new DataDir(dir)
  try {
    return await fn(d)
  } finally {
    await d.close()
  }
}

const SORTS: Record<string, (a: RoomState, b: RoomState) => number> = {
  name: (a, b) => a.name < b.name ? -1 : a.name > b.name ? 1 : 0,
  messages: (a, b) => b.messageCount - a.messageCount,
  bytes: (a, b) => b.byteLength - a.byteLength,
  created: (a, b) => b.createdAt - a.createdAt,
  active: (a, b) => b.lastActivity - a.lastActivity
}

export async function roomsCommand (argv: readonly string[], io: AdminIO): Promise<number> {
  const { flags, storageDir, config } = commandArgs(argv, { '--sort': 'value', '--json': 'bool', '--remove': 'value' })
  if (flags['--remove'] !== undefined) {
    const name = validateRoomName(flags['--remove'])
    if (config.clusterPeers.length > 0) throw new ConfigError('--remove', '--remove: a room of a cluster (CLUSTER_PEERS) is held by every member; removing it on one is not supported')
    const removed = await withDataDir(storageDir, async d => {
      const rooms = await d.open({ openAll: false, moveBad: false })
      const info = await rooms.lookup(name)
      if (info === undefined) throw RootPeerError.UNKNOWN_ROOM(name)
      const held = { messages: info.messageCount, bytes: info.byteLength - (info.prunedBytes ?? 0) }
      await rooms.remove(name, { clear: true })
      await d.save()
      return held
    })
    await write(io.stdout, JSON.stringify({ removed: name, ...removed }) + '\n')
    return 0
  }
  const sort = (flags['--sort'] ?? 'name') as string
  if (SORTS[sort] === undefined) throw new ConfigError('--sort', `--sort: ${JSON.stringify(sort)} is not one of ${Object.keys(SORTS).join(', ')}`)
  const list = await withDataDir(storageDir, async d => {
    const progress = new Progress(io.stderr, 'rooms')
    let opened = 0
    const rooms = await d.open({ moveBad: false, onRoomOpened: () => progress.update(() => `opened ${++opened} rooms`) })
    progress.done()
    return (await listAll(rooms)).sort((a, b) => SORTS[sort](a, b) || SORTS.name(a, b))
  })
  if (flags['--json'] === true) {
    const rows = list.map(r => ({ name: r.name, messages: r.messageCount, bytes: r.byteLength, createdAt: r.createdAt, lastActivity: r.lastActivity }))
    await write(io.stdout, JSON.stringify(rows) + '\n')
  } else {
    await write(io.stdout, table(['NAME', 'MESSAGES', 'BYTES', 'CREATED', 'ACTIVE'], [false, true, true, false, false],
      list.map(r => [r.name, String(r.messageCount), String(r.byteLength), isoDate(r.createdAt), isoDate(r.lastActivity)])))
  }
  return 0
}

export async function exportCommand (argv: readonly string[], io: AdminIO): Promise<number> {
  const { flags, storageDir } = commandArgs(argv, { '--room': 'value', '--from': 'value' })
  const name = roomFlag(flags)
  const from = flags['--from'] === undefined ? 0 : indexFlag('--from', flags['--from'] as string)
  await withDataDir(storageDir, async d => {
    const rooms = await d.open({ openAll: false, moveBad: false })
    const room = await rooms.get(name)
    if (room === null) throw RootPeerError.UNKNOWN_ROOM(name)
    const progress = new Progress(io.stderr, `export ${name}`)
    const end = room.length
    // blocks below the retention horizon were pruned: the export starts at the first one kept
    for (let at = Math.max(from, room.info.firstIndex ?? 0); at < end;) {
      const page = await room.readPage(at, Math.min(EXPORT_PAGE, end - at), EXPORT_PAGE_BYTES)
      if (page.entries.length === 0) throw new Error(`block ${at} of room ${JSON.stringify(name)} is missing from the store`)
      await write(io.stdout, page.entries.map(e => e.toString('utf8')).join('\n') + '\n')
      at = page.nextIndex
      progress.update(() => `${at}/${end} messages`)
    }
    progress.done()
  })
  return 0
}

export async function pruneCommand (argv: readonly string[], io: AdminIO): Promise<number> {
  const { flags, storageDir, config } = commandArgs(argv, { '--room': 'value' })
  const policy = { messages: config.retentionMessages, bytes: config.retentionBytes, maxAgeMs: config.retentionAge }
  if (!retentionOn(policy)) {
    throw new ConfigError('--retention-messages', 'prune: no retention is set: give RETENTION_MESSAGES, RETENTION_BYTES or RETENTION_DAYS (or --retention-messages, --retention-bytes, --retention-days)')
  }
  const only = flags['--room'] === undefined ? null : roomFlag(flags)
  const totals = await withDataDir(storageDir, async d => {
    const rooms = await d.open({ openAll: false })
    if (only !== null && await rooms.lookup(only) === undefined) throw RootPeerError.UNKNOWN_ROOM(only)
    const names = only !== null ? [only] : (await listAll(rooms)).map(r => r.name)
    const progress = new Progress(io.stderr, 'prune')
    let messages = 0
    let bytes = 0
    let pruned = 0
    for (let i = 0; i < names.length; i++) {
      const done = await rooms.prune(names[i], policy)
      if (done.messages > 0) pruned++
      messages += done.messages
      bytes += done.bytes
      progress.update(() => `${i + 1}/${names.length} rooms`)
    }
    progress.done()
    await d.save()
    return { rooms: names.length, pruned, messages, bytes }
  })
  await write(io.stdout, `pruned ${totals.messages} messages (${totals.bytes} bytes) from ${totals.pruned} of ${totals.rooms} rooms\n`)
  return 0
}

/** Indices are kept: an import is the room's own continuation or nothing, every line checked first. */
export async function importCommand (argv: readonly string[], io: AdminIO): Promise<number> {
  const { flags, storageDir } = commandArgs(argv, { '--room': 'value' })
  const name = roomFlag(flags)
  await withDataDir(storageDir, async d => {
    // the lock first: refused while a daemon runs, before stdin is read
    const rooms = await d.open({ create: true, openAll: false })
    const existing = await rooms.get(name)
    const start = existing?.length ?? 0
    const blocks = await readImport(io.stdin, start)
    const room = existing ?? (await rooms.get(name, { create: true }))!
    const progress = new Progress(io.stderr, `import ${name}`)
    let done = 0
    await Promise.all(blocks.map(block => room.append(block).then(() => {
      rooms.recordAppend(room, block.byteLength)
      progress.update(() => `${++done}/${blocks.length} messages`)
    })))
    progress.done()
    await d.save()
    const range = blocks.length === 0 ? '' : ` (indices ${start} to ${start + blocks.length - 1})`
    await write(io.stdout, `imported ${blocks.length} messages into room ${JSON.stringify(name)}${range}; it now holds ${room.length}\n`)
  })
  return 0
}

async function readImport (input: Readable, start: number): Promise<Buffer[]> {
  const blocks: Buffer[] = []
  let n = 0
  for await (const line of readline.createInterface({ input, crlfDelay: Infinity })) {
    n++
    blocks.push(importBlock(line, n, start + blocks.length))
  }
  return blocks
}

function importBlock (line: string, n: number, expected: number): Buffer {
  if (line.length > MAX_IMPORT_LINE) throw RootPeerError.BAD_IMPORT(n, `longer than ${MAX_IMPORT_LINE} characters`)
  let obj: any
  try {
    obj = JSON.parse(line)
  } catch {
    throw RootPeerError.BAD_IMPORT(n, line.trim() === '' ? 'empty line' : 'not JSON')
  }
  if (typeof obj !== 'object' || obj === null || Array.isArray(obj)) throw RootPeerError.BAD_IMPORT(n, 'not a JSON object')
  const unknown = Object.keys(obj).find(k => !RECORD_FIELDS.has(k))
  if (unknown !== undefined) throw RootPeerError.BAD_IMPORT(n, `unknown field ${JSON.stringify(unknown.slice(0, 64))}`)
  const { message, storedAt, fromPeer, senderPublicKey, id, signature, messageIndex } = obj
  if (messageIndex !== expected) {
    throw RootPeerError.BAD_IMPORT(n, `messageIndex is ${JSON.stringify(messageIndex)}, expected ${expected} (an import keeps indices: it must start at the room's length and count up by one)`)
  }
  if (message === undefined || message === null) throw RootPeerError.BAD_IMPORT(n, 'message missing or null')
  if (!Number.isSafeInteger(storedAt) || storedAt < 0) throw RootPeerError.BAD_IMPORT(n, 'storedAt is not a non-negative integer')
  if (typeof fromPeer !== 'string') throw RootPeerError.BAD_IMPORT(n, 'fromPeer is not a string')
  if (typeof senderPublicKey !== 'string') throw RootPeerError.BAD_IMPORT(n, 'senderPublicKey is not a string')
  if (id !== undefined && (typeof id !== 'string' || id.length === 0 || id.length > MAX_ID)) {
    throw RootPeerError.BAD_IMPORT(n, `id is not a string of 1 to ${MAX_ID} characters`)
  }
  if (signature !== undefined && (typeof signature !== 'string' || !/^[0-9a-f]{128}$/.test(signature))) {
    throw RootPeerError.BAD_IMPORT(n, 'signature is not 128 lowercase hex characters')
  }
  // the block the daemon would have stored: the same bytes, so a re-export is identical
  return Buffer.from(encodeRecord({ message, storedAt, fromPeer, senderPublicKey, id, signature }, JSON.stringify(message)))
}

export async function verifyCommand (argv: readonly string[], io: AdminIO): Promise<number> {
  const { flags, storageDir } = commandArgs(argv, { '--repair': 'bool' })
  const repair = flags['--repair'] === true
  return withDataDir(storageDir, async d => {
    const progress = new Progress(io.stderr, 'verify')
    let opened = 0
    const rooms = await d.open({ moveBad: repair, onRoomOpened: () => progress.update(() => `opened ${++opened} rooms`) })
    progress.done()
    const { state: saved, problem } = d.loaded!
    const mismatches: string[] = []
    if (problem === 'missing') {
      if (rooms.size > 0) mismatches.push('there is no state file')
    } else if (problem !== null) {
      mismatches.push(`the state file is ${problem}`)
    }
    for (const info of (await listAll(rooms)).sort(SORTS.name)) {
      if (saved === null) break
      const was = Object.hasOwn(saved.rooms, info.name) ? saved.rooms[info.name] : null
      const core = `the core has ${info.messageCount} messages, ${info.byteLength} bytes`
      // a state file of many rooms lists the most recently active ones only (docs/scaling.md)
      if (was === null) {
        if (saved.roomsListed !== 'most-recent') mismatches.push(`room ${JSON.stringify(info.name)}: in the room index, not in the state file; ${core}`)
      } else if (was.messageCount !== info.messageCount || was.byteLength !== info.byteLength) {
        mismatches.push(`room ${JSON.stringify(info.name)}: the state file says ${was.messageCount} messages, ${was.byteLength} bytes; ${core}`)
      }
    }
    if (saved !== null && saved.totalMessages !== rooms.totalMessages) {
      mismatches.push(`totalMessages: the state file says ${saved.totalMessages}; the cores hold ${rooms.totalMessages}`)
    }
    const summary = `${rooms.size} rooms, ${rooms.totalMessages} messages`
    let out = mismatches.map(m => `mismatch: ${m}\n`).join('')
    let code = 0
    if (mismatches.length === 0) {
      out += `consistent: ${summary}\n`
    } else if (repair) {
      await d.save()
      out += `repaired: the state file was rewritten from the cores (${summary})\n`
    } else {
      out += `${mismatches.length} mismatches (${summary}); verify --repair rewrites the state file from the cores\n`
      code = 1
    }
    await write(io.stdout, out)
    return code
  })
}

function roomFlag (flags: Flags): string {
  const room = flags['--room']
  if (typeof room !== 'string') throw new ConfigError('--room', '--room <name> is required')
  try {
    return validateRoomName(room)
  } catch (err) {
    throw new ConfigError('--room', `--room: ${(err as Error).message}`)
  }
}

function indexFlag (flag: string, value: string): number {
  const n = /^\d+$/.test(value) ? Number(value) : NaN
  if (!Number.isSafeInteger(n)) throw new ConfigError(flag, `${flag}: ${JSON.stringify(value)} is not a non-negative integer`)
  return n
}

/** Waits for the stream to drain: a slow reader of a pipe holds export up, not memory. */
export async function write (stream: Writable, text: string): Promise<void> {
  if (!stream.write(text)) await once(stream, 'drain')
}

function table (head: string[], right: boolean[], rows: string[][]): string {
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map(r => r[i].length)))
  const line = (cells: string[]): string => cells.map((c, i) => right[i] ? c.padStart(widths[i]) : c.padEnd(widths[i])).join('  ').trimEnd() + '\n'
  return line(head) + rows.map(line).join('')
}

function isoDate (ms: number): string {
  return ms > 0 ? new Date(ms).toISOString().replace(/\.\d{3}Z$/, 'Z') : '-'
}
