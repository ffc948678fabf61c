/* repo_entry.c - which names are images, and the lists the stores fill
 * (repo.h). */
#include "index/repo.h"
#include "formats/image.h"
#include "formats/archive.h"

#include <fnmatch.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

bool idd_repo_name_matches(const char *name, const char *const *includes, size_t n_includes)
{
	if (idd_image_name_matches(name) || idd_archive_name_matches(name))
		return true;
	for (size_t i = 0; i < n_includes; i++)
		if (fnmatch(includes[i], name, 0) == 0)
			return true;
	return false;
}

void idd_repo_entry_free(idd_repo_entry *e)
{
	if (e->spooled)
		close(e->spool_fd);
	free(e->id);
	free(e->path);
	free(e->member);
	free(e->container);
	memset(e, 0, sizeof *e);
}

void idd_repo_list_free(idd_repo_list *l)
{
	for (size_t i = 0; i < l->n; i++)
		idd_repo_entry_free(&l->v[i]);
	free(l->v);
	l->v = NULL;
	l->n = 0;
}

/* Takes ownership of e's strings. */
int idd_repo_list_push(idd_repo_list *l, const idd_repo_entry *e, idd_error *err)
{
	idd_repo_entry *v = idd_realloc_array(l->v, l->n + 1, sizeof *v, err);
	if (!v)
		return IDD_ERR;
	l->v = v;
	l->v[l->n++] = *e;
	return IDD_OK;
}

void idd_chain_free(idd_chain *c)
{
	for (size_t i = 0; i < c->n; i++)
		free(c->v[i].path);
	free(c->v);
	c->v = NULL;
	c->n = 0;
}

