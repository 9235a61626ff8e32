// The MemoryStore's listing index: job ids ordered by (createdAt, id), overall and per owner, so a
// page costs about its own size instead of a sort of every job.

/** Where a job sits in the order: its creation time, then its id. */
export interface IndexKey {
  createdAt: string;
  id: string;
}

/** Ascending (oldest first); listing walks it from the end. */
function compare(a: IndexKey, b: IndexKey): number {
  if (a.createdAt !== b.createdAt) return a.createdAt < b.createdAt ? -1 : 1;
  return a.id < b.id ? -1 : a.id > b.id ? 1 : 0;
}

/** The first position whose key is not below `key`. */
function lowerBound(list: IndexKey[], key: IndexKey): number {
  let lo = 0;
  let hi = list.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (compare(list[mid]!, key) < 0) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

function insert(list: IndexKey[], key: IndexKey): void {
  // Jobs are created in time order, so this is nearly always an append.
  const last = list.at(-1);
  if (!last || compare(last, key) < 0) list.push(key);
  else list.splice(lowerBound(list, key), 0, key);
}

function remove(list: IndexKey[], key: IndexKey): void {
  const at = lowerBound(list, key);
  if (at < list.length && list[at]!.id === key.id) list.splice(at, 1);
}

export class JobIndex {
  readonly #all: IndexKey[] = [];
  /** Per owner; `null` holds the anonymous jobs. */
  readonly #byOwner = new Map<string | null, IndexKey[]>();
  /** Whose list each indexed job is in. */
  readonly #ownerOf = new Map<string, string | null>();

  add(key: IndexKey, owner: string | null): void {
    if (this.#ownerOf.has(key.id)) return;
    const entry = { createdAt: key.createdAt, id: key.id };
    insert(this.#all, entry);
    this.#ownerOf.set(key.id, owner);
    let list = this.#byOwner.get(owner);
    if (!list) this.#byOwner.set(owner, (list = []));
    insert(list, entry);
  }

  /** Forgets a job; removing one that is not indexed does nothing. */
  remove(key: IndexKey): void {
    if (!this.#ownerOf.has(key.id)) return;
    const owner = this.#ownerOf.get(key.id) ?? null;
    this.#ownerOf.delete(key.id);
    remove(this.#all, key);
    const list = this.#byOwner.get(owner);
    if (!list) return;
    remove(list, key);
    if (list.length === 0) this.#byOwner.delete(owner);
  }

  /** A job given its owner after the fact (the replay's auth): it moves to that owner's list. */
  move(key: IndexKey, to: string | null): void {
    if (!this.#ownerOf.has(key.id)) return;
    this.remove(key);
    this.add(key, to);
  }

  /** How many jobs are indexed (every owner). */
  get size(): number {
    return this.#all.length;
  }

  /**
   * Ids newest first, strictly older than `after` when given; `owner` undefined walks every job.
   * A snapshot of the positions: removing entries while walking is safe.
   */
  *newestFirst(owner: string | null | undefined, after: IndexKey | null): Generator<IndexKey> {
    const list = owner === undefined ? this.#all : (this.#byOwner.get(owner) ?? []);
    let at = after ? lowerBound(list, after) - 1 : list.length - 1;
    for (; at >= 0; at--) {
      const key = list[at];
      if (key) yield key;
    }
  }

  clear(): void {
    this.#all.length = 0;
    this.#byOwner.clear();
    this.#ownerOf.clear();
  }
}
