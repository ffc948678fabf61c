/* qcow2.c - placeholder until the qcow2 reader lands (issue 5). */
#include "internal.h"
int idd_qcow2_probe(const unsigned char *head, size_t len) { (void)head; (void)len; return 0; }
int idd_qcow2_open(idd_image *img, idd_backing_open_fn bo, void *bctx, idd_error *err)
{ (void)img; (void)bo; (void)bctx; return idd_fail(err, "qcow2 not supported yet"); }
