/* catalog.c - reads an index through the installed library: needs the
 * library's dependencies (zstd, libcrypto), so it is linked with
 * `pkg-config --libs libimgdedup` plus the packages it lists as
 * Requires.private (make install-check).  Prints one line per image: id,
 * format, blocks. */
#include <imgdedup.h>

#include <inttypes.h>
#include <stdio.h>

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: catalog INDEX_DIR\n");
		return 2;
	}
	idd_catalog *cat;
	idd_error err;
	int rc = idd_catalog_load(argv[1], &cat, &err);
	if (rc) {
		fprintf(stderr, "catalog: %s (%s)\n", err.msg, idd_strerror(rc));
		return 1;
	}
	for (size_t i = 0; i < cat->count; i++)
		printf("%s %s %" PRIu64 "\n", cat->images[i].id, cat->images[i].format,
		       cat->images[i].nblocks);
	idd_catalog_free(cat);
	return 0;
}
