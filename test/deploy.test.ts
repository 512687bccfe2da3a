import assert from 'node:assert/strict'
import { execFile, spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { existsSync } from 'node:fs'
import fs from 'node:fs/promises'
import { createRequire } from 'node:module'
import path from 'node:path'
import { test } from 'node:test'
import { promisify } from 'node:util'
import { ROOT, UNDER_CI, assertPresent, bootstrapEnv, childEnv, findTool, skipUnlessCI, teardown, testnet, tmpDir } from './helpers.js'

const run = promisify(execFile)
const DEPLOY = path.join(ROOT, 'deploy')

interface Instruction { op: string, args: string }
interface Stage { from: string, name: string | null, instructions: Instruction[] }

/** Enough of a Dockerfile parser for these checks: continuation lines joined, comments dropped, split into stages. */
function parseDockerfile (text: string): Stage[] {
  const stages: Stage[] = []
  let pending = ''
  for (const raw of text.split('\n')) {
    const line = raw.trim()
    if (line.startsWith('#') || (line === '' && pending === '')) continue
    if (line.endsWith('\\')) {
      pending += line.slice(0, -1) + ' '
      continue
    }
    const full = (pending + line).trim()
    pending = ''
    if (full === '') continue
    const [, op, args] = /^(\S+)\s*(.*)$/.exec(full)!
    if (op.toUpperCase() === 'FROM') {
      const m = /^(\S+)(?:\s+AS\s+(\S+))?$/i.exec(args)!
      stages.push({ from: m[1], name: m[2] ?? null, instructions: [] })
    } else {
      assert.ok(stages.length > 0, `${op} before the first FROM`)
      stages[stages.length - 1].instructions.push({ op: op.toUpperCase(), args })
    }
  }
  return stages
}

function all (stage: Stage, op: string): string[] {
  return stage.instructions.filter(i => i.op === op).map(i => i.args)
}

/** `KEY=value` pairs of every ENV line of a stage. */
function envOf (stage: Stage): Record<string, string> {
  const env: Record<string, string> = {}
  for (const args of all(stage, 'ENV')) for (const m of args.matchAll(/(\w+)=(\S+)/g)) env[m[1]] = m[2]
  return env
}

async function dockerfile (): Promise<{ build: Stage, runtime: Stage }> {
  const stages = parseDockerfile(await fs.readFile(path.join(ROOT, 'Dockerfile'), 'utf8'))
  assert.equal(stages.length, 2, 'two stages: build and runtime')
  return { build: stages[0], runtime: stages[1] }
}

test('Dockerfile: a build stage running npm run build; a runtime stage with production dependencies and dist/ only, a non-root user, /data, the monitor port, a node HEALTHCHECK, node as PID 1', async () => {
  const { build, runtime } = await dockerfile()
  assert.equal(build.name, 'build')
  assert.match(build.from, /^node:20\b/)
  assert.ok(all(build, 'RUN').some(r => /^npm ci\b/.test(r) && !r.includes('--omit=dev')), 'build stage installs dev dependencies')
  assert.ok(all(build, 'RUN').includes('npm run build'))

  assert.match(runtime.from, /^node:20\b/)
  const runs = all(runtime, 'RUN')
  assert.ok(runs.some(r => r.includes('npm ci --omit=dev --ignore-scripts')), 'production dependencies only, no lifecycle scripts')
  assert.ok(!runs.some(r => /npm (run|start)|tsc/.test(r)), 'nothing is built in the runtime stage')
  const copies = all(runtime, 'COPY')
  assert.ok(copies.includes('--from=build /app/dist ./dist'))
  assert.ok(!copies.some(c => /\bsrc\b|tsconfig/.test(c)), 'no sources in the runtime image')

  const users = all(runtime, 'USER')
  assert.equal(users.length, 1)
  assert.ok(!['root', '0', '0:0'].includes(users[0]), `USER ${users[0]} is not root`)
  // what the stages copy exists: the checkout's files, and dist/ where the build stage's `npm run build` writes it
  for (const copy of [...all(build, 'COPY'), ...all(runtime, 'COPY')].filter(c => !c.startsWith('--from='))) {
    for (const source of copy.split(/\s+/).slice(0, -1)) assert.ok(existsSync(path.join(ROOT, source)), `COPY ${source}: in the checkout`)
  }
  assert.deepEqual(all(build, 'WORKDIR'), ['/app'])
  assert.equal(JSON.parse(await fs.readFile(path.join(ROOT, 'tsconfig.build.json'), 'utf8')).compilerOptions.outDir, 'dist')
  assert.match(JSON.parse(await fs.readFile(path.join(ROOT, 'package.json'), 'utf8')).scripts.build, /tsconfig\.build\.json/)
  // the non-root user owns the data volume (a named volume takes this owner and mode)
  assert.ok(runs.some(r => r.includes('mkdir -p /data') && r.includes(`chown ${users[0]}:${users[0]} /data`) && r.includes('chmod 700 /data')), 'USER owns /data, mode 0700')
  const env = envOf(runtime)
  assert.equal(env.NODE_ENV, 'production')
  assert.equal(env.STORAGE_DIR, '/data')
  assert.equal(env.HOST, '0.0.0.0', 'the monitor must be reachable from outside the container')
  assert.deepEqual(all(runtime, 'VOLUME'), ['["/data"]'])
  assert.ok(all(runtime, 'EXPOSE').includes(env.PORT), `EXPOSE ${env.PORT} (PORT)`)

  const [healthcheck] = all(runtime, 'HEALTHCHECK')
  assert.ok(healthcheck !== undefined, 'HEALTHCHECK present')
  const cmd = JSON.parse(healthcheck.slice(healthcheck.indexOf('CMD ') + 4))
  assert.equal(cmd[0], 'node', 'slim images have no curl: the check runs node')
  assert.match(cmd.join(' '), /\/health/)

  assert.deepEqual(JSON.parse(all(runtime, 'CMD')[0]), ['node', 'dist/bin.js'], 'exec form: node is PID 1 and gets SIGTERM')
  assert.deepEqual(all(runtime, 'ENTRYPOINT'), [])
})

/** A child process whose stdout is JSON log lines. */
class Proc {
  readonly lines: any[] = []
  readonly exited: Promise<number | null>
  private waiters: Array<() => void> = []
  private stderr = ''

  constructor (readonly child: ChildProcess) {
    let buf = ''
    child.stdout!.setEncoding('utf8').on('data', (chunk: string) => {
      buf += chunk
      let nl
      while ((nl = buf.indexOf('\n')) !== -1) {
        const text = buf.slice(0, nl)
        buf = buf.slice(nl + 1)
        try {
          this.lines.push(JSON.parse(text))
        } catch {
          this.lines.push({ msg: text })
        }
        for (const w of this.waiters) w()
      }
    })
    child.stderr!.setEncoding('utf8').on('data', (chunk: string) => { this.stderr += chunk })
    this.exited = once(child, 'exit').then(([code]) => code as number | null)
  }

  line (match: (l: any) => boolean, timeout = 20_000): Promise<any> {
    return new Promise((resolve, reject) => {
      const check = (): boolean => {
        const found = this.lines.find(match)
        if (found === undefined) return false
        clearTimeout(timer)
        this.waiters = this.waiters.filter(w => w !== waiter)
        resolve(found)
        return true
      }
      const waiter = (): void => { check() }
      const timer = setTimeout(() => {
        this.waiters = this.waiters.filter(w => w !== waiter)
        reject(new Error(`no matching line within ${timeout} ms; stdout: ${JSON.stringify(this.lines).slice(-1500)} stderr: ${this.stderr.slice(-1500)}`))
      }, timeout)
      if (!check()) this.waiters.push(waiter)
    })
  }
}

/** The monitor's URL, once the daemon of `proc` is announced and its DHT bootstrapped. */
async function serving (proc: Proc): Promise<string> {
  const { url } = await proc.line(l => typeof l.msg === 'string' && l.msg.startsWith('monitor listening on '))
  await proc.line(l => l.msg === 'announced on the discovery topic')
  await proc.line(l => l.msg === 'DHT bootstrapped')
  return url
}

test('the runtime stage\'s steps in a clean directory: production install, node dist/bin.js on a loopback testnet answers /health 200, the HEALTHCHECK passes, every metric the Grafana dashboard queries is exported, SIGTERM exits 0; then `npm start` there runs dist/ without a compiler, npm\'s SIGTERM reaches the daemon, exit 0', async t => {
  const { runtime } = await dockerfile()
  const app = await tmpDir(t, 'root-peer-deploy-')

  // the build stage's `npm run build` (the daemon's dist/ and the client package's), and the runtime stage's COPYs
  await run('npm', ['run', 'build'], { cwd: ROOT })
  for (const copy of all(runtime, 'COPY')) {
    const words = copy.replace(/^--from=build /, '').split(/\s+/).map(w => w.replace(/^\/app\//, ''))
    const to = words.pop()!
    for (const from of words) await fs.cp(path.join(ROOT, from), path.join(app, to, to.endsWith('/') ? path.basename(from) : ''), { recursive: true })
  }
  assert.ok(existsSync(path.join(app, 'dist/bin.js')) && existsSync(path.join(app, 'packages/client/dist/index.js')), 'the runtime stage gets both dist/')
  // the runtime stage's own install command (without its cache clean, which would empty this machine's cache)
  const install = all(runtime, 'RUN').map(r => r.split('&&')[0].trim()).find(r => r.startsWith('npm ci'))!
  assert.equal(install, 'npm ci --omit=dev --ignore-scripts')
  await run('npm', [...install.split(' ').slice(1), '--prefer-offline', '--no-audit', '--no-fund'], { cwd: app, timeout: 300_000 })
  // no test runtime either: the Bare runtime comes with the dev tools (packages/dev-tools), a dev dependency
  for (const dev of ['typescript', 'tsx', 'playwright-core', 'pino-pretty', '@types/node', 'root-peer-dev-tools', 'bare-runtime-linux-x64']) {
    assert.ok(!existsSync(path.join(app, 'node_modules', dev)), `dev dependency ${dev} is not installed`)
  }
  assert.ok(existsSync(path.join(app, 'node_modules/prom-client')), 'prom-client is a production dependency')

  const net = await testnet(t)
  // in the clean dir with the runtime stage's environment, on the loopback testnet
  const startThere = (command: string, args: string[]): Proc => {
    const proc = new Proc(spawn(command, args, {
      cwd: app,
      env: childEnv({ ...envOf(runtime), STORAGE_DIR: path.join(app, 'data'), HOST: '127.0.0.1', PORT: '0', DHT_PORT: '', DHT_BOOTSTRAP: bootstrapEnv(net), DHT_HOST: '127.0.0.1', STATS_INTERVAL: '0' }),
      stdio: ['ignore', 'pipe', 'pipe']
    }))
    teardown(t, async () => {
      if (proc.child.exitCode === null) proc.child.kill('SIGKILL')
      await proc.exited
    })
    return proc
  }
  const daemon = startThere(process.execPath, ['dist/bin.js'])
  const url = await serving(daemon)
  const health = await fetch(url + '/health')
  assert.equal(health.status, 200, await health.clone().text())
  assert.equal(((await health.json()) as any).ok, true)

  const port = new URL(url).port
  const check = JSON.parse(all(runtime, 'HEALTHCHECK')[0].replace(/^.*?CMD /, '')) as string[]
  const healthcheck = (): Promise<number | null> => {
    const child = spawn(process.execPath, check.slice(1), { env: childEnv({ PORT: port }), stdio: 'ignore' })
    return once(child, 'exit').then(([code]) => code as number | null)
  }
  assert.equal(await healthcheck(), 0, 'the Dockerfile HEALTHCHECK passes on a healthy daemon')

  const exported = new Set<string>()
  for (const line of (await (await fetch(url + '/metrics')).text()).split('\n')) {
    const m = /^(?:# TYPE )?([a-zA-Z_:][a-zA-Z0-9_:]*)/.exec(line)
    if (m !== null && !line.startsWith('# HELP')) exported.add(m[1])
  }
  const dashboard = JSON.parse(await fs.readFile(path.join(DEPLOY, 'grafana-dashboard.json'), 'utf8'))
  const queried = new Set<string>()
  for (const panel of dashboard.panels) {
    for (const target of panel.targets ?? []) {
      for (const m of String(target.expr).matchAll(/\b(?:root_peer|process|nodejs|hyperswarm|dht|udx|hypercore)_[a-z0-9_]+/g)) queried.add(m[0])
    }
  }
  assert.ok(queried.size >= 15, `the dashboard queries ${queried.size} metrics`)
  for (const prefix of ['dht_', 'hyperswarm_', 'hypercore_']) assert.ok([...queried].some(n => n.startsWith(prefix)), `the dashboard queries ${prefix}* metrics`)
  for (const name of queried) assert.ok(exported.has(name), `${name}, queried by the dashboard, is in /metrics`)

  daemon.child.kill('SIGTERM')
  assert.equal(await daemon.exited, 0)
  assert.ok(daemon.lines.some(l => l.msg === 'stopped'))
  assert.equal(await healthcheck(), 1, 'the HEALTHCHECK fails when nothing answers')

  // the seed's way on the same production install (a checkout built earlier: src/ older than dist/)
  for (const scripts of ['preinstall', 'install', 'postinstall', 'prepare', 'prestart']) {
    assert.equal(JSON.parse(await fs.readFile(path.join(app, 'package.json'), 'utf8')).scripts[scripts], undefined, `no ${scripts} script: it would need dev dependencies`)
  }
  await fs.cp(path.join(ROOT, 'scripts'), path.join(app, 'scripts'), { recursive: true })
  await fs.cp(path.join(ROOT, 'src'), path.join(app, 'src'), { recursive: true, preserveTimestamps: true })
  const built = (await fs.stat(path.join(app, 'dist/bin.js'))).mtimeMs
  const started = performance.now()
  const npm = startThere('npm', ['start'])
  const ready = await npm.line(l => typeof l.msg === 'string' && l.msg.startsWith('root peer ready'))
  console.log(`npm start on a production install: ready ${Math.round(performance.now() - started)} ms after npm was started`)
  assert.equal((await fetch(await serving(npm) + '/health')).status, 200)
  assert.equal((await fs.stat(path.join(app, 'dist/bin.js'))).mtimeMs, built, 'dist/ was run as built, not compiled again')
  // start execs node: the daemon is npm's own child, so npm's signals reach it (a shell between them would die
  // of SIGTERM and leave the daemon running)
  const ppid = Number((await fs.readFile(`/proc/${ready.pid as number}/stat`, 'utf8')).split(') ')[1].split(' ')[1])
  assert.equal(ppid, npm.child.pid)
  npm.child.kill('SIGTERM')
  assert.equal(await npm.exited, 0)
  assert.ok(npm.lines.some(l => l.msg === 'stopped'))
  assert.throws(() => process.kill(ready.pid, 0), { code: 'ESRCH' }, 'the daemon is gone with npm')
})

test('grafana-dashboard.json: valid JSON, unique panel ids, every panel queries Prometheus through the datasource variable', async () => {
  const dashboard = JSON.parse(await fs.readFile(path.join(DEPLOY, 'grafana-dashboard.json'), 'utf8'))
  assert.equal(typeof dashboard.title, 'string')
  assert.equal(typeof dashboard.uid, 'string')
  assert.ok(dashboard.templating.list.some((v: any) => v.name === 'datasource' && v.type === 'datasource' && v.query === 'prometheus'))
  const ids = dashboard.panels.map((p: any) => p.id)
  assert.equal(new Set(ids).size, ids.length)
  const queries = dashboard.panels.filter((p: any) => p.type !== 'row')
  assert.ok(queries.length >= 10)
  for (const p of queries) {
    assert.equal(p.datasource.uid, '${datasource}', p.title)
    assert.ok(p.targets.length > 0 && p.targets.every((x: any) => typeof x.expr === 'string' && x.expr.length > 0), p.title)
  }
})

/** The unit's `Key=value` lines, keyed by key (a key given twice keeps its values in order). */
async function unit (): Promise<{ text: string, keys: Map<string, string[]> }> {
  const text = await fs.readFile(path.join(DEPLOY, 'root-peer.service'), 'utf8')
  const keys = new Map<string, string[]>()
  for (const line of text.split('\n')) {
    const m = /^([A-Za-z]+)=(.*)$/.exec(line.trim())
    if (m !== null) keys.set(m[1], [...(keys.get(m[1]) ?? []), m[2]])
  }
  return { text, keys }
}

test('systemd unit: its own user, StateDirectory, Restart=on-failure, a stop timeout above the 10 s drain, hardening', async () => {
  const { keys } = await unit()
  const one = (k: string): string | undefined => keys.get(k)?.at(-1)
  assert.ok(one('User') !== undefined && one('User') !== 'root')
  assert.equal(one('DynamicUser'), 'yes')
  assert.equal(one('StateDirectory'), 'root-peer')
  assert.ok(keys.get('Environment')!.includes('STORAGE_DIR=%S/root-peer'), 'the daemon stores in the StateDirectory')
  assert.ok(keys.get('Environment')!.includes('NODE_ENV=production'))
  assert.ok(keys.get('Environment')!.includes('HOST=127.0.0.1'), 'the monitor stays on loopback')
  assert.equal(one('Restart'), 'on-failure')
  assert.equal(one('KillSignal'), 'SIGTERM')
  assert.ok(Number(one('TimeoutStopSec')) > 10, 'longer than the daemon\'s 10 s drain')
  assert.match(one('ExecStart')!, /node \S+\/dist\/bin\.js$/)
  for (const [key, value] of [
    ['NoNewPrivileges', 'yes'], ['ProtectSystem', 'strict'], ['ProtectHome', 'yes'], ['PrivateTmp', 'yes'],
    ['PrivateDevices', 'yes'], ['ProtectKernelTunables', 'yes'], ['ProtectKernelModules', 'yes'],
    ['ProtectControlGroups', 'yes'], ['RestrictAddressFamilies', 'AF_INET AF_INET6 AF_UNIX'],
    ['RestrictNamespaces', 'yes'], ['LockPersonality', 'yes'], ['CapabilityBoundingSet', '']
  ]) assert.equal(one(key), value, key)
  assert.equal(keys.get('MemoryDenyWriteExecute'), undefined, 'V8 needs writable executable memory')
})

const analyze = findTool('systemd-analyze')
const noAnalyze = analyze === null ? 'systemd-analyze (apt-get install -y systemd)' : null
if (noAnalyze !== null && !UNDER_CI) console.log(`# skipping systemd-analyze: ${noAnalyze} is not installed`)

test('systemd-analyze verify accepts the unit without a warning, and rates its exposure low', { skip: skipUnlessCI(noAnalyze) }, async t => {
  assertPresent(noAnalyze)
  const dir = await tmpDir(t, 'root-peer-unit-')
  let { text } = await unit()
  // verify checks that ExecStart's program exists: point it at this machine's node when /usr/bin/node is not it
  if (!existsSync('/usr/bin/node')) text = text.replace('/usr/bin/node', process.execPath)
  const file = path.join(dir, 'root-peer.service')
  await fs.writeFile(file, text)
  const verified = await run(analyze!, ['verify', file]).then(r => ({ code: 0, out: r.stdout + r.stderr }), (e: any) => ({ code: e.code, out: String(e.stdout) + String(e.stderr) }))
  const ours = verified.out.split('\n').filter(l => l.includes('root-peer'))
  assert.deepEqual(ours, [], verified.out)
  assert.equal(verified.code, 0, verified.out)

  const security = await run(analyze!, ['security', '--offline=true', '--threshold=30', file]).then(r => ({ code: 0, out: r.stdout }), (e: any) => ({ code: e.code, out: String(e.stdout) + String(e.stderr) }))
  const exposure = /Overall exposure level for root-peer\.service: ([\d.]+)/.exec(security.out)
  assert.ok(exposure !== null, security.out.slice(-2000))
  assert.ok(Number(exposure[1]) <= 3, `exposure ${exposure[1]} (0 safest, 10 unsafe)`)
  assert.equal(security.code, 0)
})

test('pm2 ecosystem file: loads, one fork-mode app running dist/bin.js in production, kill_timeout above the 10 s drain, JSON lines left as they are', () => {
  const config = createRequire(import.meta.url)(path.join(DEPLOY, 'ecosystem.config.cjs'))
  assert.equal(config.apps.length, 1)
  const app = config.apps[0]
  assert.equal(app.name, 'root-peer')
  assert.equal(app.script, 'dist/bin.js')
  assert.equal(path.resolve(app.cwd), ROOT)
  assert.ok(existsSync(path.join(app.cwd, 'package.json')))
  assert.equal(app.exec_mode, 'fork')
  assert.equal(app.instances, 1, 'two daemons cannot share a data dir')
  assert.ok(app.kill_timeout > 10_000)
  assert.equal(app.env.NODE_ENV, 'production', 'the daemon prints JSON lines in production')
  assert.equal(app.env.HOST, '127.0.0.1')
  assert.equal(app.merge_logs, true)
  for (const key of ['time', 'log_date_format', 'log_type']) assert.equal(app[key], undefined, `${key} would rewrite the JSON lines`)
})

test('prometheus.yml scrapes /metrics on the monitor\'s default address', async () => {
  const text = await fs.readFile(path.join(DEPLOY, 'prometheus.yml'), 'utf8')
  assert.match(text, /^scrape_configs:$/m)
  assert.match(text, /^ {2}- job_name: root-peer$/m)
  assert.match(text, /^ {4}metrics_path: \/metrics$/m)
  assert.match(text, /targets: \['127\.0\.0\.1:3000'\]/)
  assert.doesNotMatch(text, /\t/, 'YAML has no tabs')
})
