/* serve_stats.c - the field table of idd_serve_stats: what the nbdkit
 * plugin writes for `imgdedup serve` and what serve reads back and prints.
 * A new counter is a member of the struct and one line here. */
#include "base/util.h"

#include <stddef.h>

#define U64(name) {#name, IDD_FIELD_U64, offsetof(idd_serve_stats, name)}
static const idd_field serve_stats_fields[] = {
	U64(reads),
	U64(bytes_read),
	U64(bytes_zero),
	U64(bytes_from_cache),
	U64(bytes_fetched),
	U64(bytes_from_peers),
	U64(requests),
	U64(blocks_filled),
	U64(cache_damaged),
	U64(read_errors),
	U64(exports_complete),
	U64(cache_write_errors),
	U64(cache_evicted),
};
#undef U64

const idd_record_type idd_serve_stats_record = {serve_stats_fields, IDD_ARRAY_LEN(serve_stats_fields)};
