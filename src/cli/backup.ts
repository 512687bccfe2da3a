import { createReadStream } from 'node:fs'
import fs from 'node:fs/promises'
import path from 'node:path'
import * as tar from 'tar'
import { ConfigError } from '../config.js'
import { commandArgs, write, type AdminIO } from './admin.js'
import { DEFAULT_WRITE_BUFFER, DEVICE_FILE, makePrivate, openStore } from '../storage/data-dir-lock.js'
import { freeBytes, fullBelow } from '../storage/disk.js'
import { RootPeerError } from 'root-peer-client/protocol'
import { Progress, formatBytes } from './progress.js'
import { STATE_FILE, STATE_FILE_PREFIX } from '../storage/state-file.js'
import safetyCatch from 'safety-catch'

// RocksDB's files are tens of MiB
const MAX_ENTRY_BYTES = 16 * 1024 ** 3
const MAX_ENTRIES = 1_000_000
const MAX_PATH = 1024
// restore works inside the data dir: a mount point (a Docker volume) cannot be renamed, and it is one fs
const RESTORE_WORK = '.restore-'

/** Flushed and compacted first, so no RocksDB background work rewrites files while they are read. */
export async function backupCommand (argv: readonly string[], io: AdminIO): Promise<number> {
  const { flags, storageDir } = commandArgs(argv, { '--out': 'value' })
  if (typeof flags['--out'] !== 'string') throw new ConfigError('--out', '--out <file> is required')
  const out = path.resolve(flags['--out'])
  if (!path.relative(storageDir, out).startsWith('..')) throw new ConfigError('--out', `--out: ${out} is inside the data dir ${storageDir}`)

  const store = await openStore(storageDir, { create: false })
  const tmp = `${out}.tmp-${process.pid}`
  try {
    await store.storage.db.flush()
    await store.storage.compact()
    const entries = (await fs.readdir(storageDir)).filter(f => f !== DEVICE_FILE && !f.endsWith('.tmp') && !f.startsWith(RESTORE_WORK)).sort()
    const total = await sizeOf(storageDir)
    const progress = new Progress(io.stderr, 'backup')
    let done = 0
    // made afresh, so its mode is ours: it holds the root peer's secret key and every room
    await fs.rm(tmp, { force: true })
    await tar.create({
      gzip: true,
      file: tmp,
      mode: 0o600,
      cwd: storageDir,
      portable: true,
      // a file that vanishes or cannot be read fails the backup instead of leaving it out
      strict: true,
      filter: (_p, stat) => {
        done += (stat as { size?: number }).size ?? 0
        progress.update(() => `${formatBytes(done)} of ${formatBytes(total)}`)
        return true
      }
    }, entries)
    progress.done()
    const handle = await fs.open(tmp, 'r')
    await handle.sync().finally(() => handle.close())
    await fs.rename(tmp, out)
  } catch (err) {
    await fs.rm(tmp, { force: true })
    throw err
  } finally {
    await store.close()
  }
  const { size } = await fs.stat(out)
  await write(io.stdout, `backup of ${storageDir} written to ${out} (${formatBytes(size)})\n`)
  return 0
}

/** Every entry is checked before the dir is touched; the old contents are put back if anything fails. */
export async function restoreCommand (argv: readonly string[], io: AdminIO): Promise<number> {
  const { flags, storageDir } = commandArgs(argv, { '--from': 'value', '--force': 'bool' })
  if (typeof flags['--from'] !== 'string') throw new ConfigError('--from', '--from <file> is required')
  const file = path.resolve(flags['--from'])

  const present: string[] = await fs.readdir(storageDir).catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') return []
    throw err
  })
  const stale = present.find(f => f.startsWith(RESTORE_WORK))
  if (stale !== undefined) {
    throw RootPeerError.NOT_EMPTY(storageDir, `: ${stale} is left from an interrupted restore and may hold the previous contents; move it out of the data dir first`)
  }
  // DATA_DIR_LOCKED while a daemon runs on it
  if (present.includes(DEVICE_FILE)) await (await openStore(storageDir, { create: false })).close()
  const entries = await checkArchive(file, storageDir)
  if (present.length > 0 && flags['--force'] !== true) throw RootPeerError.NOT_EMPTY(storageDir)
  // --force replaces a data dir, never a dir that holds something else (a STORAGE_DIR set wrong)
  if (present.length > 0 && !present.some(f => f === DEVICE_FILE || f === 'db' || f.startsWith(STATE_FILE))) {
    throw RootPeerError.NOT_EMPTY(storageDir, ' and is not a root peer data dir: restore --force replaces only a data dir')
  }

  await fs.mkdir(storageDir, { recursive: true, mode: 0o700 })
  const work = path.join(storageDir, `${RESTORE_WORK}${process.pid}`)
  const aside = path.join(work, 'old')
  const progress = new Progress(io.stderr, 'restore')
  try {
    await fs.mkdir(path.join(work, 'new'), { recursive: true, mode: 0o700 })
    await unpack(file, path.join(work, 'new'), entries, progress)
    await swap(storageDir, work)
  } catch (err) {
    progress.done()
    const kept = await fs.readdir(aside).then(list => list.length > 0, () => false)
    if (!kept) await fs.rm(work, { recursive: true, force: true }).catch(safetyCatch)
    if (err instanceof TypeError || err instanceof ReferenceError) throw err
    const note = kept ? `the previous contents are in ${aside}: move them back into ${storageDir}` : `${storageDir} was left as it was`
    if (err instanceof RootPeerError) throw new RootPeerError(err.code, `${err.message}; ${note}`, err.details)
    throw new Error(`${(err as Error)?.message ?? err}; ${note}`)
  }
  progress.done()
  await fs.rm(work, { recursive: true, force: true })
  await makePrivate(storageDir)
  await write(io.stdout, `restored ${file} into ${storageDir} (${entries} entries)\n`)
  return 0
}

async function checkArchive (file: string, dir: string): Promise<number> {
  const free = await freeBytes(await existingParent(dir))
  const room = free === null ? Infinity : free - fullBelow(DEFAULT_WRITE_BUFFER)
  let entries = 0
  let bytes = 0
  let current = false
  let refusal: RootPeerError | null = null
  const parser = new tar.Parser({
    strict: true,
    onReadEntry: entry => {
      entry.resume()
      if (refusal !== null) return
      const problem = entryProblem(entry) ?? (++entries > MAX_ENTRIES ? `it holds more than ${MAX_ENTRIES} entries` : null)
      bytes += entry.size ?? 0
      if (clean(entry.path) === 'db/CURRENT') current = true
      if (problem !== null) refusal = RootPeerError.BAD_ARCHIVE(file, problem)
      else if (bytes > room) refusal = new RootPeerError('STORAGE_FULL', `${file} holds more than ${formatBytes(bytes)}, and the disk of ${dir} has ${formatBytes(Math.max(free ?? 0, 0))} free`, { freeBytes: free })
      if (refusal !== null) parser.abort(new Error(refusal.message))
    }
  })
  try {
    await new Promise<void>((resolve, reject) => {
      const input = createReadStream(file)
      input.on('error', reject)
      parser.on('error', err => {
        input.destroy()
        reject(err)
      })
      parser.on('end', resolve)
      input.pipe(parser)
    })
  } catch (err: any) {
    if (refusal !== null) throw refusal
    if (err?.code === 'ENOENT') throw RootPeerError.BAD_ARCHIVE(file, 'no such file')
    throw RootPeerError.BAD_ARCHIVE(file, err?.message ?? String(err))
  }
  if (entries === 0) throw RootPeerError.BAD_ARCHIVE(file, 'it is empty')
  if (!current) throw RootPeerError.BAD_ARCHIVE(file, 'it holds no db/CURRENT')
  return entries
}

function entryProblem (entry: tar.ReadEntry): string | null {
  const p = entry.path
  const name = JSON.stringify(p.slice(0, 200))
  if (entry.type !== 'File' && entry.type !== 'Directory') return `entry ${name} is a ${entry.type} (only regular files and dirs are restored)`
  if (p.startsWith('/') || /^[a-zA-Z]:/.test(p)) return `entry ${name} is an absolute path`
  if (p.split(/[/\\]/).includes('..')) return `entry ${name} climbs out of the dir (..)`
  const c = clean(p)
  if (p.length > MAX_PATH || /[\\\0]/.test(p) || c === '' || path.posix.normalize(c) !== c) return `entry ${name} is not a plain relative path`
  const top = c.split('/')[0]
  const ours = top === 'db'
    ? c !== 'db' || entry.type === 'Directory'
    : c === top && entry.type === 'File' && (top.startsWith(STATE_FILE_PREFIX) || top === DEVICE_FILE)
  if (!ours) return `entry ${name} is not part of a data dir (db/ and the state files)`
  if ((entry.size ?? 0) > MAX_ENTRY_BYTES) return `entry ${name} declares ${formatBytes(entry.size)}, more than the ${formatBytes(MAX_ENTRY_BYTES)} a file of a data dir may have`
  return null
}

/** db/ first, then the store is opened (its first open would move any other file into db/), then the rest. */
async function unpack (file: string, dir: string, entries: number, progress: Progress): Promise<void> {
  let count = 0
  const onReadEntry = (): void => progress.update(() => `${++count} of ${entries} entries`)
  // checked again as they are unpacked, in case the file changed since: a bad entry is never written
  const safe = (p: string, e: unknown): boolean => entryProblem(e as tar.ReadEntry) === null && clean(p) !== DEVICE_FILE
  await tar.extract({ file, cwd: dir, strict: true, preserveOwner: false, filter: (p, e) => safe(p, e) && isDb(p), onReadEntry })
  let store
  try {
    store = await openStore(dir)
  } catch (err: any) {
    throw RootPeerError.BAD_ARCHIVE(file, `its store does not open (${err?.message ?? err})`)
  }
  try {
    await tar.extract({ file, cwd: dir, strict: true, preserveOwner: false, filter: (p, e) => safe(p, e) && !isDb(p), onReadEntry })
  } finally {
    await store.close()
  }
}

/** Swaps the data dir's contents for `work/new`'s, undoing every move if any step fails. */
async function swap (dir: string, work: string): Promise<void> {
  const fresh = path.join(work, 'new')
  const aside = path.join(work, 'old')
  const old = (await fs.readdir(dir)).filter(f => path.join(dir, f) !== work).sort()
  const incoming = await fs.readdir(fresh)
  const moved: Array<[string, string]> = []
  const move = async (from: string, to: string): Promise<void> => {
    await fs.rename(from, to)
    moved.push([from, to])
  }
  try {
    await fs.mkdir(aside, { mode: 0o700 })
    for (const f of old) await move(path.join(dir, f), path.join(aside, f))
    for (const f of incoming) await move(path.join(fresh, f), path.join(dir, f))
    // the device file accepts its new place (a rename keeps its inode), and no one took the dir meanwhile
    await (await openStore(dir, { create: false })).close()
  } catch (err) {
    for (const [from, to] of moved.reverse()) await fs.rename(to, from).catch(safetyCatch)
    throw err
  }
}

async function existingParent (dir: string): Promise<string> {
  let d = dir
  while (d !== path.dirname(d) && !await fs.stat(d).then(() => true, () => false)) d = path.dirname(d)
  return d
}

function clean (p: string): string {
  return p.replace(/^\.\//, '').replace(/\/$/, '')
}

function isDb (p: string): boolean {
  const c = clean(p)
  return c === 'db' || c.startsWith('db/')
}

async function sizeOf (dir: string): Promise<number> {
  let total = 0
  for (const entry of await fs.readdir(dir, { recursive: true, withFileTypes: true })) {
    if (entry.isFile()) total += (await fs.stat(path.join(entry.parentPath ?? entry.path, entry.name)).catch(() => ({ size: 0 }))).size
  }
  return total
}
