#!/usr/bin/env node
// `npm start`: the daemon of dist/, in this process. src/ (and the client package's, packages/client/src) is compiled first only when dist/ is missing or
// older than it and TypeScript is installed: a production install (npm ci --omit=dev) has no compiler and
// runs the dist/ it was given. package.json execs this script: npm's child is the daemon, and gets its signals.
import { spawnSync } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
const bin = path.join(root, 'dist', 'bin.js')
const built = modified(bin)

const sources = ['src', 'tsconfig.json', 'tsconfig.build.json', 'packages/client/src', 'packages/client/tsconfig.build.json']
if (built === 0 || built < newest(sources.map(p => path.join(root, p)))) {
  if (fs.existsSync(path.join(root, 'node_modules', '.bin', 'tsc'))) {
    // stdout is the daemon's: one JSON log line each
    const { status } = spawnSync('npm', ['run', 'build'], { cwd: root, stdio: ['ignore', process.stderr, process.stderr] })
    if (status !== 0) process.exit(status ?? 1)
  } else if (built === 0) {
    console.error('root-peer: dist/ is not built, and TypeScript is not installed here (a production install has no dev dependencies): build it with `npm ci && npm run build` (then `npm prune --omit=dev`), or copy a built dist/ here')
    process.exit(1)
  } else {
    console.error('root-peer: src/ changed after dist/ was built, and TypeScript is not installed to build it again: running dist/ as it is')
  }
}

await import(pathToFileURL(bin).href)

function modified (file) {
  return fs.statSync(file, { throwIfNoEntry: false })?.mtimeMs ?? 0
}

/** The latest modification time of these files and of every file under these directories (0: none exists). */
function newest (paths) {
  let latest = 0
  for (const p of paths) {
    const stat = fs.statSync(p, { throwIfNoEntry: false })
    if (stat === undefined) continue
    latest = Math.max(latest, stat.mtimeMs)
    if (stat.isDirectory()) for (const f of fs.readdirSync(p, { recursive: true })) latest = Math.max(latest, modified(path.join(p, f)))
  }
  return latest
}
