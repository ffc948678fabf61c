/* test_record.c - records driven by a field table (base/record.c): the
 * serve counters as the JSON object the nbdkit plugin writes (keys in the
 * struct's order, byte for byte what serve and its tests read), read back
 * field by field, a cut buffer, a missing or malformed counter refused. */
#include "testutil.h"

#include <stddef.h>
#include <string.h>

static idd_serve_stats numbered(void)
{
	idd_serve_stats st;
	memset(&st, 0, sizeof st);
	const idd_record_type *t = &idd_serve_stats_record;
	for (size_t i = 0; i < t->n_fields; i++) {
		uint64_t v = 1000 + i;
		memcpy((char *)&st + t->fields[i].offset, &v, sizeof v);
	}
	st.cache_evicted = UINT64_MAX; /* the widest value */
	return st;
}

static void test_serve_stats_json(void **state)
{
	(void)state;
	idd_serve_stats st = numbered();
	char out[2048];
	size_t n = idd_record_json(&idd_serve_stats_record, &st, out, sizeof out);
	const char *want =
	    "{\"reads\":1000,\"bytes_read\":1001,\"bytes_zero\":1002,\"bytes_from_cache\":1003,"
	    "\"bytes_fetched\":1004,\"bytes_from_peers\":1005,\"requests\":1006,"
	    "\"blocks_filled\":1007,\"cache_damaged\":1008,\"read_errors\":1009,"
	    "\"exports_complete\":1010,\"cache_write_errors\":1011,"
	    "\"cache_evicted\":18446744073709551615}";
	assert_string_equal(out, want);
	assert_int_equal(n, strlen(want));
	/* every member of the struct is in the table, once */
	assert_int_equal(idd_serve_stats_record.n_fields * sizeof(uint64_t), sizeof(idd_serve_stats));
	assert_int_equal(st.reads, 1000);
	assert_int_equal(st.bytes_from_peers, 1005);
	assert_int_equal(idd_field_u64(&idd_serve_stats_record.fields[6], &st), st.requests);
}

static void test_cut_like_snprintf(void **state)
{
	(void)state;
	idd_serve_stats st = numbered();
	char full[2048], cut[40];
	size_t n = idd_record_json(&idd_serve_stats_record, &st, full, sizeof full);
	memset(cut, 'x', sizeof cut);
	assert_int_equal(idd_record_json(&idd_serve_stats_record, &st, cut, sizeof cut), n);
	assert_int_equal(strlen(cut), sizeof cut - 1);
	assert_memory_equal(cut, full, sizeof cut - 1);
	assert_int_equal(idd_record_json(&idd_serve_stats_record, &st, NULL, 0), n);
}

static void test_parse_round_trip(void **state)
{
	(void)state;
	idd_serve_stats st = numbered(), got;
	char text[2048];
	idd_record_json(&idd_serve_stats_record, &st, text, sizeof text);
	strcat(text, "\n");
	memset(&got, 0xee, sizeof got);
	idd_error err = {{0}, 0};
	assert_int_equal(idd_record_parse(&idd_serve_stats_record, text, &got, &err), IDD_OK);
	assert_memory_equal(&got, &st, sizeof st);
	/* extra keys and another order are fine */
	const char *other = "{\"later\":7,\"cache_evicted\":1,\"cache_write_errors\":2,"
	                    "\"exports_complete\":3,\"read_errors\":4,\"cache_damaged\":5,"
	                    "\"blocks_filled\":6,\"requests\":7,\"bytes_from_peers\":8,"
	                    "\"bytes_fetched\":9,\"bytes_from_cache\":10,\"bytes_zero\":11,"
	                    "\"bytes_read\":12,\"reads\":13}";
	assert_int_equal(idd_record_parse(&idd_serve_stats_record, other, &got, &err), IDD_OK);
	assert_int_equal(got.reads, 13);
	assert_int_equal(got.cache_evicted, 1);
}

static void test_parse_refuses(void **state)
{
	(void)state;
	idd_serve_stats got;
	idd_error err = {{0}, 0};
	const char *missing = "{\"reads\":1,\"bytes_read\":2}";
	assert_int_equal(idd_record_parse(&idd_serve_stats_record, missing, &got, &err),
	                 IDD_ECORRUPT);
	assert_int_equal(err.code, IDD_ECORRUPT);
	assert_string_equal(err.msg, "no counter 'bytes_zero'");
	const char *bad = "{\"reads\":-1}";
	assert_int_equal(idd_record_parse(&idd_serve_stats_record, bad, &got, &err), IDD_ECORRUPT);
	assert_string_equal(err.msg, "counter 'reads' is not a number");
	const char *huge = "{\"reads\":99999999999999999999999}";
	assert_int_equal(idd_record_parse(&idd_serve_stats_record, huge, &got, &err), IDD_ECORRUPT);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_serve_stats_json),
		cmocka_unit_test(test_cut_like_snprintf),
		cmocka_unit_test(test_parse_round_trip),
		cmocka_unit_test(test_parse_refuses),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
