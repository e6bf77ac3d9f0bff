/* Round-trip latency of the engine's pool (cpu_kernels/pool.c) against an
 * OpenMP parallel region, both with empty tasks on 2 threads.
 *
 *   gcc -O3 -march=native -fopenmp -std=c11 -Icandle_agents/engine/cpu_kernels \
 *       benchmarks/pool_latency.c candle_agents/engine/cpu_kernels/pool.c \
 *       -o /tmp/pool_latency -lpthread && /tmp/pool_latency
 *
 * A second argument makes each task busy that many us (2 tasks of 5 us: the
 * ideal is 5000 ns, both threads working).
 *
 * Prints the median time of one job, in ns: back to back (workers spinning)
 * and after a gap of caller-side work (workers may have gone to sleep). */
#define _GNU_SOURCE
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "pool.h"

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void idle_us(int us) { /* busy gap, as a caller doing its own work */
    if (us <= 0) return;
    double end = now() + us * 1e-6;
    while (now() < end) {
    }
}

static volatile int64_t sink;
static int work_us; /* 0: empty tasks; else each task busy this long */
static void task(void *ctx, int64_t t) {
    (void)ctx, sink = t;
    idle_us(work_us);
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Median time of one job, in ns, over `reps` jobs each after `gap_us`. */
static double time_jobs(int use_pool, int ntasks, int gap_us, int reps) {
    double *t = malloc(sizeof(double) * reps);
    for (int i = 0; i < reps; i++) {
        idle_us(gap_us);
        double t0 = now();
        if (use_pool) {
            pool_run(task, NULL, ntasks, 2);
        } else {
#pragma omp parallel for schedule(dynamic, 1) num_threads(2)
            for (int k = 0; k < ntasks; k++) task(NULL, k);
        }
        t[i] = now() - t0;
    }
    qsort(t, reps, sizeof(double), cmp);
    double med = t[reps / 2];
    free(t);
    return med * 1e9;
}

int main(int argc, char **argv) {
    int reps = argc > 1 ? atoi(argv[1]) : 2000;
    int gaps[] = {0, 50, 200, 2000};
    pool_run(task, NULL, 2, 2); /* create the workers */
    work_us = argc > 2 ? atoi(argv[2]) : 0;
    printf("median ns per job, tasks of %d us, 2 threads\n", work_us);
    printf("%-8s %-7s %12s %12s\n", "ntasks", "gap_us", "pool", "omp");
    for (int nt = 2; nt <= 64; nt *= 32)
        for (size_t g = 0; g < sizeof gaps / sizeof *gaps; g++) {
            int r = gaps[g] >= 1000 ? reps / 20 : reps;
            printf("%-8d %-7d %12.0f %12.0f\n", nt, gaps[g], time_jobs(1, nt, gaps[g], r),
                   time_jobs(0, nt, gaps[g], r));
        }
    return 0;
}
