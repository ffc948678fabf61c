/* test_readahead.c - readahead by evidence: random reads get none, a
 * sequential stream gets a window that doubles up to the maximum, reads of
 * a stream arriving out of order stay in it, several streams at once, and
 * a read at the start of the image starts with a window. */
#include "testutil.h"
#include "node/readahead.h"

#define K 1024u

static void test_random_gets_none(void **state)
{
	(void)state;
	idd_readahead ra;
	idd_readahead_init(&ra, 64 * K, 4096 * K);
	uint64_t offs[] = {9000 * K, 300 * K, 77000 * K, 5000 * K, 123456 * K};
	for (size_t i = 0; i < sizeof offs / sizeof *offs; i++)
		assert_int_equal(idd_readahead_window(&ra, offs[i], 4 * K, true), 0);
	idd_readahead_destroy(&ra);
}

static void test_stream_grows_to_max(void **state)
{
	(void)state;
	idd_readahead ra;
	idd_readahead_init(&ra, 64 * K, 1024 * K);
	uint64_t off = 50000 * K;
	assert_int_equal(idd_readahead_window(&ra, off, 16 * K, true), 0); /* one read: no evidence */
	off += 16 * K;
	assert_int_equal(idd_readahead_window(&ra, off, 16 * K, true), 64 * K); /* 2 x 16K < min */
	uint64_t want[] = {128 * K, 256 * K, 512 * K, 1024 * K, 1024 * K};
	for (size_t i = 0; i < 5; i++) {
		off += 16 * K;
		assert_int_equal(idd_readahead_window(&ra, off, 16 * K, true), want[i]);
	}
	/* a read skipping past the window read ahead starts afresh */
	assert_int_equal(idd_readahead_window(&ra, off + 8192 * K, 16 * K, true), 0);
	idd_readahead_destroy(&ra);
}

static void test_start_of_image_and_order(void **state)
{
	(void)state;
	idd_readahead ra;
	idd_readahead_init(&ra, 64 * K, 4096 * K);
	assert_int_equal(idd_readahead_window(&ra, 0, 512 * K, true), 1024 * K);
	/* reads in flight together: the later one first, then the earlier */
	assert_int_equal(idd_readahead_window(&ra, 1024 * K, 512 * K, true), 2048 * K);
	assert_int_equal(idd_readahead_window(&ra, 512 * K, 512 * K, true), 4096 * K);
	idd_readahead_destroy(&ra);
}

static void test_streams_side_by_side(void **state)
{
	(void)state;
	idd_readahead ra;
	idd_readahead_init(&ra, 64 * K, 4096 * K);
	uint64_t a = 10000 * K, b = 900000 * K;
	assert_int_equal(idd_readahead_window(&ra, a, 64 * K, true), 0);
	assert_int_equal(idd_readahead_window(&ra, b, 64 * K, true), 0);
	for (int i = 1; i <= 3; i++) {
		assert_int_equal(idd_readahead_window(&ra, a + (uint64_t)i * 64 * K, 64 * K, true),
		                 (128 * K) << (i - 1));
		assert_int_equal(idd_readahead_window(&ra, b + (uint64_t)i * 64 * K, 64 * K, true),
		                 (128 * K) << (i - 1));
	}
	/* max 0: never */
	idd_readahead_destroy(&ra);
	idd_readahead_init(&ra, 64 * K, 0);
	assert_int_equal(idd_readahead_window(&ra, 0, 64 * K, true), 0);
	assert_int_equal(idd_readahead_window(&ra, 64 * K, 64 * K, true), 0);
	idd_readahead_destroy(&ra);
}

/* Reads the node could answer: a sequential stream looks ahead by the
 * minimum only and its window does not grow until it misses. */
static void test_hits_look_ahead_a_little(void **state)
{
	(void)state;
	idd_readahead ra;
	idd_readahead_init(&ra, 64 * K, 4096 * K);
	uint64_t off = 7000 * K;
	assert_int_equal(idd_readahead_window(&ra, off, 32 * K, false), 0);
	for (int i = 1; i <= 4; i++)
		assert_int_equal(idd_readahead_window(&ra, off + (uint64_t)i * 32 * K, 32 * K, false), 64 * K);
	/* the first miss: the first window (twice the read, at least min) */
	assert_int_equal(idd_readahead_window(&ra, off + 5 * 32 * K, 32 * K, true), 64 * K);
	assert_int_equal(idd_readahead_window(&ra, off + 6 * 32 * K, 32 * K, true), 128 * K);
	/* hits again: the window is kept, the look ahead is short */
	assert_int_equal(idd_readahead_window(&ra, off + 7 * 32 * K, 32 * K, false), 64 * K);
	assert_int_equal(idd_readahead_window(&ra, off + 8 * 32 * K, 32 * K, true), 256 * K);
	/* random hits: nothing */
	assert_int_equal(idd_readahead_window(&ra, 900000 * K, 4 * K, false), 0);
	idd_readahead_destroy(&ra);
}

int main(void)
{
	const struct CMUnitTest tests[] = {cmocka_unit_test(test_random_gets_none),
	                                   cmocka_unit_test(test_stream_grows_to_max),
	                                   cmocka_unit_test(test_start_of_image_and_order),
	                                   cmocka_unit_test(test_streams_side_by_side),
	                                   cmocka_unit_test(test_hits_look_ahead_a_little)};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
