import assert from 'node:assert/strict'
import { spawn, type ChildProcess } from 'node:child_process'
import { EventEmitter, once } from 'node:events'
import { existsSync } from 'node:fs'
import fs from 'node:fs/promises'
import path from 'node:path'
import readline from 'node:readline'
import { test } from 'node:test'
import crypto from 'hypercore-crypto'
import safetyCatch from 'safety-catch'
import { roomKeyPair, signedRoomName, signMessage } from '../src/protocol/room-auth.js'
import { ROOT, bootstrapEnv, daemon, runBin, teardown, testnet, tmpDir } from './helpers.js'

const BARE = path.join(ROOT, 'node_modules/.bin/bare')

/**
 * `root-peer/client` as a chat app gets it: the client's sources compiled on their own (so nothing of the daemon
 * comes along) into a copy of the package, which the fixture script imports by the package's name.
 */
async function clientPackage (t: Parameters<typeof teardown>[0]): Promise<string> {
  const dir = await tmpDir(t, 'root-peer-client-')
  await fs.writeFile(path.join(dir, 'tsconfig.json'), JSON.stringify({
    extends: path.join(ROOT, 'tsconfig.build.json'),
    compilerOptions: { outDir: path.join(dir, 'dist'), declaration: false, sourceMap: false },
    files: [path.join(ROOT, 'src/client/index.ts'), path.join(ROOT, 'src/modules.d.ts')],
    include: []
  }))
  await fs.copyFile(path.join(ROOT, 'package.json'), path.join(dir, 'package.json'))
  await fs.copyFile(path.join(ROOT, 'test/fixtures/bare-client.js'), path.join(dir, 'bare-client.js'))
  await fs.symlink(path.join(ROOT, 'node_modules'), path.join(dir, 'node_modules'))
  const tsc = spawn(process.execPath, [path.join(ROOT, 'node_modules/typescript/bin/tsc'), '-p', dir], { stdio: 'inherit' })
  const [code] = await once(tsc, 'exit')
  assert.equal(code, 0, 'the client compiles on its own')
  return dir
}

/** The fixture script under one runtime, its JSON lines parsed as they come. */
class Script extends EventEmitter {
  readonly lines: any[] = []
  readonly stderr: string[] = []
  readonly child: ChildProcess
  readonly exited: Promise<number | null>
  private closed = false

  constructor (runtime: string, dir: string, args: string[]) {
    super()
    this.child = spawn(runtime, [path.join(dir, 'bare-client.js'), ...args], { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] })
    readline.createInterface({ input: this.child.stdout! }).on('line', text => {
      this.lines.push(JSON.parse(text))
      this.emit('line')
    })
    this.child.stderr!.setEncoding('utf8').on('data', (chunk: string) => this.stderr.push(chunk))
    this.exited = once(this.child, 'close').then(([code]) => {
      this.closed = true
      this.emit('line')
      return code
    })
  }

  /** The line of the step `name`, once printed; fails when the script ends or `timeout` ms pass without it. */
  async step (name: string, timeout = 60_000): Promise<any> {
    const signal = AbortSignal.timeout(timeout)
    let line
    while ((line = this.lines.find(l => l.step === name)) === undefined) {
      const why = this.closed ? 'the script ended' : signal.aborted ? `${timeout} ms passed` : null
      if (why !== null) throw new Error(`${why} before the ${name} step; printed ${JSON.stringify(this.lines)}; stderr ${this.stderr.join('')}`)
      await once(this, 'line', { signal }).catch(safetyCatch)
    }
    return line
  }
}

// the runtime is an optional dependency (Linux x64 only): elsewhere it is skipped, but never in CI
const haveBare = existsSync(BARE)
if (!haveBare && process.env.CI !== undefined) throw new Error(`${BARE} is missing: npm ci did not install bare-runtime-linux-x64`)

test('the client runs unchanged on Bare and on Node: a signed room, acks, a daemon restart, resends, a verified paged sync, a follow', { skip: haveBare ? false : 'no bare runtime (bare-runtime-linux-x64 installs on Linux x64 only)' }, async t => {
  const dir = await clientPackage(t)
  const net = await testnet(t)
  const storage = await tmpDir(t)
  const env = { STORAGE_DIR: storage, DHT_BOOTSTRAP: bootstrapEnv(net), DHT_HOST: '127.0.0.1', STATS_INTERVAL: '0' }
  const first = daemon(t, [], env)
  const key = await first.ready()

  const runtimes = { bare: BARE, node: process.execPath }
  const scripts = new Map<string, { script: Script, roomName: string }>()
  for (const [name, runtime] of Object.entries(runtimes)) {
    const roomKey = crypto.randomBytes(32)
    const script = new Script(runtime, dir, [bootstrapEnv(net), key, roomKey.toString('hex')])
    teardown(t, () => { script.child.kill('SIGKILL') })
    scripts.set(name, { script, roomName: signedRoomName(roomKeyPair(roomKey).publicKey) })
  }
  for (const [name, { script, roomName }] of scripts) {
    assert.deepEqual(await script.step('registered'), { step: 'registered', roomName, messageCount: 0, access: 2 }, name)
    assert.deepEqual((await script.step('sent')).acks, [0, 1, 2], name)
  }

  assert.equal((await first.stop('SIGTERM')).code, 0)
  for (const [name, { script }] of scripts) assert.equal((await script.step('queued')).unacked, 2, name)
  // while it is down, someone with the data dir slips two records in: one signed by another key, one unsigned
  for (const { roomName } of scripts.values()) {
    const forged = { id: 'forged', message: 'forged', signature: signMessage(crypto.keyPair().secretKey, roomName, 'forged', 'forged') }
    const records = [forged, { id: 'unsigned', message: 'unsigned' }].map((r, i) => ({ ...r, storedAt: Date.now(), fromPeer: key, senderPublicKey: key, messageIndex: 3 + i }))
    const imported = await runBin(['import', '--room', roomName], env, records.map(r => JSON.stringify(r)).join('\n') + '\n')
    assert.equal(imported.code, 0, imported.stderr)
  }
  const second = daemon(t, [], env)
  assert.equal(await second.ready(), key)

  for (const [name, { script, roomName }] of scripts) {
    assert.deepEqual(await script.step('resent'), { step: 'resent', acks: [5, 6], unacked: 0 }, name)
    assert.deepEqual(await script.step('followed'), { step: 'followed', indices: [0, 1, 2, 5, 6, 7], rejected: 2 }, name)
    assert.equal((await script.step('done')).recordsRejected, 2, name)
    assert.equal(await script.exited, 0, `${name} exits by itself once closed; stderr: ${script.stderr.join('')}`)
    const pages = script.lines.filter(l => l.step === 'page')
    assert.deepEqual(pages.map(p => p.indices), [[0, 1], [2], [5], [6]], name)
    assert.deepEqual(pages.flatMap(p => p.messages), ['before 0', 'before 1', 'before 2', 'while down 0', 'while down 1'], name)
    const rejected = [
      { event: 'record-rejected', roomName, messageIndex: 3, reason: 'bad-signature' },
      { event: 'record-rejected', roomName, messageIndex: 4, reason: 'unsigned' }
    ]
    // once by the sync, once by the follow
    assert.deepEqual(script.lines.filter(l => l.event === 'record-rejected'), [...rejected, ...rejected], name)
    const connects = script.lines.filter(l => l.event === 'connect')
    assert.deepEqual(connects.map(l => l.publicKey), [key, key], `${name}: connected, then again after the restart`)
    assert.deepEqual(script.lines.filter(l => l.event === 'disconnect').map(l => l.publicKey), [key, key], `${name}: by the restart, and by close()`)
  }
})
