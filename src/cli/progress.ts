const REDRAW_MS = 200

/** One progress line on stderr for the long admin commands; silent unless the stream is a terminal. */
export class Progress {
  private readonly stream: NodeJS.WriteStream
  private readonly label: string
  private readonly tty: boolean
  private last = 0
  private shown = false

  constructor (stream: NodeJS.WriteStream, label: string) {
    this.stream = stream
    this.label = label
    this.tty = stream.isTTY === true
  }

  update (text: () => string): void {
    if (!this.tty) return
    const now = Date.now()
    if (now - this.last < REDRAW_MS) return
    this.last = now
    this.shown = true
    this.stream.write(`\r\x1b[K${this.label}: ${text()}`)
  }

  done (): void {
    if (this.shown) this.stream.write('\r\x1b[K')
    this.shown = false
  }
}

export function formatBytes (n: number): string {
  if (n < 1024) return `${n} B`
  const units = ['KiB', 'MiB', 'GiB', 'TiB']
  let v = n / 1024
  let u = 0
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024
    u++
  }
  return `${v.toFixed(1)} ${units[u]}`
}
