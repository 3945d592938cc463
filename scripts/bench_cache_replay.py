#!/usr/bin/python3
"""bench_cache_replay.py: replays a routing trace (lines "layer id id ...", one per token
and MoE layer, as written by scripts/bench_cache.sh TRACE=FILE or `flash-moe profile
--trace`, whose lines carry a leading prompt number: pass --profile) through eviction
policies at several capacities and prints the hit rates: LRU, LFU, LFRU = freq *
0.25^(age/half) for a few half-lives (128 is the cache's), and Belady's OPT (the bound).

    /usr/bin/python3 scripts/bench_cache_replay.py TRACE [--profile] [--caps 16,32,64]
"""
import collections
import math
import sys


def load(path, profile):
    reqs = collections.defaultdict(list)
    for line in open(path):
        f = line.split()
        if profile:
            f = f[1:]
        if f:
            reqs[int(f[0])].append([int(x) for x in f[1:]])
    return reqs


def simulate(seq, cap, policy, half=128.0):
    res, freq, last = set(), collections.Counter(), {}
    future = collections.defaultdict(list)
    for t, ids in enumerate(seq):
        for e in ids:
            future[e].append(t)
    ptr = collections.Counter()
    hits = total = 0
    for t, ids in enumerate(seq):
        for e in ids:
            freq[e] += 1
            ptr[e] += 1
        for e in ids:
            total += 1
            if e in res:
                hits += 1
                continue
            if len(res) >= cap:
                cands = [x for x in res if x not in ids]
                if policy == "lru":
                    v = min(cands, key=lambda x: last[x])
                elif policy == "lfu":
                    v = min(cands, key=lambda x: (freq[x], last[x]))
                elif policy == "lfru":
                    v = min(cands, key=lambda x: math.log(freq[x]) + math.log(4) / half * last[x])
                else:  # opt: evict the one used furthest in the future
                    def next_use(x):
                        f, i = future[x], ptr[x]
                        return f[i] if i < len(f) else 1 << 60
                    v = max(cands, key=next_use)
                res.discard(v)
            res.add(e)
        for e in ids:
            last[e] = t
    return hits / max(total, 1)


def main():
    args = sys.argv[1:]
    if not args:
        print(__doc__)
        return 2
    caps = [16, 32, 64]
    if "--caps" in args:
        caps = [int(x) for x in args[args.index("--caps") + 1].split(",")]
    reqs = load(args[0], "--profile" in args)
    print("trace %s: %d MoE layers, %d requests per layer" % (args[0], len(reqs), len(next(iter(reqs.values())))))
    pols = [("lru", 0), ("lfu", 0), ("lfru", 32), ("lfru", 128), ("lfru", 512), ("opt", 0)]
    print("capacity " + " ".join("%10s" % (p + ("/%d" % h if h else "")) for p, h in pols))
    for cap in caps:
        row = [sum(simulate(s, cap, p, h or 128.0) for s in reqs.values()) / len(reqs) for p, h in pols]
        print("%8d " % cap + " ".join("%9.1f%%" % (100 * r) for r in row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
