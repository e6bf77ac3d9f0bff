/* Placeholder so the library links: the K-quant types (Q2_K..Q6_K) come from
 * another branch, whose quant_k.c replaces this file. */
#include "quant.h"

const qtype_ops *quant_k_ops(int type) {
    (void)type;
    return 0;
}
