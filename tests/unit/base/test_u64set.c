/* test_u64set.c - the set of block numbers: membership, growth, duplicates. */
#include "testutil.h"
#include "base/u64set.h"

static void test_add_has_grow(void **state)
{
	(void)state;
	idd_u64set s = {0};
	bool added;
	assert_false(idd_u64set_has(&s, 5));
	for (uint64_t x = 0; x < 100000; x += 3) {
		assert_int_equal(idd_u64set_add(&s, x, &added), IDD_OK);
		assert_true(added);
	}
	assert_int_equal(idd_u64set_add(&s, 3, &added), IDD_OK);
	assert_false(added);
	assert_int_equal(s.count, 33334);
	for (uint64_t x = 0; x < 100000; x++)
		assert_int_equal(idd_u64set_has(&s, x), x % 3 == 0);
	assert_int_equal(idd_u64set_add(&s, (uint64_t)1 << 40, &added), IDD_OK);
	assert_true(idd_u64set_has(&s, (uint64_t)1 << 40));
	idd_u64set_free(&s);
	assert_false(idd_u64set_has(&s, 3));
}

int main(void)
{
	const struct CMUnitTest tests[] = {cmocka_unit_test(test_add_has_grow)};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
