import fs from 'node:fs/promises'
import path from 'node:path'
import * as tar from 'tar'
import { ConfigError } from './config.js'
import { commandArgs, write, type AdminIO } from './admin.js'
import { DEVICE_FILE, openStore } from './data-dir-lock.js'
import { RootPeerError } from './errors.js'
import { Progress, formatBytes } from './progress.js'
import { STATE_FILE } from './state-file.js'

/**
 * `backup --out FILE`: the data dir as a .tar.gz, made while holding the data dir's lock.
 * The store is flushed and compacted first, so no RocksDB background work rewrites its files while they are
 * read. The device file (CORESTORE) is left out: it belongs to the place the store lives in, and `restore`
 * makes a new one.
 */
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
    const entries = (await fs.readdir(storageDir)).filter(f => f !== DEVICE_FILE && !f.endsWith('.tmp')).sort()
    const total = await sizeOf(storageDir)
    const progress = new Progress(io.stderr, 'backup')
    let done = 0
    await tar.create({
      gzip: true,
      file: tmp,
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

/**
 * `restore --from FILE [--force]`: a backup unpacked into the data dir. Refused while a process holds the dir,
 * and for a non-empty dir unless `--force` (which empties it first, when it is a data dir).
 */
export async function restoreCommand (argv: readonly string[], io: AdminIO): Promise<number> {
  const { flags, storageDir } = commandArgs(argv, { '--from': 'value', '--force': 'bool' })
  if (typeof flags['--from'] !== 'string') throw new ConfigError('--from', '--from <file> is required')
  const file = path.resolve(flags['--from'])

  const present: string[] = await fs.readdir(storageDir).catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') return []
    throw err
  })
  // DATA_DIR_LOCKED while a daemon runs on it
  if (present.includes(DEVICE_FILE)) await (await openStore(storageDir, { create: false })).close()
  // the archive is read through before the data dir is touched
  const names = await listArchive(file)
  if (!names.includes('db/CURRENT')) throw RootPeerError.BAD_ARCHIVE(file, 'it holds no db/CURRENT')
  if (present.length > 0 && flags['--force'] !== true) throw RootPeerError.NOT_EMPTY(storageDir)
  // --force empties a data dir, never a dir that holds something else (a STORAGE_DIR set wrong)
  if (present.length > 0 && !present.some(f => f === DEVICE_FILE || f === 'db' || f.startsWith(STATE_FILE))) {
    throw RootPeerError.NOT_EMPTY(storageDir, ' and is not a root peer data dir: restore --force empties only a data dir')
  }
  for (const f of present) await fs.rm(path.join(storageDir, f), { recursive: true, force: true })
  await fs.mkdir(storageDir, { recursive: true })

  // db/ first; then the store is opened, which writes a device file for this place and takes the lock;
  // then the rest (the state file), which the store's first open would otherwise move into db/
  const progress = new Progress(io.stderr, 'restore')
  let count = 0
  const onReadEntry = (): void => progress.update(() => `${++count} of ${names.length} files`)
  await tar.extract({ file, cwd: storageDir, strict: true, filter: p => isDb(p), onReadEntry })
  const store = await openStore(storageDir)
  try {
    await tar.extract({ file, cwd: storageDir, strict: true, filter: p => !isDb(p) && clean(p) !== DEVICE_FILE, onReadEntry })
  } finally {
    await store.close()
  }
  progress.done()
  await write(io.stdout, `restored ${file} into ${storageDir} (${names.length} entries)\n`)
  return 0
}

async function listArchive (file: string): Promise<string[]> {
  const names: string[] = []
  try {
    await tar.list({ file, strict: true, onReadEntry: entry => { names.push(clean(entry.path)) } })
  } catch (err: any) {
    if (err?.code === 'ENOENT') throw RootPeerError.BAD_ARCHIVE(file, 'no such file')
    throw RootPeerError.BAD_ARCHIVE(file, err?.message ?? String(err))
  }
  if (names.length === 0) throw RootPeerError.BAD_ARCHIVE(file, 'it is empty')
  return names
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
