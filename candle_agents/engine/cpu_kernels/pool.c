/* The engine's own thread pool for the C kernels (interface in pool.h).
 *
 * Why not OpenMP: libgomp keeps one pool per calling thread, shared with
 * torch, and stops spinning its workers once it manages more threads than
 * CPUs, so a pool that another thread's torch work left behind made every
 * kernel pay a futex wake-up (20-25% of a decode step, measured). These
 * workers belong to this library alone.
 *
 * How a job runs: the caller publishes fn/ctx/ntasks, then opens the job by
 * storing one 64-bit word, `claim` = generation << 32 | next task index.
 * Every thread (the caller included) claims tasks with a compare-and-swap
 * that checks the generation, so a worker that wakes late can never take a
 * task of a later job; the caller waits only for tasks that were claimed,
 * not for workers to show up: a worker the OS has not scheduled yet costs
 * nothing, the caller runs its share. When the job is done the caller closes
 * it (index CLOSED) before anyone may publish the next one.
 *
 * Workers spin (pause) for a bounded time after each job they took part in,
 * which covers the gap between the kernels of one forward pass, then sleep
 * on a condition variable until the next job.
 *
 * Concurrency: one pool per process and a mutex that serialises jobs.
 * Several engines in one process then share the workers instead of each
 * keeping threads that spin against the others' on the same cores (a
 * thread-local pool per engine would oversubscribe the CPUs); their kernels
 * take turns, each with every core. A pool_run from inside a task (or from a
 * worker) runs inline, so nesting cannot deadlock on the mutex. */
#define _GNU_SOURCE
#include "pool.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#if defined(__x86_64__) || defined(__i386__)
#define cpu_relax() __builtin_ia32_pause()
#elif defined(__aarch64__)
#define cpu_relax() __asm__ __volatile__("yield" ::: "memory")
#else
#define cpu_relax() atomic_signal_fence(memory_order_seq_cst)
#endif

#define MAX_WORKERS 255
#define CLOSED 0xFFFFFFFFu
/* Spin this long after a job before sleeping; CANDLE_AGENTS_POOL_SPIN_US
 * overrides it. One decode step's kernels come every 10-200 us, so the
 * workers stay awake through a forward pass; a spinning worker takes a CPU
 * from torch's own threads, so they sleep within a fraction of a
 * millisecond once the engine moves on to torch work. */
#define DEFAULT_SPIN_US 300

static pthread_mutex_t job_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t sleep_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t sleep_cond = PTHREAD_COND_INITIALIZER;

static _Atomic uint64_t claim = CLOSED; /* generation 0, closed */
static _Atomic(pool_fn) job_fn;
static _Atomic(void *) job_ctx;
static _Atomic int64_t job_ntasks;
static _Atomic int job_threads;
static _Atomic int64_t job_done;

static _Atomic int sleepers;
static _Atomic int stopping;
static _Atomic int nworkers;
static pthread_t workers[MAX_WORKERS];
static int cpu_cap;        /* CPUs this process may use; 0 until first asked */
static int64_t spin_ns = -1; /* read from the environment on first use */
static int atfork_done;

static _Thread_local int in_pool; /* this thread is running a task */

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int usable_cpus(void) {
#if defined(__linux__)
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) {
        int n = CPU_COUNT(&set);
        if (n > 0) return n;
    }
#endif
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

/* Claims and runs tasks of generation `gen` while any are left; returns how
 * many it ran. The fields were read after seeing `gen` open; if they belong
 * to a later job, that job's publication came after `gen` was closed, so the
 * compare-and-swap below fails and nothing runs. */
static int64_t run_tasks(uint32_t gen, pool_fn fn, void *ctx, int64_t ntasks) {
    int64_t ran = 0;
    uint64_t c = atomic_load_explicit(&claim, memory_order_acquire);
    while ((uint32_t)(c >> 32) == gen && (int64_t)(uint32_t)c < ntasks) {
        if (atomic_compare_exchange_weak_explicit(&claim, &c, c + 1, memory_order_acq_rel,
                                                  memory_order_acquire)) {
            fn(ctx, (int64_t)(uint32_t)c);
            ran++;
            c = atomic_load_explicit(&claim, memory_order_acquire);
        }
    }
    return ran;
}

static void *worker_main(void *arg) {
    int id = (int)(intptr_t)arg; /* takes part in jobs of more than id + 1 threads */
    in_pool = 1;
    uint32_t seen = 0;
    int fresh = 1;
    int64_t deadline = now_ns() + spin_ns;
    unsigned spins = 0;
    while (!atomic_load_explicit(&stopping, memory_order_acquire)) {
        uint64_t c = atomic_load_explicit(&claim, memory_order_acquire);
        uint32_t gen = (uint32_t)(c >> 32);
        if (fresh || gen != seen) {
            fresh = 0;
            seen = gen;
            if ((uint32_t)c != CLOSED &&
                atomic_load_explicit(&job_threads, memory_order_acquire) > id + 1) {
                pool_fn fn = atomic_load_explicit(&job_fn, memory_order_acquire);
                void *ctx = atomic_load_explicit(&job_ctx, memory_order_acquire);
                int64_t n = atomic_load_explicit(&job_ntasks, memory_order_acquire);
                int64_t ran = run_tasks(gen, fn, ctx, n);
                if (ran) atomic_fetch_add_explicit(&job_done, ran, memory_order_release);
                deadline = now_ns() + spin_ns;
            }
            continue;
        }
        if ((++spins & 15) != 0 || now_ns() < deadline) {
            cpu_relax();
            continue;
        }
        /* Sleep until the generation moves. sleepers is raised before the
         * word is read again (both seq_cst) and the caller stores the word
         * before reading sleepers: one of the two sees the other. */
        pthread_mutex_lock(&sleep_lock);
        atomic_fetch_add(&sleepers, 1);
        while (!atomic_load(&stopping) && (uint32_t)(atomic_load(&claim) >> 32) == seen)
            pthread_cond_wait(&sleep_cond, &sleep_lock);
        atomic_fetch_sub(&sleepers, 1);
        pthread_mutex_unlock(&sleep_lock);
    }
    return NULL;
}

/* After fork() only the forking thread exists: forget the workers (the
 * child recreates them) and the locks a vanished thread may have held. */
static void after_fork_child(void) {
    pthread_mutex_init(&job_lock, NULL);
    pthread_mutex_init(&sleep_lock, NULL);
    pthread_cond_init(&sleep_cond, NULL);
    atomic_store(&nworkers, 0);
    atomic_store(&sleepers, 0);
    atomic_store(&stopping, 0);
    atomic_store(&claim, (atomic_load(&claim) & ~(uint64_t)0xFFFFFFFFu) | CLOSED);
    cpu_cap = 0;
}

/* Grows the pool to `want` workers (job_lock held); returns how many exist. */
static int grow(int want) {
    int n = atomic_load(&nworkers);
    if (!atfork_done) {
        atfork_done = 1;
        pthread_atfork(NULL, NULL, after_fork_child);
    }
    if (spin_ns < 0) {
        const char *env = getenv("CANDLE_AGENTS_POOL_SPIN_US");
        long us = env ? strtol(env, NULL, 10) : DEFAULT_SPIN_US;
        spin_ns = (us < 0 ? 0 : us) * 1000;
    }
    while (n < want) {
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setstacksize(&attr, 1 << 20); /* kernels keep a few 10s of KiB on the stack */
        int rc = pthread_create(&workers[n], &attr, worker_main, (void *)(intptr_t)n);
        pthread_attr_destroy(&attr);
        if (rc != 0) break; /* run with the workers there are */
        atomic_store(&nworkers, ++n);
    }
    return n;
}

struct offset_ctx {
    pool_fn fn;
    void *ctx;
    int64_t base;
};

static void offset_task(void *p, int64_t t) {
    struct offset_ctx *o = p;
    o->fn(o->ctx, o->base + t);
}

void pool_run(pool_fn fn, void *ctx, int64_t ntasks, int threads) {
    if (ntasks <= 0) return;
    if (threads > ntasks) threads = (int)ntasks;
    if (threads <= 1 || in_pool) {
        for (int64_t t = 0; t < ntasks; t++) fn(ctx, t);
        return;
    }
    if (ntasks >= (int64_t)CLOSED) { /* the claim word holds 32-bit indices */
        for (int64_t base = 0; base < ntasks; base += (int64_t)1 << 31) {
            int64_t left = ntasks - base;
            struct offset_ctx o = {fn, ctx, base};
            pool_run(offset_task, &o, left < ((int64_t)1 << 31) ? left : (int64_t)1 << 31,
                     threads);
        }
        return;
    }
    pthread_mutex_lock(&job_lock);
    if (!cpu_cap) cpu_cap = usable_cpus();
    if (threads > cpu_cap) threads = cpu_cap;
    if (threads > MAX_WORKERS + 1) threads = MAX_WORKERS + 1;
    int have = atomic_load(&nworkers);
    if (have < threads - 1) have = grow(threads - 1);
    if (threads > have + 1) threads = have + 1;

    in_pool = 1;
    if (threads <= 1) {
        for (int64_t t = 0; t < ntasks; t++) fn(ctx, t);
    } else {
        atomic_store_explicit(&job_fn, fn, memory_order_release);
        atomic_store_explicit(&job_ctx, ctx, memory_order_release);
        atomic_store_explicit(&job_ntasks, ntasks, memory_order_release);
        atomic_store_explicit(&job_threads, threads, memory_order_release);
        atomic_store_explicit(&job_done, 0, memory_order_relaxed);
        uint32_t gen = (uint32_t)(atomic_load(&claim) >> 32) + 1;
        atomic_store(&claim, (uint64_t)gen << 32); /* open: index 0 */
        if (atomic_load(&sleepers) > 0) {
            pthread_mutex_lock(&sleep_lock);
            pthread_cond_broadcast(&sleep_cond);
            pthread_mutex_unlock(&sleep_lock);
        }
        int64_t ran = run_tasks(gen, fn, ctx, ntasks);
        if (atomic_fetch_add_explicit(&job_done, ran, memory_order_acq_rel) + ran < ntasks) {
            /* Tasks a worker claimed are still running: wait, yielding the
             * CPU after a while in case that worker is waiting for one. */
            unsigned spins = 0;
            while (atomic_load_explicit(&job_done, memory_order_acquire) < ntasks) {
                if (++spins < 4096)
                    cpu_relax();
                else
                    sched_yield();
            }
        }
        atomic_store(&claim, ((uint64_t)gen << 32) | CLOSED);
    }
    in_pool = 0;
    pthread_mutex_unlock(&job_lock);
}

int pool_threads(void) { return atomic_load(&nworkers) + 1; }

void pool_shutdown(void) {
    if (in_pool) return; /* from inside a task: the caller's job still needs the workers */
    pthread_mutex_lock(&job_lock);
    int n = atomic_load(&nworkers);
    if (n) {
        atomic_store(&stopping, 1);
        pthread_mutex_lock(&sleep_lock);
        pthread_cond_broadcast(&sleep_cond);
        pthread_mutex_unlock(&sleep_lock);
        for (int i = 0; i < n; i++) pthread_join(workers[i], NULL);
        atomic_store(&nworkers, 0);
        atomic_store(&stopping, 0);
    }
    pthread_mutex_unlock(&job_lock);
}
