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
import { roomKeyPair, signedRoomName, signMessage } from 'root-peer-client/protocol'
import { ROOT, bootstrapEnv, childEnv, daemon, runBin, teardown, testnet, tmpDir, type Bin } from './helpers.js'

const BARE = path.join(ROOT, 'node_modules/.bin/bare')
// `npm ci --omit=dev` of root-peer 1.0.0, where the client came with the daemon (the figure)
const DAEMON_INSTALL_MB = 312

/** Runs a command to completion in `cwd`; fails with its output unless it exits 0. */
async function run (command: string, args: string[], cwd: string): Promise<string> {
  const child = spawn(command, args, { cwd, env: childEnv(), stdio: ['ignore', 'pipe', 'pipe'] })
  let out = ''
  child.stdout!.setEncoding('utf8').on('data', (c: string) => { out += c })
  child.stderr!.setEncoding('utf8').on('data', (c: string) => { out += c })
  const [code] = await once(child, 'exit')
  assert.equal(code, 0, `${command} ${args.join(' ')} in ${cwd}: ${out.slice(-3000)}`)
  return out
}

const npmInstall = (dir: string, tarballs: string[]): Promise<string> =>
  run('npm', ['install', '--prefer-offline', '--no-audit', '--no-fund', '--loglevel=error', ...tarballs], dir)

/** The bytes under `dir`, as `du` counts them (blocks on disk), in MB. */
async function sizeMb (dir: string): Promise<number> {
  return Number((await run('du', ['-sm', dir], dir)).split('\t')[0])
}

/**
 * Both packages as npm publishes them (`npm pack`, which builds dist/ first), each installed from its tarball into a
 * directory of its own outside this checkout, so nothing resolves through the repository's node_modules: the daemon
 * (root-peer with the root-peer-client it depends on) and a chat app with the client alone.
 */
async function installed (t: Parameters<typeof teardown>[0]): Promise<{ server: string, app: string }> {
  const packs = await tmpDir(t, 'root-peer-packs-')
  await run('npm', ['pack', '--workspace', 'root-peer-client', '--include-workspace-root', '--pack-destination', packs, '--loglevel=error'], ROOT)
  const tarballs = (await fs.readdir(packs)).sort()
  const client = path.join(packs, tarballs.find(f => f.startsWith('root-peer-client-'))!)
  const server = await tmpDir(t, 'root-peer-server-')
  // until both are on the registry, npm finds the daemon's dependency root-peer-client in the tarball beside it
  await npmInstall(server, [client, path.join(packs, tarballs.find(f => /^root-peer-\d/.test(f))!)])
  const app = await tmpDir(t, 'chat-app-')
  await fs.writeFile(path.join(app, 'package.json'), JSON.stringify({ name: 'chat-app', private: true, type: 'module' }))
  await npmInstall(app, [client])
  await fs.copyFile(path.join(ROOT, 'test/fixtures/app-client.js'), path.join(app, 'app-client.js'))
  return { server, app }
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
    this.child = spawn(runtime, [path.join(dir, 'app-client.js'), ...args], { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] })
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

// the runtime is an optional dependency of the dev tools (Linux x64 only): elsewhere Bare's half is skipped, never in CI
const haveBare = existsSync(BARE)
if (!haveBare && process.env.CI !== undefined) throw new Error(`${BARE} is missing: npm ci did not install bare-runtime-linux-x64 (packages/dev-tools)`)

test('both packages from their tarballs: an app with root-peer-client alone, on Bare and on Node, and a daemon started with `npx root-peer`: a signed room, acks, a daemon restart, resends, a verified paged sync, a follow', async t => {
  const { server, app } = await installed(t)
  const appMb = await sizeMb(path.join(app, 'node_modules'))
  const serverMb = await sizeMb(path.join(server, 'node_modules'))
  console.log(`the app's node_modules (root-peer-client alone): ${appMb} MB, ${(appMb / DAEMON_INSTALL_MB).toFixed(2)} of the ${DAEMON_INSTALL_MB} MB the client cost with the daemon; the daemon's: ${serverMb} MB`)
  assert.ok(appMb <= DAEMON_INSTALL_MB / 5, `the app's install (${appMb} MB) is at most a fifth of ${DAEMON_INSTALL_MB} MB`)
  assert.ok(!existsSync(path.join(app, 'node_modules/root-peer')) && !existsSync(path.join(app, 'node_modules/corestore')), 'nothing of the daemon comes with the client')
  for (const tool of ['bare-runtime-linux-x64', 'typescript', 'tsx']) assert.ok(!existsSync(path.join(server, 'node_modules', tool)), `the daemon's install carries no ${tool}`)

  const npx: Bin = { argv: ['npx', '--no-install', 'root-peer'], cwd: server, launcher: true }
  const help = await runBin(['--help'], {}, '', npx)
  assert.equal(help.code, 0, help.stderr)
  assert.match(help.stdout + help.stderr, /Usage: root-peer/)
  // the old path, deprecated: the same class as the package's
  const old = await run(process.execPath, ['--input-type=module', '-e', "const [a, b] = await Promise.all([import('root-peer/client'), import('root-peer-client')]); console.log(a.RootPeerClient === b.RootPeerClient)"], server)
  assert.equal(old.trim(), 'true')

  const net = await testnet(t)
  const storage = await tmpDir(t)
  const env = { STORAGE_DIR: storage, DHT_BOOTSTRAP: bootstrapEnv(net), DHT_HOST: '127.0.0.1', STATS_INTERVAL: '0' }
  const first = daemon(t, [], env, [], npx)
  const key = await first.ready()

  const runtimes: Record<string, string> = { node: process.execPath }
  if (haveBare) runtimes.bare = BARE
  else t.diagnostic(`no Bare runtime at ${BARE} (bare-runtime-linux-x64 installs on Linux x64 only): Node's half only`)
  const scripts = new Map<string, { script: Script, roomName: string }>()
  for (const [name, runtime] of Object.entries(runtimes)) {
    const roomKey = crypto.randomBytes(32)
    const script = new Script(runtime, app, [bootstrapEnv(net), key, roomKey.toString('hex')])
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
    const imported = await runBin(['import', '--room', roomName], env, records.map(r => JSON.stringify(r)).join('\n') + '\n', npx)
    assert.equal(imported.code, 0, imported.stderr)
  }
  const second = daemon(t, [], env, [], npx)
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
