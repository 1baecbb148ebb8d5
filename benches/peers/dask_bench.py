#!/usr/bin/env python3
"""The cross-process scenarios of `dagger-bench --workers N`, on Dask distributed.

    python3 -m venv /tmp/daskenv && /tmp/daskenv/bin/pip install dask distributed numpy
    /tmp/daskenv/bin/python benches/peers/dask_bench.py <independent|chain|tree|transfer|metg|all>
        [--workers 2] [--worker-threads 1] [--runs 5] [--n N]

A LocalCluster with N worker processes (`processes=True`, T threads each) plays the part of
dagger's N local worker processes; the script is the head (Dask's client, with the scheduler
in this process). Every task is pinned to the workers the same way as in dagger-bench. One
JSON object per line, with the same keys as dagger-bench (`scenario`, `system`, `tasks`,
`seconds`, `us_per_task`, `workers`, `runs`, ...). Timings are the median of `--runs` runs
after one warm-up.

* independent: N trivial tasks (client.map), then wait (results stay on the workers);
* chain: each task takes the previous one's result;
* tree: binary reduction of N leaves;
* transfer: 1 GiB as chunks of 1..64 MiB (bytes) made on worker 1, read by tasks on
  worker 2 (Dask moves each chunk worker-to-worker);
* metg: Task Bench stencil_1d, width 4, compute_bound kernel (the same arithmetic in
  NumPy-free Python would be too slow, so the kernel is a NumPy loop doing the same FLOPs),
  sweeping iterations and reporting METG(50 %) like `dagger-bench taskbench metg`.
"""

import argparse
import json
import statistics
import sys
import time

import dask
from dask.distributed import Client, LocalCluster, wait


def line(**kv):
    print(json.dumps(kv), flush=True)


def measure(runs, f):
    f()
    return [f() for _ in range(runs)]


def ident(i):
    return i


def add(a, b):
    return a + b


def make_blob(size, fill):
    return bytes([fill]) * size


def read_blob(b):
    return len(b), b[0] + b[-1]


def base(scenario, tasks, runs, args):
    secs = statistics.median(runs)
    return dict(
        scenario=scenario,
        system="dask-distributed",
        tasks=tasks,
        seconds=secs,
        us_per_task=secs * 1e6 / tasks,
        workers=args.workers,
        worker_threads=args.worker_threads,
        runs=runs,
        dask_version=dask.__version__,
    )


def independent(client, addrs, args):
    n = args.n or 20_000

    def run():
        t = time.perf_counter()
        futs = client.map(ident, range(n), workers=addrs, pure=False)
        wait(futs)
        e = time.perf_counter() - t
        assert client.gather(futs[-1]) == n - 1
        del futs
        return e

    runs = measure(args.runs, run)
    d = base("independent", n, runs, args)
    d["tasks_per_s"] = n / d["seconds"]
    line(**d)


def chain(client, addrs, args):
    n = args.n or 2_000
    out = []
    for placement, ws in [("any worker", addrs), ("worker 1", addrs[:1])]:

        def run():
            t = time.perf_counter()
            prev = client.submit(add, 0, 1, workers=ws, pure=False)
            for _ in range(1, n):
                prev = client.submit(add, prev, 1, workers=ws, pure=False)
            assert prev.result() == n
            return time.perf_counter() - t

        runs = measure(args.runs, run)
        d = base("chain", n, runs, args)
        d["placement"] = placement
        d["us_per_hop"] = d["seconds"] * 1e6 / n
        out.append(d)
    for d in out:
        line(**d)


def tree(client, addrs, args):
    leaves = args.n or 20_000

    def run():
        t = time.perf_counter()
        level = client.map(add, range(leaves), [0] * leaves, workers=addrs, pure=False)
        while len(level) > 1:
            nxt = []
            for i in range(0, len(level) - 1, 2):
                nxt.append(client.submit(add, level[i], level[i + 1], workers=addrs, pure=False))
            if len(level) % 2:
                nxt.append(level[-1])
            level = nxt
        v = level[0].result()
        assert v == leaves * (leaves - 1) // 2
        return time.perf_counter() - t

    runs = measure(args.runs, run)
    line(**base("tree", 2 * leaves - 1, runs, args))


def transfer(client, addrs, args):
    total = args.n or (1 << 30)
    w1, w2 = addrs[0], addrs[1]
    for mib in [1, 4, 16, 64]:
        size = mib << 20
        count = max(total // size, 1)
        chunks = [
            client.submit(make_blob, size, i % 200 + 1, workers=[w1], pure=False)
            for i in range(count)
        ]
        wait(chunks)

        def run():
            t = time.perf_counter()
            reads = [client.submit(read_blob, c, workers=[w2], pure=False) for c in chunks]
            wait(reads)
            e = time.perf_counter() - t
            res = client.gather(reads)
            assert all(r[0] == size for r in res)
            # Dask keeps the copies it moved to worker 2; drop them so the next run moves
            # the chunks again.
            del reads
            return e

        # After each run Dask may keep replicas on worker 2 (it does while the reads'
        # results are alive); wait until worker 2 holds none of the chunks.
        def drop_replicas():
            keys = [c.key for c in chunks]
            who = client.who_has(chunks)
            stale = [k for k in keys if w2 in who.get(k, ())]
            if stale:
                client.run(
                    lambda dask_worker, keys=stale: [
                        dask_worker.data.pop(k, None) for k in keys
                    ],
                    workers=[w2],
                )

        runs = []
        for i in range(args.runs + 1):
            drop_replicas()
            e = run()
            if i > 0:
                runs.append(e)
        del chunks
        d = base("transfer", count, runs, args)
        d["chunk_bytes"] = size
        d["bytes"] = size * count
        d["gb_per_s"] = size * count / d["seconds"] / 1e9
        line(**d)


def stencil_kernel(iters, inputs, t, p):
    # compute_bound: 64 lanes of a*b+c per iteration (2*64 FLOPs), as Task Bench does.
    import numpy as np

    a = np.full(64, float(t + p))
    for _ in range(iters):
        a = a * a + a
        a[:] = 1.0
    return (t, p)


def run_stencil(client, addrs, steps, width, iters):
    prev = None
    t0 = time.perf_counter()
    for t in range(steps):
        row = []
        for p in range(width):
            w = addrs[p * len(addrs) // width]
            deps = [] if prev is None else prev[max(p - 1, 0) : min(p + 2, width)]
            row.append(client.submit(stencil_kernel, iters, deps, t, p, workers=[w], pure=False))
        prev = row
    wait(prev)
    return time.perf_counter() - t0


def metg(client, addrs, args):
    steps, width = args.steps, 4
    threads = args.workers * args.worker_threads
    tasks = steps * width
    run_stencil(client, addrs, 10, width, 16)
    points = []
    it = args.metg_start
    while True:
        best = min(run_stencil(client, addrs, steps, width, it) for _ in range(args.metg_runs))
        flops = tasks * it * 128
        rate = flops / best
        peak = points[0][2] if points else rate
        points.append((it, best, rate, best * threads / tasks * 1e6, rate / peak))
        print(
            f"# iter {it} elapsed {best:.4f} s granularity {points[-1][3]:.1f} us "
            f"efficiency {100 * rate / peak:.1f}%",
            file=sys.stderr,
            flush=True,
        )
        if rate / peak < 0.25 or it <= 1:
            break
        it //= 2
    ok = [p for p in points if p[4] >= 0.5]
    m = min(ok, key=lambda p: p[3])
    interp = None
    for a, b in zip(points, points[1:]):
        if a[4] >= 0.5 > b[4]:
            import math

            f = (a[4] - 0.5) / (a[4] - b[4])
            interp = math.exp(math.log(a[3]) + f * (math.log(b[3]) - math.log(a[3])))
            break
    line(
        scenario="taskbench-metg",
        system="dask-distributed",
        type="stencil_1d",
        width=width,
        steps=steps,
        kernel="compute_bound (numpy)",
        threads=threads,
        workers=args.workers,
        tasks=tasks,
        seconds=m[1],
        us_per_task=m[1] * 1e6 / tasks,
        metg_us=m[3],
        metg_interp_us=interp,
        metg_iter=m[0],
        peak_flops=points[0][2],
        sweep_us=[p[3] for p in points],
        sweep_efficiency=[p[4] for p in points],
        dask_version=dask.__version__,
    )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("scenario")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--worker-threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--n", type=int, default=None)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--metg-start", type=int, default=1 << 14)
    ap.add_argument("--metg-runs", type=int, default=2)
    args = ap.parse_args()
    dask.config.set({"distributed.worker.daemon": False})
    with LocalCluster(
        n_workers=args.workers,
        threads_per_worker=args.worker_threads,
        processes=True,
        dashboard_address=None,
        scheduler_port=0,
    ) as cluster, Client(cluster) as client:
        addrs = sorted(client.scheduler_info()["workers"])
        scenarios = {
            "independent": independent,
            "chain": chain,
            "tree": tree,
            "transfer": transfer,
            "metg": metg,
        }
        names = list(scenarios) if args.scenario == "all" else [args.scenario]
        for name in names:
            scenarios[name](client, addrs, args)


if __name__ == "__main__":
    main()
