#!/usr/bin/env python3
"""A kedit evaluation as Ray tasks, through the Python package: each task evaluates one
shard (`kedit.evaluate(..., shard=(k, n))`, an ordinary resumable run directory), the
driver merges them (`kedit.merge_runs`). No cluster code of kedit's own: Ray places the
tasks, and a failed task retried by Ray resumes its shard's run directory.

    python scripts/scale-out/ray_eval.py --method ft-m --limit 20 --shards 2 --out runs/ray-ftm20
    python scripts/scale-out/ray_eval.py ... --address auto   # an existing Ray cluster

Without --address, Ray starts a single-node cluster on this machine (worker processes, one
CPU per shard). Prints the merged summary's scores as JSON.
"""
import argparse
import json
import os
import time

import ray

DEFAULT_DATA = "../shared/data/zsre/zsre_mend_eval_portability_gpt4.dev.json"


@ray.remote(num_cpus=1, max_retries=2)
def evaluate_shard(method, data, limit, k, n, out, options):
    # Imported in the task: a worker process loads the package (and its native module) itself.
    import kedit

    directory = os.path.join(out, f"shard-{k}")
    start = time.time()
    summary = kedit.evaluate(method, data, directory, limit=limit, shard=(k, n), **options)
    return directory, summary["n"], time.time() - start


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--method", default="rome")
    ap.add_argument("--data", default=DEFAULT_DATA)
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--mode", default="single")
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--no-fluency", action="store_true")
    ap.add_argument("--out", required=True)
    ap.add_argument("--address", default=None, help="an existing cluster (e.g. auto)")
    args = ap.parse_args()

    import kedit

    # No address: a single-node Ray started here, one CPU per shard (Ray 2.60 removed the old
    # in-process `local_mode`; this is what replaces it).
    init = {"address": args.address} if args.address else {"num_cpus": args.shards}
    # One core per task for kedit's threads (Ray gives each task one CPU).
    init["runtime_env"] = {"env_vars": {"RAYON_NUM_THREADS": "1"}}
    ray.init(**init)
    options = {"mode": args.mode, "batch_size": args.batch_size, "fluency": not args.no_fluency}
    # Paths as given: run.json records them, and the merged run should name the data file
    # as a `kedit eval` of the same cases does. Workers on this machine share the driver's
    # working directory; on a cluster, give paths every node can read.
    out, data = args.out, args.data
    tasks = [
        evaluate_shard.remote(args.method, data, args.limit, k, args.shards, out, options)
        for k in range(args.shards)
    ]
    done = ray.get(tasks)
    for directory, n, seconds in done:
        print(f"{directory}: {n} cases in {seconds:.1f} s")
    summary = kedit.merge_runs([d for d, _, _ in done], os.path.join(out, "merged"))
    keys = ["n", "reliability", "generalization", "locality", "portability", "fluency"]
    print(json.dumps({k: summary[k] for k in keys}, indent=1))


if __name__ == "__main__":
    main()
