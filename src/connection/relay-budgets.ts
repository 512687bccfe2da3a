import { MAX_BUDGETS } from './guard.js'

/** Seconds' worth of bytes a full budget holds. */
export const BURST_SECONDS = 10

/**
 * Bytes a second with a burst of BURST_SECONDS. Unlike a TokenBucket it is charged after the bytes went
 * through (the relay forwards natively and reads counters), so it goes below 0: a debt its next pairs wait out.
 */
export class ByteBudget {
  allowance: number
  readonly rate: number
  private last: number

  constructor (rate: number, now = Date.now()) {
    this.rate = rate
    this.allowance = rate * BURST_SECONDS
    this.last = now
  }

  /** Charges `bytes`; true while the budget is not in debt. */
  charge (bytes: number, now = Date.now()): boolean {
    if (this.rate === 0) return true
    this.refill(now)
    this.allowance -= bytes
    return this.allowance >= 0
  }

  /** True when `bytes` more (what a pair moved in its last reading, likely again by the next) would overdraw it. */
  short (bytes: number, now = Date.now()): boolean {
    if (this.rate === 0) return false
    this.refill(now)
    return this.allowance < bytes
  }

  inDebt (now = Date.now()): boolean {
    if (this.rate === 0) return false
    this.refill(now)
    return this.allowance < 0
  }

  private refill (now: number): void {
    this.allowance = Math.min(this.rate * BURST_SECONDS, this.allowance + (now - this.last) * this.rate / 1000)
    this.last = now
  }
}

const UNLIMITED = new ByteBudget(0)

/**
 * A budget per key (or per address), kept across that key's pairs and connections so a new pair starts
 * with what the last one left; an LRU of MAX_BUDGETS entries, so fresh keys cannot make it grow.
 */
export class BudgetTable {
  private readonly rate: number
  private readonly budgets = new Map<string, ByteBudget>()

  constructor (rate: number) {
    this.rate = rate
  }

  get size (): number {
    return this.budgets.size
  }

  get (id: string): ByteBudget {
    if (this.rate === 0) return UNLIMITED
    let budget = this.budgets.get(id)
    if (budget !== undefined) this.budgets.delete(id)
    else budget = new ByteBudget(this.rate)
    this.budgets.set(id, budget)
    if (this.budgets.size > MAX_BUDGETS) this.budgets.delete(this.budgets.keys().next().value as string)
    return budget
  }

  clear (): void {
    this.budgets.clear()
  }
}
