/* fuzz_index.c - libFuzzer target: the index-file container
 * (idd_indexfile_parse) and the catalog payload parser (idd_catalog_parse),
 * the latter also behind a valid container so the checksum is no wall. */
#include "fuzz_common.h"

static const char CATALOG_MAGIC[8] = {'I', 'D', 'D', '-', 'C', 'A', 'T', 0};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t len)
{
	idd_error err;
	void *payload;
	size_t plen;
	uint32_t version;
	if (idd_indexfile_parse("fuzz-catalog", data, len, CATALOG_MAGIC, 1, &payload, &plen, &version,
	                        &err) == 0) {
		idd_catalog *cat;
		if (idd_catalog_parse("fuzz-catalog", payload, plen, &cat, &err) == 0)
			idd_catalog_free(cat);
		free(payload);
	}
	/* The same bytes as a catalog payload, wrapped in a valid container. */
	size_t flen;
	unsigned char *file = fz_wrap(CATALOG_MAGIC, 1, data, len, &flen);
	if (idd_indexfile_parse("fuzz-catalog", file, flen, CATALOG_MAGIC, 1, &payload, &plen, &version,
	                        &err) == 0) {
		idd_catalog *cat;
		if (idd_catalog_parse("fuzz-catalog", payload, plen, &cat, &err) == 0)
			idd_catalog_free(cat);
		free(payload);
	}
	free(file);
	return 0;
}
