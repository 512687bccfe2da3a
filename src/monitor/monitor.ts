import { createHash, timingSafeEqual } from 'node:crypto'
import http, { type IncomingMessage, type ServerResponse } from 'node:http'
import { isIP, type AddressInfo } from 'node:net'
import type { Metrics } from './metrics.js'
import type { ChatRootPeer, Health } from '../root-peer.js'
import { busiest, namedRooms, type StatsSnapshot } from './stats.js'
import { STATUS_PAGE } from './status-page.js'
import ReadyResource from 'ready-resource'

export interface MonitorOptions {
  metrics: Metrics
  host?: string
  port?: number
  /** ms between samples of the message counter for the rate history */
  sampleInterval?: number
  /** samples kept: the history spans `sampleInterval * historySize` */
  historySize?: number
  hosts?: readonly string[]
  token?: string
}

export interface RatePoint {
  t: number
  messages: number
  messagesPerSecond: number
}

/** What `GET /stats` answers. */
export interface MonitorStats extends StatsSnapshot {
  generatedAt: number
  health: Health
  rooms: { total: number, open: number, bytes: number }
  messagesPerSecond: { intervalSeconds: number, windowSeconds: number, points: RatePoint[] }
}

type Route = (req: IncomingMessage, res: ServerResponse) => Promise<void> | void

const JSON_TYPE = 'application/json; charset=utf-8'
const PAGE_HEADERS = {
  'Content-Security-Policy': "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
  // the page's URL may carry ?token=
  'Referrer-Policy': 'no-referrer'
}
const MISDIRECTED = 'misdirected request: this monitor answers only a Host that is an IP address, localhost or a name in MONITOR_HOSTS\n'

/**
 * The monitoring HTTP server: `/health`, `/metrics`, `/stats` and a status page at `/` (docs/monitoring.md).
 * Events: `listening` ({ url }), `request-error` (err): a request failed and got a 500.
 */
export class Monitor extends ReadyResource {
  readonly host: string
  private readonly requestedPort: number
  private readonly rootPeer: ChatRootPeer
  private readonly metrics: Metrics
  private readonly sampleInterval: number
  private readonly historySize: number
  private readonly hosts: ReadonlySet<string>
  private readonly tokenHash: Buffer | null
  private readonly server: http.Server
  private readonly routes: Map<string, Route>
  private readonly samples: Array<{ t: number, messages: number }> = []
  private sampler: NodeJS.Timeout | null = null

  constructor (rootPeer: ChatRootPeer, opts: MonitorOptions) {
    super()
    const { metrics, host = '127.0.0.1', port = 3000, sampleInterval = 5000, historySize = 120, hosts = [], token = '' } = opts
    this.rootPeer = rootPeer
    this.metrics = metrics
    this.host = host
    this.requestedPort = port
    this.sampleInterval = sampleInterval
    this.historySize = historySize
    this.hosts = new Set(hosts.map(h => h.toLowerCase()))
    this.tokenHash = token === '' ? null : sha256(token)
    this.routes = new Map<string, Route>([
      ['/', (req, res) => send(res, 200, 'text/html; charset=utf-8', STATUS_PAGE, PAGE_HEADERS)],
      ['/health', (req, res) => this.onHealth(res)],
      ['/metrics', (req, res) => this.onMetrics(res)],
      ['/stats', (req, res) => sendJson(res, 200, this.stats())]
    ])
    this.server = http.createServer((req, res) => this.onRequest(req, res))
  }

  get port (): number {
    const address = this.server.address() as AddressInfo | null
    return address === null ? this.requestedPort : address.port
  }

  get url (): string {
    return `http://${this.host.includes(':') ? `[${this.host}]` : this.host}:${this.port}`
  }

  stats (): MonitorStats {
    return {
      ...this.rootPeer.stats(),
      busiestRooms: busiest(namedRooms(this.rootPeer.roomList())),
      generatedAt: Date.now(),
      health: this.health(),
      rooms: this.rootPeer.roomCounts,
      messagesPerSecond: {
        intervalSeconds: this.sampleInterval / 1000,
        windowSeconds: this.sampleInterval * this.historySize / 1000,
        points: this.rates()
      }
    }
  }

  health (): Health {
    const health = this.rootPeer.health()
    if (this.closing === null || health.reasons.includes('shutting down')) return health
    return { ...health, ok: false, reasons: ['shutting down', ...health.reasons] }
  }

  /** Listens; rejects with the bind error (`EADDRINUSE`, `EACCES`, `EADDRNOTAVAIL`). */
  protected override _open (): Promise<void> {
    return new Promise((resolve, reject) => {
      const failed = (err: Error): void => reject(err)
      this.server.once('error', failed)
      this.server.listen(this.requestedPort, this.host, () => {
        this.server.off('error', failed)
        this.server.on('error', err => this.emit('request-error', err))
        this.sample()
        this.sampler = setInterval(() => this.sample(), this.sampleInterval)
        this.sampler.unref()
        this.emit('listening', { url: this.url })
        resolve()
      })
    })
  }

  protected override async _close (): Promise<void> {
    if (this.sampler !== null) clearInterval(this.sampler)
    if (!this.server.listening) return
    const closed = new Promise<void>(resolve => this.server.close(() => resolve()))
    this.server.closeIdleConnections()
    await closed
  }

  private onRequest (req: IncomingMessage, res: ServerResponse): void {
    if (!hostAllowed(req.headers.host, this.hosts)) {
      send(res, 421, 'text/plain; charset=utf-8', MISDIRECTED)
      return
    }
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      sendJson(res, 405, { error: 'method not allowed' }, { Allow: 'GET, HEAD' })
      return
    }
    const url = req.url ?? '/'
    const q = url.indexOf('?')
    const pathname = q === -1 ? url : url.slice(0, q)
    if (this.tokenHash !== null && pathname !== '/health' && !this.authorized(req, pathname, q === -1 ? '' : url.slice(q + 1))) {
      const how = pathname === '/' ? 'open /?token=<MONITOR_TOKEN>, or send Authorization: Bearer <MONITOR_TOKEN>' : 'send Authorization: Bearer <MONITOR_TOKEN>'
      sendJson(res, 401, { error: `unauthorized: ${how}` }, { 'WWW-Authenticate': 'Bearer realm="root-peer monitor"' })
      return
    }
    const route = this.routes.get(pathname)
    if (route === undefined) {
      sendJson(res, 404, { error: 'not found' })
      return
    }
    try {
      const answered = route(req, res)
      if (answered instanceof Promise) answered.catch(err => this.sendError(res, err))
    } catch (err) {
      this.sendError(res, err)
    }
  }

  /** The bearer token, or on the status page its `?token=`; compared in constant time. */
  private authorized (req: IncomingMessage, pathname: string, query: string): boolean {
    const bearer = /^Bearer +(\S+) *$/i.exec(req.headers.authorization ?? '')
    const given = bearer !== null ? bearer[1] : pathname === '/' ? new URLSearchParams(query).get('token') : null
    return given !== null && timingSafeEqual(sha256(given), this.tokenHash!)
  }

  private sendError (res: ServerResponse, err: unknown): void {
    this.emit('request-error', err)
    if (res.headersSent) res.destroy()
    else sendJson(res, 500, { error: 'internal error' })
  }

  private onHealth (res: ServerResponse): void {
    const health = this.health()
    sendJson(res, health.ok ? 200 : 503, health)
  }

  private async onMetrics (res: ServerResponse): Promise<void> {
    send(res, 200, this.metrics.contentType, await this.metrics.text())
  }

  private sample (): void {
    this.samples.push({ t: Date.now(), messages: this.rootPeer.counters.messagesStored })
    if (this.samples.length > this.historySize + 1) this.samples.shift()
    this.emit('sample')
  }

  private rates (): RatePoint[] {
    const points: RatePoint[] = []
    for (let i = 1; i < this.samples.length; i++) {
      const a = this.samples[i - 1]
      const b = this.samples[i]
      const messages = b.messages - a.messages
      const seconds = Math.max(b.t - a.t, 1) / 1000
      points.push({ t: b.t, messages, messagesPerSecond: Math.round(messages / seconds * 100) / 100 })
    }
    return points
  }
}

// an IP address is safe from DNS rebinding, which needs a host name; a request without a Host is refused
export function hostAllowed (host: string | undefined, names: ReadonlySet<string>): boolean {
  if (host === undefined) return false
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]]+))(?::(\d{1,5}))?$/.exec(host)
  if (m === null || (m[3] !== undefined && Number(m[3]) > 65535)) return false
  if (m[1] !== undefined) return isIP(m[1]) === 6
  const name = m[2].toLowerCase()
  return isIP(name) === 4 || name === 'localhost' || names.has(name)
}

function sha256 (text: string): Buffer {
  return createHash('sha256').update(text).digest()
}

function send (res: ServerResponse, status: number, type: string, body: string, headers: Record<string, string> = {}): void {
  res.writeHead(status, {
    'Content-Type': type,
    'Content-Length': Buffer.byteLength(body),
    'Cache-Control': 'no-store',
    'X-Content-Type-Options': 'nosniff',
    ...headers
  })
  res.end(body)
}

function sendJson (res: ServerResponse, status: number, body: unknown, headers?: Record<string, string>): void {
  send(res, status, JSON_TYPE, JSON.stringify(body), headers)
}
