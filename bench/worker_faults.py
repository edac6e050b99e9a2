"""Page faults and CPU time of Dask workers explaining digits, with relprop's glibc settings in
the workers (the default: ``relprop.dask.WORKER_MMAP_THRESHOLD``) and without them (glibc's
thresholds as the nanny's ``MALLOC_TRIM_THRESHOLD_`` leaves them); README, "Large datasets and
clusters".

A LocalCluster of 2 workers x 1 thread per setting; LRP EpsilonPlusFlat of the bundled digits CNN
with target "pred", batch 64, a task per chunk; a warm-up job, then the counted one (minor page
faults and user + system CPU seconds of both workers, ``getrusage``).

    python bench/worker_faults.py [--samples 50000] [--chunks 256,4096]
"""
import argparse

import numpy as np


def usage(dask_worker=None):
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_minflt, r.ru_utime + r.ru_stime


def leave_glibc_alone(dask_worker=None):
    import relprop.dask

    relprop.dask.WORKER_MMAP_THRESHOLD = None


def measure(x, chunk, tuned):
    import dask.array as da
    from distributed import Client, LocalCluster

    import relprop as rp
    import relprop.dask

    net = rp.models.digits_cnn()
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        if not tuned:
            client.run(leave_glibc_alone)  # before the first task sets them
        xs = da.from_array(x, chunks=(chunk,) + x.shape[1:])
        job = relprop.dask.explain(net, xs, "pred", batch_size=64)
        job.compute()  # warm-up
        before = client.run(usage)
        job.compute()
        after = client.run(usage)
    faults = sum(after[w][0] - before[w][0] for w in after)
    cpu = sum(after[w][1] - before[w][1] for w in after)
    return faults, cpu


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--samples", type=int, default=50_000)
    p.add_argument("--chunks", default="256,4096", help="comma-separated chunk sizes")
    args = p.parse_args()
    import relprop as rp

    digits, _ = rp.models.digits_data()
    x = np.ascontiguousarray(np.resize(digits, (args.samples,) + digits.shape[1:]))
    print(f"{args.samples:,} digits, 2 workers x 1 thread, a task per chunk")
    print("| chunk | relprop's glibc settings | page faults | CPU s (both workers) |")
    print("|---:|---|---:|---:|")
    for chunk in map(int, args.chunks.split(",")):
        for tuned in (True, False):
            faults, cpu = measure(x, chunk, tuned)
            print(f"| {chunk} | {'yes' if tuned else 'no'} | {faults:,} | {cpu:.2f} |")


if __name__ == "__main__":
    main()
