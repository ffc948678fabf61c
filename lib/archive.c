/* archive.c - placeholder until archive support lands (issue 5). */
#include "internal.h"
const char *idd_archive_kind(const unsigned char *head, size_t len) { (void)head; (void)len; return NULL; }
int idd_archive_list(const idd_repo_entry *a, idd_repo_list *out, idd_error *err)
{ (void)a; (void)out; return idd_fail(err, "archives not supported yet"); }
int idd_archive_open_member(const char *repo, const idd_repo_entry *e, idd_image **out, idd_error *err)
{ (void)repo; (void)e; (void)out; return idd_fail(err, "archives not supported yet"); }
