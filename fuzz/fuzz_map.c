/* fuzz_map.c - libFuzzer target: the block map parser (idd_map_parse), on
 * raw bytes and on payloads wrapped in a valid container. */
#include "fuzz_common.h"
#include "index/map.h"

static const char MAP_MAGIC[8] = {'I', 'D', 'D', '-', 'M', 'A', 'P', 0};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t len)
{
	/* refs cost 4 bytes per block: stay far below libFuzzer's malloc limit. */
	idd_map_parse_max_blocks = 1u << 24;
	idd_error err;
	idd_map *m;
	if (idd_map_parse("fuzz.map", data, len, &m, &err) == 0)
		idd_map_free(m);
	size_t flen;
	unsigned char *file = fz_wrap(MAP_MAGIC, 1, data, len, &flen);
	if (idd_map_parse("fuzz.map", file, flen, &m, &err) == 0)
		idd_map_free(m);
	free(file);
	return 0;
}
