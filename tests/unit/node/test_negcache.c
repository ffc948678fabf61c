/* test_negcache.c - failed blocks barred with a doubling backoff, forgotten
 * on success, each digest on its own. */
#include "testutil.h"
#include "node/negcache.h"

#include <string.h>

#define S ((int64_t)1000000000)

static idd_digest dg(unsigned char v)
{
	idd_digest d;
	memset(d.b, v, sizeof d.b);
	return d;
}

/* distinct digests for v = 0..65535 */
static idd_digest nth(unsigned v)
{
	idd_digest d = dg((unsigned char)v);
	d.b[0] = (unsigned char)(v * 37);
	d.b[31] = (unsigned char)(v >> 8);
	return d;
}

static void test_backoff_doubles_to_the_ceiling(void **state)
{
	(void)state;
	idd_negcache nc;
	idd_error err;
	assert_int_equal(idd_negcache_init(&nc, 1 * S, 8 * S, &err), IDD_OK);
	idd_digest a = dg(1);
	int64_t t = 100 * S;
	assert_false(idd_negcache_barred(&nc, &a, t, NULL));
	int64_t want[] = {1, 2, 4, 8, 8, 8};
	for (size_t i = 0; i < IDD_ARRAY_LEN(want); i++) {
		assert_int_equal(idd_negcache_fail(&nc, &a, IDD_ECORRUPT, t, &err), IDD_OK);
		idd_negcache_info info;
		assert_true(idd_negcache_barred(&nc, &a, t, &info));
		assert_int_equal(info.fails, i + 1);
		assert_int_equal(info.code, IDD_ECORRUPT);
		assert_int_equal(info.wait_ns, want[i] * S);
		assert_true(idd_negcache_barred(&nc, &a, t + want[i] * S - 1, NULL));
		assert_false(idd_negcache_barred(&nc, &a, t + want[i] * S, NULL));
		t += want[i] * S; /* the next attempt, when allowed, fails again */
	}
	idd_negcache_free(&nc);
}

static void test_success_forgets_one_digest(void **state)
{
	(void)state;
	idd_negcache nc;
	idd_error err;
	assert_int_equal(idd_negcache_init(&nc, 1 * S, 60 * S, &err), IDD_OK);
	/* enough digests to grow the table several times */
	for (unsigned v = 1; v < 600; v++) {
		idd_digest d = nth(v);
		assert_int_equal(idd_negcache_fail(&nc, &d, IDD_ENET, 0, &err), IDD_OK);
	}
	idd_digest a = nth(7), b = nth(300);
	assert_true(idd_negcache_barred(&nc, &a, 0, NULL));
	idd_negcache_clear(&nc, &a);
	assert_false(idd_negcache_barred(&nc, &a, 0, NULL));
	assert_true(idd_negcache_barred(&nc, &b, 0, NULL));
	/* after a success the backoff starts from the first step again */
	assert_int_equal(idd_negcache_fail(&nc, &a, IDD_ENET, 0, &err), IDD_OK);
	idd_negcache_info info;
	assert_true(idd_negcache_barred(&nc, &a, 0, &info));
	assert_int_equal(info.fails, 1);
	assert_int_equal(info.wait_ns, 1 * S);
	/* clearing what was never barred is harmless */
	idd_digest z = nth(1000);
	idd_negcache_clear(&nc, &z);
	assert_false(idd_negcache_barred(&nc, &z, 0, NULL));
	idd_negcache_free(&nc);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_backoff_doubles_to_the_ceiling),
	    cmocka_unit_test(test_success_forgets_one_digest),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
