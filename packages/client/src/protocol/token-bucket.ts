/** `rate` tokens a second, holding at most `burst`; a rate of 0 means no limit. */
export class TokenBucket {
  private readonly rate: number
  private readonly burst: number
  private tokens: number
  private last: number

  constructor (rate: number, burst: number, now = Date.now()) {
    this.rate = rate
    this.burst = Math.max(burst, 1)
    this.tokens = this.burst
    this.last = now
  }

  /** Takes `n` tokens and returns 0, or takes nothing and returns the ms until `n` would be there. */
  take (n = 1, now = Date.now()): number {
    const wait = this.wait(n, now)
    if (wait === 0) this.consume(n)
    return wait
  }

  /** The ms until `n` tokens are there (0: now), taking nothing. */
  wait (n = 1, now = Date.now()): number {
    if (this.rate === 0) return 0
    this.tokens = Math.min(this.burst, this.tokens + (now - this.last) * this.rate / 1000)
    this.last = now
    // more than a whole burst can never be taken: ask for the time a full bucket needs
    const need = Math.min(n, this.burst)
    return this.tokens >= need ? 0 : Math.ceil((need - this.tokens) * 1000 / this.rate)
  }

  consume (n = 1): void {
    if (this.rate !== 0) this.tokens = Math.max(0, this.tokens - Math.min(n, this.burst))
  }
}
