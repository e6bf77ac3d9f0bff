/* A whole decode step of a Llama-family model in one call: every layer's
 * norms, projections, rotary, KV store and paged attention, on the kernels
 * the Python path calls one by one.
 *
 * One token a sequence costs a small model ~15 C calls a layer from Python,
 * each with tensor bookkeeping around it: measured on SmolLM2-135M (30
 * layers, 2 vCPUs), 9 of a step's 21 ms were spent between the kernels.
 * Here the same kernels run in the same order on the same buffers, so the
 * result is bit for bit the Python path's (tests/kernels/test_decode_stack.py).
 *
 * The model is described once at load (stack_model, filled by
 * engine/decode_stack.py); a step passes only its activations and indices. */
#include <stdint.h>
#include <string.h>

#include "convert.h"
#include "kernels.h"

#define STACK_MAX_PARTS 4
enum { LINEAR_QUANT = 0, LINEAR_PANELS = 1 };

/* Rows [col, col + rows) of a weight in one GGUF block type (quant_gemm). */
typedef struct {
    int32_t qtype, _pad;
    const uint8_t *w;
    int64_t rows, col;
    const float *bias; /* at the part's first row, or NULL */
} stack_part;

typedef struct {
    int32_t kind;   /* LINEAR_QUANT: parts; LINEAR_PANELS: gemm_packed on `panels` */
    int32_t nparts; /* LINEAR_QUANT */
    int32_t fast;   /* LINEAR_QUANT: int8 activations */
    int32_t _pad;
    int64_t in, out;
    const float *panels, *bias; /* LINEAR_PANELS */
    stack_part parts[STACK_MAX_PARTS];
} stack_linear;

typedef struct {
    const float *norm1, *norm2;
    const float *q_norm, *k_norm; /* NULL without QK-norm */
    void *k_cache, *v_cache;      /* [blocks, kv_heads, block_size, head_dim] */
    stack_linear qkv, o, gate_up, down;
    int32_t rope; /* 0: a layer without rotary embedding (SmolLM3's every fourth) */
    int32_t _pad;
} stack_layer;

typedef struct {
    int32_t layers, hidden, inter, heads, kv_heads, head_dim, block_size, ctype;
    float eps, scale;
    int32_t rot_dim;        /* rotary width: head_dim, or less (partial rotary) */
    int32_t window;         /* every layer's sliding window, 0: none (Mistral v0.1) */
    const float *cos, *sin; /* [positions, rot_dim] */
    const stack_layer *layer;
} stack_model;

static void linear(const stack_linear *l, const float *x, int64_t M, float *out, int threads) {
    if (l->kind == LINEAR_PANELS) {
        gemm_packed(x, M, l->in, l->panels, l->bias, l->out, out, threads);
        return;
    }
    for (int i = 0; i < l->nparts; i++) {
        const stack_part *p = &l->parts[i];
        quant_gemm(p->qtype, p->w, p->rows, l->in, x, M, l->in, p->bias, out + p->col, l->out,
                   l->fast, threads);
    }
}

static void store_row(void *cache, int ctype, int64_t row, const float *src, int d) {
    if (ctype == CACHE_F32) {
        memcpy((float *)cache + row * d, src, sizeof(float) * (size_t)d);
    } else if (ctype == CACHE_F16) {
        uint16_t *dst = (uint16_t *)cache + row * d;
        for (int j = 0; j < d; j++) dst[j] = f32_to_f16(src[j]);
    } else {
        uint16_t *dst = (uint16_t *)cache + row * d;
        for (int j = 0; j < d; j++) dst[j] = f32_to_bf16(src[j]);
    }
}

/* Token i's K and V (kv_heads heads of d floats at k + i * ldk, v + i * ldv)
 * into cache slot slots[i], converted to the cache's type. */
void store_kv(const float *k, int64_t ldk, const float *v, int64_t ldv, void *k_cache,
              void *v_cache, int ctype, const int64_t *slots, int64_t n, int kv_heads, int d,
              int bs) {
    for (int64_t i = 0; i < n; i++) {
        int64_t block = slots[i] / bs, off = slots[i] % bs;
        for (int h = 0; h < kv_heads; h++) {
            int64_t row = (block * kv_heads + h) * bs + off;
            store_row(k_cache, ctype, row, k + i * ldk + (int64_t)h * d, d);
            store_row(v_cache, ctype, row, v + i * ldv + (int64_t)h * d, d);
        }
    }
}

/* The bytes of scratch a step of M rows needs (decode_stack's `scratch`). */
int64_t decode_stack_scratch(const stack_model *m, int64_t M) {
    int64_t q = (int64_t)m->heads * m->head_dim, kv = (int64_t)m->kv_heads * m->head_dim;
    return (int64_t)sizeof(float) * M * ((q + 2 * kv) + q + 3 * (int64_t)m->inter);
}

/* x [M, hidden]: the embedded tokens in, the last layer's output back;
 * residual [M, hidden]: the residual stream before that output is added
 * (what DecoderLayer returns). Row i is a sequence at position pos[i]
 * whose K/V goes to cache slot slots[i]; its block table is row i of
 * `tables` and it attends to seq_lens[i] tokens. Returns 0, or -1 when
 * attention ran out of memory. */
int decode_stack(const stack_model *m, int64_t M, float *x, float *residual, float *scratch,
                 const int64_t *pos, const int64_t *slots, const int64_t *tables,
                 int64_t table_stride, const int64_t *seq_lens, int threads) {
    int H = m->hidden, d = m->head_dim, bs = m->block_size;
    int64_t q = (int64_t)m->heads * d, kv = (int64_t)m->kv_heads * d, qkv_w = q + 2 * kv;
    float *qkv = scratch, *attn = qkv + M * qkv_w, *gate_up = attn + M * q,
          *act = gate_up + M * 2 * m->inter;
    for (int li = 0; li < m->layers; li++) {
        const stack_layer *L = &m->layer[li];
        if (li == 0) { /* the stream starts as the embeddings */
            memcpy(residual, x, sizeof(float) * (size_t)(M * H));
            rms_norm(residual, L->norm1, x, M, H, m->eps, threads);
        } else {
            add_rms_norm(x, residual, L->norm1, M, H, m->eps, threads);
        }
        linear(&L->qkv, x, M, qkv, threads);
        if (L->q_norm) /* per head, in place: a row's heads are contiguous */
            for (int64_t i = 0; i < M; i++) {
                float *r = qkv + i * qkv_w;
                rms_norm(r, L->q_norm, r, m->heads, d, m->eps, 1);
                rms_norm(r + q, L->k_norm, r + q, m->kv_heads, d, m->eps, 1);
            }
        if (L->rope) {
            rotary(qkv, qkv_w, m->heads, m->cos, m->sin, pos, M, m->rot_dim, d, threads);
            rotary(qkv + q, qkv_w, m->kv_heads, m->cos, m->sin, pos, M, m->rot_dim, d, threads);
        }
        store_kv(qkv + q, qkv_w, qkv + q + kv, qkv_w, L->k_cache, L->v_cache, m->ctype, slots, M,
                 m->kv_heads, d, bs);
        if (decode_attention(qkv, qkv_w, L->k_cache, L->v_cache, m->ctype, tables, table_stride,
                             seq_lens, attn, (int)M, m->heads, m->kv_heads, d, bs, m->scale,
                             m->window, 0.0f, threads)) /* no softcap: see decode_stack.py */
            return -1;
        linear(&L->o, attn, M, x, threads);
        add_rms_norm(x, residual, L->norm2, M, H, m->eps, threads);
        linear(&L->gate_up, x, M, gate_up, threads);
        silu_and_mul(gate_up, act, M, m->inter, threads);
        linear(&L->down, act, M, x, threads);
    }
    return 0;
}
