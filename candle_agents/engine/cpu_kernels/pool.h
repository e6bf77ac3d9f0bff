/* The engine's own worker threads for the C kernels (pool.c).
 *
 * pool_run(fn, ctx, ntasks, threads) calls fn(ctx, t) for t in [0, ntasks)
 * on up to `threads` threads (the caller is one of them) and returns when
 * every task is done. Tasks must be independent. Not OpenMP: another
 * thread's torch work cannot throttle these workers, and they never wait on
 * a pool that a different thread owns. */
#ifndef CANDLE_POOL_H
#define CANDLE_POOL_H
#include <stdint.h>

typedef void (*pool_fn)(void *ctx, int64_t task);

void pool_run(pool_fn fn, void *ctx, int64_t ntasks, int threads);

/* Workers alive + 1 (the caller). */
int pool_threads(void);

/* Joins the workers; the next pool_run creates them again. */
void pool_shutdown(void);

#endif
