/* profile.c - boot profiles (see profile.h). */
#include "node/profile.h"
#include "index/indexfile.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define HEADER "# imgdedup read profile: image id, tab, block number, in order of first read\n"

int idd_profile_load(const char *path, idd_profile *pf, idd_error *err)
{
	memset(pf, 0, sizeof *pf);
	void *data;
	size_t len;
	int rc = idd_read_file(path, (size_t)1 << 30, &data, &len, err);
	if (rc)
		return rc;
	char *p = data, *end = p + len;
	size_t lineno = 0;
	while (!rc && p < end) {
		char *nl = memchr(p, '\n', (size_t)(end - p));
		char *line_end = nl ? nl : end;
		lineno++;
		if (line_end > p && *p != '#') {
			char *tab = memchr(p, '\t', (size_t)(line_end - p));
			char *num_end = NULL;
			unsigned long long b = 0;
			if (tab) {
				errno = 0;
				*line_end = 0;
				b = strtoull(tab + 1, &num_end, 10);
			}
			if (!tab || errno || num_end == tab + 1 || *num_end) {
				rc = idd_fail_code(err, IDD_ECORRUPT, "%s: line %zu: not 'IMAGE<TAB>BLOCK'", path,
				                   lineno);
				break;
			}
			char **ni = realloc(pf->ids, (pf->n + 1) * sizeof *ni);
			if (ni)
				pf->ids = ni;
			uint64_t *nb = ni ? realloc(pf->blocks, (pf->n + 1) * sizeof *nb) : NULL;
			if (nb)
				pf->blocks = nb;
			char *id = (ni && nb) ? strndup(p, (size_t)(tab - p)) : NULL;
			if (!id) {
				rc = idd_fail_code(err, IDD_ENOMEM, "%s: out of memory", path);
				break;
			}
			pf->ids[pf->n] = id;
			pf->blocks[pf->n++] = b;
		}
		p = nl ? nl + 1 : end;
	}
	free(data);
	if (rc)
		idd_profile_free(pf);
	return rc;
}

void idd_profile_free(idd_profile *pf)
{
	for (size_t i = 0; i < pf->n; i++)
		free(pf->ids[i]);
	free(pf->ids);
	free(pf->blocks);
	memset(pf, 0, sizeof *pf);
}

int idd_profile_writer_begin(idd_profile_writer *w, idd_error *err)
{
	memset(w, 0, sizeof *w);
	idd_buf_put(&w->b, HEADER, strlen(HEADER));
	return w->b.failed ? idd_fail_code(err, IDD_ENOMEM, "out of memory") : IDD_OK;
}

int idd_profile_writer_add(idd_profile_writer *w, const char *id, const uint64_t *blocks, size_t n,
                           idd_error *err)
{
	if (strpbrk(id, "\t\n"))
		return IDD_OK;
	for (size_t k = 0; k < n; k++) {
		char line[64];
		int l = snprintf(line, sizeof line, "\t%llu\n", (unsigned long long)blocks[k]);
		idd_buf_put(&w->b, id, strlen(id));
		idd_buf_put(&w->b, line, (size_t)l);
	}
	return w->b.failed ? idd_fail_code(err, IDD_ENOMEM, "out of memory") : IDD_OK;
}

int idd_profile_writer_commit(idd_profile_writer *w, const char *path, idd_error *err)
{
	return idd_write_file_atomic(path, w->b.data, w->b.len, err);
}

void idd_profile_writer_free(idd_profile_writer *w)
{
	idd_buf_free(&w->b);
}
