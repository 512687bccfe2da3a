// node --import tsx bench/profile.ts FILE.cpuprofile [N] [--from S --to S]
// Prints where a V8 CPU profile (node --cpu-prof; `npm run bench -- --profile DIR`) spent its self time:
// the top N functions, and the total per package (node_modules/<name>, node: internals, the daemon's own dist/).
// --from/--to keep the samples of that window, in seconds from the profile's start: the bench's JSON line gives
// each step's window (`steps`, from the daemon's spawn, which the profile starts a few tens of ms after).
import fs from 'node:fs'

interface Node { id: number, callFrame: { functionName: string, url: string, lineNumber: number }, hitCount: number, children?: number[] }
interface Profile { nodes: Node[], samples: number[], timeDeltas: number[], startTime: number, endTime: number }

const args = process.argv.slice(2)
const flag = (name: string): number | null => {
  const at = args.indexOf(name)
  if (at === -1) return null
  const value = Number(args.splice(at, 2)[1])
  if (!Number.isFinite(value)) throw new Error(`${name}: a number of seconds`)
  return value
}
const from = flag('--from') ?? 0
const to = flag('--to') ?? Infinity
const [file, n = '30'] = args
const profile = JSON.parse(fs.readFileSync(file, 'utf8')) as Profile
const byId = new Map(profile.nodes.map(node => [node.id, node]))
const self = new Map<number, number>()
let at = 0
for (let i = 0; i < profile.samples.length; i++) {
  at += profile.timeDeltas[i] ?? 0
  if (at < from * 1e6 || at > to * 1e6) continue
  self.set(profile.samples[i], (self.get(profile.samples[i]) ?? 0) + (profile.timeDeltas[i] ?? 0))
}
const total = [...self.values()].reduce((a, b) => a + b, 0)

const fns = new Map<string, number>()
const pkgs = new Map<string, number>()
for (const [id, us] of self) {
  const { functionName, url, lineNumber } = byId.get(id)!.callFrame
  const short = url.replace(/^.*node_modules\//, '').replace(/^.*\/dist\//, 'dist/').replace(/^file:\/\//, '')
  const key = `${functionName || '(anonymous)'} ${short}:${lineNumber + 1}`
  fns.set(key, (fns.get(key) ?? 0) + us)
  const m = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(url)
  const pkg = m !== null ? m[1] : url.includes('/dist/') ? 'root-peer (dist)' : url.startsWith('node:') ? 'node internals' : url === '' ? functionName : 'other'
  pkgs.set(pkg, (pkgs.get(pkg) ?? 0) + us)
}
const pct = (us: number): string => `${(us / total * 100).toFixed(1).padStart(5)}%`
console.log(`profile: ${(total / 1e6).toFixed(2)} s sampled`)
console.log('\nby package:')
for (const [k, us] of [...pkgs].sort((a, b) => b[1] - a[1]).slice(0, 15)) console.log(`${pct(us)}  ${k}`)
console.log(`\ntop ${n} functions (self time):`)
for (const [k, us] of [...fns].sort((a, b) => b[1] - a[1]).slice(0, Number(n))) console.log(`${pct(us)}  ${k}`)
